"""Tenancy administration in the portal: sub-accounts with a share of the allowance, their
first administrator welcomed by e-mail (through the real delivery path) with a one-time
link to choose a password, transfers both ways, acting in a sub-account, users and roles,
the account's movements, and the audit log with its filters and CSV export."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from mailer.accounts import credits
from mailer.accounts.models import Account, AuditEntry, User
from mailer.accounts.service import audit, create_user
from mailer.asgi import create_app
from mailer.campaigns import transactional
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, World, build_world, start_recording_relay

PASSWORD = "una clave larga 123"


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    world = build_world(sqlite_settings, tmp_path, 2)
    with session_scope() as session:
        for role in ("viewer", "manager"):
            create_user(session, world.account_id, f"{role}@example.pe", PASSWORD, role)
        credits.grant(session, world.account_id, "email", 1_000, actor="operator")
        credits.grant(session, world.account_id, "sms", 100, actor="operator")
    return world


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def csrf(client: TestClient, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: TestClient, email_address: str, password: str = PASSWORD) -> None:
    response = client.post(
        "/login",
        data={"email": email_address, "password": password, "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/", response.text


def balance(account_id: int, channel: str) -> int:
    with session_scope() as session:
        current = credits.balance(session, account_id, channel)
        return current.available if current else -1


def actions(account_id: int) -> list[str]:
    with session_scope() as session:
        return list(
            session.exec(
                select(AuditEntry.action)
                .where(AuditEntry.account_id == account_id)
                .order_by(col(AuditEntry.id))
            )
        )


def test_sub_account_with_allowance_welcome_and_password_link(
    client: TestClient, world: World, sqlite_settings: Settings
) -> None:
    login(client, world.admin_email, world.admin_password)
    assert client.get("/subaccounts").status_code == 200
    created = client.post(
        "/subaccounts",
        data={
            "name": "Oficina de Logística",
            "admin_email": "logistica@example.pe",
            "admin_name": "Luis Rojas",
            "email_allowance": "300",
            "sms_allowance": "20",
            "send_welcome": "true",
            "csrf_token": csrf(client, "/subaccounts"),
        },
    )
    assert created.status_code == 200, created.text
    assert "Se envió el correo de bienvenida a logistica@example.pe" in created.text
    assert created.headers["cache-control"] == "no-store"
    with session_scope() as session:
        sub = session.exec(select(Account).where(Account.parent_id == world.account_id)).one()
        sub_admin = session.exec(select(User).where(User.email == "logistica@example.pe")).one()
        assert sub.id and sub_admin.role == "admin" and sub_admin.account_id == sub.id
        welcome = session.exec(
            select(Message).where(Message.origin == f"welcome:user:{sub_admin.id}")
        ).one()
        assert welcome.account_id == world.account_id  # the inviting account sends it
        link = str((welcome.payload or {})["variables"]["set_password_url"])
        welcome_id = welcome.id
    sub_id = sub.id
    assert (balance(world.account_id, "email"), balance(sub_id, "email")) == (700 - 1, 300)
    assert (balance(world.account_id, "sms"), balance(sub_id, "sms")) == (80, 20)
    for account_id in (world.account_id, sub_id):
        assert {"subaccount.create", "user.create", "credits.transfer"} <= set(actions(account_id))

    # The welcome goes out through the normal delivery path, signed, with the guide.
    relay, recorder = start_recording_relay()
    try:
        settings = sqlite_settings.model_copy(
            update={"relay": sqlite_settings.relay.model_copy(update={"port": relay.port})}
        )
        assert welcome_id is not None
        transactional.send_messages([welcome_id], settings=settings)
    finally:
        relay.stop()
    [(_sender, recipients, data)] = recorder.messages
    assert recipients == ["logistica@example.pe"]
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["From"].addresses[0].addr_spec == f"no-responder@{DOMAIN}"
    assert "Bienvenido(a) a mailer" in str(message["Subject"])
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    body = text.get_content()  # type: ignore[attr-defined]
    assert "Guía breve".upper() in body and "Oficina de Logística" in body
    assert "Luis Rojas" in body and "Administrador" in body

    # The link lets the new administrator choose a password, once.
    path = link.removeprefix(sqlite_settings.base_url.rstrip("/"))
    assert path.startswith("/set-password/")
    client.post("/logout", data={"csrf_token": csrf(client, "/account")})
    page = client.get(path)
    assert page.status_code == 200 and "logistica@example.pe" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    token = csrf(client, path)
    mismatch = client.post(
        path, data={"password": "otra clave 12345", "confirm": "distinta", "csrf_token": token}
    )
    assert mismatch.status_code == 422 and "no coinciden" in mismatch.text
    chosen = client.post(
        path,
        data={
            "password": "clave de luis 2026",
            "confirm": "clave de luis 2026",
            "csrf_token": token,
        },
        follow_redirects=False,
    )
    assert chosen.status_code == 303 and chosen.headers["location"] == "/login"
    assert client.get(path).status_code == 400  # spent

    # The sub-account's administrator sees its own balance, not the parent's pages.
    login(client, "logistica@example.pe", "clave de luis 2026")
    account = client.get("/account")
    assert account.status_code == 200 and "Entidad de prueba" in account.text
    assert "Transferencia recibida" in account.text and "300" in account.text
    assert client.get(f"/subaccounts/{world.account_id}").status_code == 404
    assert "Aún no hay subcuentas" in client.get("/subaccounts").text
    assert "user.password_set" in actions(sub_id)


def test_transfers_both_ways_and_refusals(client: TestClient, world: World) -> None:
    with session_scope() as session:
        other = Account(name="Otra entidad")
        session.add(other)
        session.flush()
        sub = Account(name="Área usuaria", parent_id=world.account_id)
        session.add(sub)
        session.flush()
        other_id, sub_id = other.id, sub.id
    login(client, world.admin_email, world.admin_password)
    token = csrf(client, f"/subaccounts/{sub_id}")

    def transfer(direction: str, quantity: int, target: int | None = sub_id) -> str:
        response = client.post(
            f"/subaccounts/{target}/transfer",
            data={
                "channel": "email",
                "quantity": str(quantity),
                "direction": direction,
                "note": "campaña de diciembre",
                "csrf_token": token,
            },
        )
        assert response.status_code in (200, 404), response.text
        return response.text

    assert "Se transfirieron 250 de Correo" in transfer("give", 250)
    assert "Se retiraron 100 de Correo" in transfer("take", 100)
    assert "no alcanza para transferir 1000" in transfer("take", 1_000)
    assert (balance(world.account_id, "email"), balance(sub_id, "email")) == (850, 150)
    assert "no existe" in transfer("give", 1, other_id)  # not a sub-account: 404
    page = client.get(f"/subaccounts/{sub_id}?kind=transfer_in")
    assert "campaña de diciembre" in page.text and "Transferencia recibida" in page.text
    assert "Transferencia enviada" not in page.text.split('id="movements"')[1]
    assert actions(sub_id).count("credits.transfer") == 1
    assert actions(sub_id).count("credits.take_back") == 1
    # Both sides are in the ledger and it adds up.
    with session_scope() as session:
        for account_id in (world.account_id, sub_id):
            current = credits.balance(session, account_id, "email")
            assert current is not None
            assert credits.verify(session, account_id, "email") == (current.available, 0)


def test_act_in_a_sub_account_and_come_back(client: TestClient, world: World) -> None:
    with session_scope() as session:
        sub = Account(name="Área usuaria", parent_id=world.account_id)
        session.add(sub)
        session.flush()
        sub_id = sub.id
        assert sub_id
        create_user(session, sub_id, "area@example.pe", PASSWORD, "editor")
    login(client, world.admin_email, world.admin_password)
    switched = client.post(
        f"/subaccounts/{sub_id}/switch",
        data={"csrf_token": csrf(client, f"/subaccounts/{sub_id}")},
    )
    assert "Está administrando la subcuenta" in switched.text
    users = client.get("/users")
    assert "area@example.pe" in users.text and "viewer@example.pe" not in users.text
    # No switching from a sub-account into another account.
    assert client.get(f"/subaccounts/{world.account_id}").status_code == 404
    left = client.post("/subaccounts/leave", data={"csrf_token": csrf(client, "/users")})
    assert left.status_code == 200 and "Volvió a su cuenta" in left.text
    assert "viewer@example.pe" in client.get("/users").text
    assert "subaccount.switch" in actions(sub_id)


def test_users_roles_and_deactivation(client: TestClient, world: World) -> None:
    login(client, world.admin_email, world.admin_password)
    token = csrf(client, "/users")
    created = client.post(
        "/users",
        data={
            "email": "Nueva@Example.pe",
            "name": "Nora",
            "role": "editor",
            "password": "clave de nora 123",
            "csrf_token": token,
        },
    )
    assert created.status_code == 200 and "No se envió correo de bienvenida" in created.text
    assert 'id="set-password-link"' not in created.text  # she has a password
    with session_scope() as session:
        nora = session.exec(select(User).where(User.email == "nueva@example.pe")).one()
        admin_user = session.exec(select(User).where(User.email == world.admin_email)).one()
    duplicate = client.post(
        "/users",
        data={"email": "nueva@example.pe", "role": "viewer", "csrf_token": token},
    )
    assert duplicate.status_code == 422 and "ya existe" in duplicate.text

    changed = client.post(f"/users/{nora.id}/role", data={"role": "manager", "csrf_token": token})
    assert "ahora es Gestor" in changed.text
    own = client.post(f"/users/{admin_user.id}/role", data={"role": "viewer", "csrf_token": token})
    assert "su propio rol" in own.text
    with session_scope() as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "user.role")).one()
        assert entry.details == {
            "email": "nueva@example.pe",
            "before": "editor",
            "after": "manager",
        }

    other = TestClient(client.app)
    login(other, "nueva@example.pe", "clave de nora 123")
    assert other.get("/campaigns/new").status_code == 200
    off = client.post(f"/users/{nora.id}/deactivate", data={"csrf_token": token})
    assert "fue desactivado" in off.text
    assert other.get("/", follow_redirects=False).headers["location"] == "/login"
    refused = other.post(
        "/login",
        data={
            "email": "nueva@example.pe",
            "password": "clave de nora 123",
            "csrf_token": csrf(other),
        },
    )
    assert refused.status_code == 401
    self_off = client.post(f"/users/{admin_user.id}/deactivate", data={"csrf_token": token})
    assert "desactivarse a sí mismo" in self_off.text
    assert {"user.create", "user.role", "user.deactivate", "login.failed"} <= set(
        actions(world.account_id)
    )


def test_welcome_is_skipped_with_a_notice_without_a_sending_domain(
    sqlite_settings: Settings, world: World, tmp_path: Path
) -> None:
    settings = sqlite_settings.model_copy(update={"sending_domains_dir": tmp_path / "none"})
    with TestClient(create_app(settings)) as client:
        login(client, world.admin_email, world.admin_password)
        created = client.post(
            "/users",
            data={
                "email": "sin.dominio@example.pe",
                "role": "viewer",
                "send_welcome": "true",
                "csrf_token": csrf(client, "/users"),
            },
        )
    assert created.status_code == 200
    assert "no tiene un dominio de envío configurado" in created.text
    assert 'id="set-password-link"' in created.text and "/set-password/" in created.text
    with session_scope() as session:
        assert (
            session.exec(select(Message).where(col(Message.origin).startswith("welcome:"))).all()
            == []
        )


def test_account_page_for_every_role_with_filters(client: TestClient, world: World) -> None:
    login(client, "viewer@example.pe")
    page = client.get("/account")
    assert page.status_code == 200
    assert "1,000" in page.text and "100" in page.text and "válido hasta el" in page.text
    grants = client.get("/account?kind=grant&channel=sms")
    rows = grants.text.split('id="movements"')[1]
    assert "Asignación" in rows and rows.count("<tr>") == 2  # header and the SMS grant
    assert client.get("/subaccounts").status_code == 403
    assert client.get("/users").status_code == 403
    assert client.get("/audit").status_code == 403


def test_audit_log_filters_pages_and_exports(client: TestClient, world: World) -> None:
    bad = TestClient(client.app)
    bad.post(
        "/login",
        data={"email": "viewer@example.pe", "password": "no es la clave", "csrf_token": csrf(bad)},
    )
    with session_scope() as session:
        for n in range(60):
            audit(session, None, "list.create", f"list:{n}", account_id=world.account_id)
        old = AuditEntry(
            account_id=world.account_id,
            actor="system",
            action="campaign.send",
            target="campaign:1",
            created_at=utcnow() - timedelta(days=40),
        )
        session.add(old)
        audit(session, None, "=cmd|' /C calc'!A0", "+x", account_id=world.account_id)
        audit(session, None, "foreign.action", "", account_id=None)
    login(client, world.admin_email, world.admin_password)
    page = client.get("/audit")
    assert page.status_code == 200 and "Siguiente" in page.text
    assert "foreign.action" not in page.text and "<code>list.create</code>" in page.text
    failed = client.get("/audit?action=login.failed")
    assert (
        "viewer@example.pe" in failed.text and failed.text.count("<code>login.failed</code>") == 1
    )
    by_prefix = client.get("/audit?action=login.")
    assert "<code>login</code>" in by_prefix.text and "login.failed" in by_prefix.text
    by_actor = client.get(f"/audit?actor={world.admin_email}")
    assert "<code>login</code>" in by_actor.text and "<code>list.create</code>" not in by_actor.text
    by_target = client.get("/audit?target=list:7")
    assert by_target.text.count("<code>list.create</code>") == 1
    since = (utcnow() - timedelta(days=45)).date().isoformat()
    until = (utcnow() - timedelta(days=35)).date().isoformat()
    ranged = client.get(f"/audit?since={since}&until={until}")
    assert (
        "<code>campaign.send</code>" in ranged.text
        and "<code>list.create</code>" not in ranged.text
    )

    export = client.get("/audit.csv?action=list.create")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert export.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert rows[0][:5] == ["fecha", "cuenta", "actor", "usuario", "acción"]
    assert len(rows) == 61 and {row[4] for row in rows[1:]} == {"list.create"}
    injected = list(csv.reader(io.StringIO(client.get("/audit.csv").content.decode("utf-8-sig"))))
    assert any(row[4].startswith("'=") and row[5] == "'+x" for row in injected)
    with session_scope() as session:
        exported = session.exec(select(AuditEntry).where(AuditEntry.action == "audit.export")).all()
        assert len(exported) == 2 and exported[0].details["rows"] == 60
