"""The account-management routes (``mailer.api.account``) through the test client against
a migrated database: API keys (created within the creator's powers, revoked at once,
audited), allowance movements with their filters, sub-accounts and the allowance moved to
and from them (never more than the giving side holds, nothing moved on a refusal), the
audit log's filters, one XML round trip, and the Idempotency-Key where it is honoured."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import col, select

from mailer.accounts import credits
from mailer.accounts.models import (
    Account,
    ApiKey,
    AuditEntry,
    CreditEntry,
    IdempotencyKey,
    User,
)
from mailer.accounts.scopes import Scope
from mailer.accounts.service import (
    Principal,
    create_account,
    create_api_key,
    create_oauth_client,
)
from mailer.api.account import check_within_creator
from mailer.api.formats import XmlReader, parse_xml, render_xml
from mailer.asgi import create_app
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import PermissionDenied
from mailer.core.types import Role
from mailer.storage.db import session_scope
from tests.helpers import World, build_world

ROLES = ("viewer", "editor", "manager", "admin")
SUB = {
    "name": "Oficina Regional Cusco",
    "admin_email": "jefe.cusco@example.pe",
    "admin_name": "Rosa Huamán",
    "admin_password": "una clave larga y propia",
}


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    built = build_world(settings, tmp_path, 1)
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "sms", 1000, actor="operador")
        credits.grant(session, built.account_id, "email", 5000, actor="operador")
    return built


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def key_for(world: World, role: str, name: str | None = None) -> dict[str, str]:
    with session_scope() as session:
        _key, plaintext = create_api_key(session, world.account_id, name or f"app-{role}", role)
    return {"Authorization": f"Bearer {plaintext}", "Accept-Language": "en"}


def audited(action: str, target: str = "") -> list[AuditEntry]:
    with session_scope() as session:
        query = select(AuditEntry).where(AuditEntry.action == action)
        if target:
            query = query.where(AuditEntry.target == target)
        return list(session.exec(query.order_by(col(AuditEntry.id))))


def movements_count() -> int:
    with session_scope() as session:
        return int(session.exec(select(func.count()).select_from(CreditEntry)).one())


def balance(account_id: int, channel: str) -> int | None:
    with session_scope() as session:
        found = credits.balance(session, account_id, channel)
    return None if found is None else found.available


def error(response: Any, status: int, code: str, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body
    return str(body["message"])


# -- API keys --------------------------------------------------------------------------


def test_keys_are_created_listed_and_revoked_at_once(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    created = client.post(
        "/api/v1/keys",
        json={"name": "ERP Compras", "role": "manager", "scopes": ["read", "sms:send"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    secret = body["key"]
    assert secret.startswith(body["prefix"] + "_") and body["prefix"].startswith("mk_")
    assert (body["role"], body["scopes"], body["revoked_at"]) == (
        "manager",
        ["read", "sms:send"],
        None,
    )
    new = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=new).json()["role"] == "manager"

    listed = client.get("/api/v1/keys", headers=admin)
    assert listed.status_code == 200
    mine = next(k for k in listed.json() if k["id"] == body["id"])
    assert "key" not in mine and secret not in listed.text
    with session_scope() as session:
        hashes = [k.key_hash for k in session.exec(select(ApiKey))]
    assert not any(h in listed.text for h in hashes)
    assert mine["name"] == "ERP Compras" and mine["last_used_at"] is not None

    revoked = client.delete(f"/api/v1/keys/{body['id']}", headers=admin)
    assert revoked.status_code == 204
    error(client.get("/api/v1/me", headers=new), 401, "authentication_failed")
    again = client.get("/api/v1/keys", headers=admin).json()
    assert next(k for k in again if k["id"] == body["id"])["revoked_at"] is not None
    assert client.delete(f"/api/v1/keys/{body['id']}", headers=admin).status_code == 204

    [create] = audited("apikey.create", f"apikey:{body['id']}")
    assert create.actor == "apikey:2 (app-admin)" and create.account_id == world.account_id
    assert create.details == {"name": "ERP Compras", "role": "manager", "scopes": "read sms:send"}
    assert create.ip
    assert len(audited("apikey.revoke", f"apikey:{body['id']}")) == 2


def test_key_names_secrets_and_unknown_keys(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    first = client.post("/api/v1/keys", json={"name": "Tablero"}, headers=admin)
    assert first.status_code == 201 and first.json()["role"] == "manager"
    assert first.json()["scopes"] == []
    error(
        client.post("/api/v1/keys", json={"name": "Tablero"}, headers=admin),
        409,
        "conflict",
        "name",
    )
    error(client.post("/api/v1/keys", json={"name": "  "}, headers=admin), 422, "validation_failed")
    error(
        client.post("/api/v1/keys", json={"name": "X", "role": "root"}, headers=admin),
        422,
        "validation_failed",
        "role",
    )
    message = error(
        client.post(
            "/api/v1/keys", json={"name": "X", "role": "viewer", "scopes": ["send"]}, headers=admin
        ),
        422,
        "validation_failed",
        "scopes",
    )
    assert "viewer cannot have the scopes send" in message
    error(client.delete("/api/v1/keys/99999", headers=admin), 404, "not_found")
    with session_scope() as session:
        other = create_account(session, "Otra entidad")
        assert other.id
        foreign, _plaintext = create_api_key(session, other.id, "Ajena", "admin")
    error(client.delete(f"/api/v1/keys/{foreign.id}", headers=admin), 404, "not_found")
    assert not audited("apikey.revoke")


def test_a_key_does_not_revoke_itself(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    listed = client.get("/api/v1/keys", headers=admin).json()
    own = next(k for k in listed if k["name"] == "app-admin")
    error(
        client.delete(f"/api/v1/keys/{own['id']}", headers=admin),
        403,
        "permission_denied",
        "key_id",
    )
    assert client.get("/api/v1/me", headers=admin).status_code == 200


def oauth_headers(client: TestClient, world: World, role: str, scopes: str) -> dict[str, str]:
    with session_scope() as session:
        oauth_client, secret = create_oauth_client(
            session, world.account_id, f"oauth-{role}-{scopes}", role, scopes=scopes
        )
    token = client.post(
        "/api/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": oauth_client.client_id,
            "client_secret": secret,
        },
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}", "Accept-Language": "en"}


def test_a_key_never_gets_more_than_its_creator_holds(client: TestClient, world: World) -> None:
    """An administrator's token restricted to "admin read" creates read-only keys; a key
    with the whole role (no scopes) or another scope would exceed it."""
    token = oauth_headers(client, world, "admin", "admin read")
    for body, field in (
        ({"name": "Todo", "role": "admin"}, "scopes"),
        ({"name": "Envíos", "role": "manager", "scopes": ["read", "send"]}, "scopes"),
        ({"name": "SMS", "role": "manager", "scopes": ["sms:send"]}, "scopes"),
    ):
        message = error(
            client.post("/api/v1/keys", json=body, headers=token), 403, "permission_denied", field
        )
        assert "scopes its creator lacks" in message and "(yours: admin read)" in message
    created = client.post(
        "/api/v1/keys", json={"name": "Lector", "role": "viewer", "scopes": ["read"]}, headers=token
    )
    assert created.status_code == 201, created.text
    assert [e.target for e in audited("apikey.create")] == [f"apikey:{created.json()['id']}"]

    # "send" covers the narrower "sms:send"; a token without the admin scope manages no key.
    sender = oauth_headers(client, world, "admin", "admin send")
    narrow = client.post(
        "/api/v1/keys",
        json={"name": "SMS", "role": "manager", "scopes": ["sms:send"]},
        headers=sender,
    )
    assert narrow.status_code == 201, narrow.text
    # Only administrators reach the route; the role guard holds for any creator anyway.
    manager = Principal(account_id=world.account_id, role="manager", actor="apikey:1 (Pruebas)")
    with pytest.raises(PermissionDenied, match="role above its creator's"):
        check_within_creator(manager, Role.ADMIN, [Scope.READ])
    check_within_creator(manager, Role.EDITOR, None)

    reader = oauth_headers(client, world, "admin", "read")
    error(
        client.post("/api/v1/keys", json={"name": "Y"}, headers=reader), 403, "insufficient_scope"
    )
    error(client.get("/api/v1/keys", headers=reader), 403, "insufficient_scope")


@pytest.mark.parametrize("role", ["viewer", "editor", "manager"])
def test_account_administration_is_for_admins(client: TestClient, world: World, role: str) -> None:
    headers = key_for(world, role)
    for method, path, body in (
        ("get", "/api/v1/keys", None),
        ("post", "/api/v1/keys", {"name": "Intruso", "role": "viewer"}),
        ("delete", "/api/v1/keys/1", None),
        ("get", "/api/v1/subaccounts", None),
        ("post", "/api/v1/subaccounts", SUB),
        ("post", "/api/v1/subaccounts/1/allowance", {"channel": "sms", "quantity": 1}),
        ("get", "/api/v1/audit", None),
        ("get", f"/api/v1/credits/movements?account_id={world.account_id + 1}", None),
    ):
        response = client.request(method, path, json=body, headers=headers)
        error(response, 403, "permission_denied")
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {world.api_key}"}).is_success
    with session_scope() as session:
        assert session.exec(select(func.count()).select_from(Account)).one() == 1
    # Every role reads its own account's movements.
    own = client.get("/api/v1/credits/movements", headers=headers)
    assert own.status_code == 200 and own.json()["total"] == 2


# -- sub-accounts and allowances --------------------------------------------------------


def create_sub(client: TestClient, headers: dict[str, str], **allowances: int) -> dict[str, Any]:
    response = client.post(
        "/api/v1/subaccounts", json={**SUB, "allowances": allowances}, headers=headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_sub_accounts_are_created_with_allowances_and_listed(
    client: TestClient, world: World
) -> None:
    admin = key_for(world, "admin")
    assert client.get("/api/v1/subaccounts", headers=admin).json() == []
    sub = create_sub(client, admin, sms=300, email=0)
    assert sub["name"] == SUB["name"] and sub["users"] == sub["admins"] == 1
    assert sub["admin"]["email"] == SUB["admin_email"] and sub["admin"]["role"] == "admin"
    assert sub["admin"]["needs_password"] is False
    assert [(b["channel"], b["available"]) for b in sub["balances"]] == [("sms", 300)]
    assert balance(world.account_id, "sms") == 700
    listed = client.get("/api/v1/subaccounts", headers=admin).json()
    assert [(s["id"], s["users"], s["balances"]) for s in listed] == [
        (sub["id"], 1, sub["balances"])
    ]
    with session_scope() as session:
        user = session.exec(select(User).where(User.email == SUB["admin_email"])).one()
        assert user.account_id == sub["id"] and user.role == "admin"
    # One entry in each account's log, as the portal writes them.
    for action in ("subaccount.create", "user.create", "credits.transfer"):
        entries = audited(action)
        assert {e.account_id for e in entries} == {world.account_id, sub["id"]}, action
        assert {e.actor for e in entries} == {"apikey:2 (app-admin)"}

    nameless = client.post(
        "/api/v1/subaccounts",
        json={**SUB, "name": "Otra", "admin_email": "otra@example.pe", "admin_password": None},
        headers=admin,
    )
    assert nameless.status_code == 201 and nameless.json()["admin"]["needs_password"] is True
    error(
        client.post(
            "/api/v1/subaccounts",
            json={**SUB, "name": "Repetida"},
            headers=admin,
        ),
        409,
        "conflict",
        "email",
    )
    error(
        client.post(
            "/api/v1/subaccounts",
            json={**SUB, "admin_email": "x@example.pe", "allowances": {"sms": -1}},
            headers=admin,
        ),
        422,
        "validation_failed",
        "allowances.sms",
    )


def test_a_sub_account_beyond_the_parents_allowance_is_not_created(
    client: TestClient, world: World
) -> None:
    admin = key_for(world, "admin")
    before = movements_count()
    message = error(
        client.post(
            "/api/v1/subaccounts",
            json={**SUB, "allowances": {"email": 100, "sms": 1001}},
            headers=admin,
        ),
        409,
        "insufficient_credit",
        "quantity",
    )
    assert "1001" in message and "1000 available" in message
    assert client.get("/api/v1/subaccounts", headers=admin).json() == []
    assert movements_count() == before
    assert (balance(world.account_id, "sms"), balance(world.account_id, "email")) == (1000, 5000)
    with session_scope() as session:
        assert session.exec(select(User).where(User.email == SUB["admin_email"])).first() is None
    assert not audited("subaccount.create")


def test_allowance_moves_to_and_from_a_sub_account_within_what_each_holds(
    client: TestClient, world: World
) -> None:
    admin = key_for(world, "admin")
    sub_id = create_sub(client, admin, sms=100)["id"]
    url = f"/api/v1/subaccounts/{sub_id}/allowance"

    given = client.post(url, json={"channel": "sms", "quantity": 250, "note": "dic"}, headers=admin)
    assert given.status_code == 200, given.text
    assert given.json() == {
        "subaccount_id": sub_id,
        "channel": "sms",
        "quantity": 250,
        "direction": "give",
        "available": 650,
        "subaccount_available": 350,
    }
    taken = client.post(
        url, json={"channel": "sms", "quantity": 50, "direction": "take"}, headers=admin
    )
    assert taken.status_code == 200, taken.text
    assert (taken.json()["available"], taken.json()["subaccount_available"]) == (700, 300)

    before = movements_count()
    too_much = client.post(url, json={"channel": "sms", "quantity": 701}, headers=admin)
    assert "701" in error(too_much, 409, "insufficient_credit", "quantity")
    more_than_held = client.post(
        url, json={"channel": "sms", "quantity": 301, "direction": "take"}, headers=admin
    )
    assert "300 available" in error(more_than_held, 409, "insufficient_credit", "quantity")
    assert movements_count() == before
    assert (balance(world.account_id, "sms"), balance(sub_id, "sms")) == (700, 300)

    error(
        client.post(url, json={"channel": "sms", "quantity": 0}, headers=admin),
        422,
        "validation_failed",
        "quantity",
    )
    error(
        client.post(url, json={"channel": "fax", "quantity": 1}, headers=admin),
        422,
        "validation_failed",
        "channel",
    )
    with session_scope() as session:
        stranger = create_account(session, "Ajena")
        assert stranger.id
        credits.grant(session, stranger.id, "sms", 10)
    for other in (stranger.id, world.account_id, 99999):
        error(
            client.post(
                f"/api/v1/subaccounts/{other}/allowance",
                json={"channel": "sms", "quantity": 1, "direction": "take"},
                headers=admin,
            ),
            404,
            "not_found",
        )
    assert balance(stranger.id, "sms") == 10
    # The sub-account's administrator cannot pull from its parent.
    with session_scope() as session:
        _key, sub_key = create_api_key(session, sub_id, "Cusco", "admin")
    error(
        client.post(
            f"/api/v1/subaccounts/{world.account_id}/allowance",
            json={"channel": "sms", "quantity": 1},
            headers={"Authorization": f"Bearer {sub_key}"},
        ),
        404,
        "not_found",
    )
    entries = audited("credits.take_back")
    assert {e.account_id for e in entries} == {world.account_id, sub_id}
    assert entries[0].details == {"channel": "sms", "quantity": 50, "note": ""}


def test_a_retried_allowance_move_moves_once(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    sub_id = create_sub(client, admin)["id"]
    url = f"/api/v1/subaccounts/{sub_id}/allowance"
    headers = {**admin, "Idempotency-Key": "traslado-diciembre"}
    first = client.post(url, json={"channel": "email", "quantity": 1000}, headers=headers)
    retry = client.post(url, json={"channel": "email", "quantity": 1000}, headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
    assert (balance(world.account_id, "email"), balance(sub_id, "email")) == (4000, 1000)


def test_a_created_keys_secret_is_never_stored_for_a_replay(
    client: TestClient, world: World
) -> None:
    headers = {**key_for(world, "admin"), "Idempotency-Key": "clave-erp"}
    first = client.post("/api/v1/keys", json={"name": "ERP"}, headers=headers)
    assert first.status_code == 201
    retry = client.post("/api/v1/keys", json={"name": "ERP"}, headers=headers)
    error(retry, 409, "conflict", "name")
    assert first.json()["key"] not in retry.text
    with session_scope() as session:
        assert session.exec(select(IdempotencyKey)).all() == []


# -- movements and audit ---------------------------------------------------------------


def test_movements_are_filtered_and_paged(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    viewer = key_for(world, "viewer")
    sub_id = create_sub(client, admin, sms=100, email=40)["id"]
    url = "/api/v1/credits/movements"

    everything = client.get(url, headers=viewer).json()
    assert everything["account_id"] == world.account_id and everything["total"] == 4
    kinds = [(m["channel"], m["kind"], m["quantity"]) for m in everything["movements"]]
    assert sorted(kinds) == sorted(
        [
            ("sms", "grant", 1000),
            ("email", "grant", 5000),
            ("sms", "transfer_out", 100),
            ("email", "transfer_out", 40),
        ]
    )
    ids = [m["id"] for m in everything["movements"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    out = next(m for m in everything["movements"] if m == everything["movements"][0])
    assert out["counterpart_id"] == sub_id and out["ref"] == f"account:{sub_id}"

    sms = client.get(url, params={"channel": "sms"}, headers=viewer).json()
    assert sms["total"] == 2 and {m["channel"] for m in sms["movements"]} == {"sms"}
    grants = client.get(url, params={"kind": "grant", "channel": "email"}, headers=viewer).json()
    assert [(m["kind"], m["available_after"]) for m in grants["movements"]] == [("grant", 5000)]
    page = client.get(url, params={"limit": 1, "offset": 1}, headers=viewer).json()
    assert page["total"] == 4 and [m["id"] for m in page["movements"]] == ids[1:2]

    now = utcnow()
    future = client.get(
        url, params={"since": (now + timedelta(hours=1)).isoformat()}, headers=viewer
    )
    assert future.json()["total"] == 0 and future.json()["movements"] == []
    past = client.get(url, params={"until": (now - timedelta(hours=1)).isoformat()}, headers=viewer)
    assert past.json()["total"] == 0
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }
    assert client.get(url, params=window, headers=viewer).json()["total"] == 4
    error(
        client.get(url, params={"since": "2026-11-20T10:00:00"}, headers=viewer),
        422,
        "validation_failed",
        "query.since",
    )
    error(
        client.get(url, params={"kind": "gift"}, headers=viewer),
        422,
        "validation_failed",
        "query.kind",
    )
    error(
        client.get(url, params={"since": "0001-01-01T00:00:00+05:00"}, headers=viewer),
        422,
        "validation_failed",
        "since",
    )

    # The parent's administrator reads a sub-account's movements; nobody reads a stranger's.
    of_sub = client.get(url, params={"account_id": sub_id}, headers=admin).json()
    assert of_sub["account_id"] == sub_id
    assert sorted(m["kind"] for m in of_sub["movements"]) == ["transfer_in", "transfer_in"]
    error(client.get(url, params={"account_id": sub_id}, headers=viewer), 403, "permission_denied")
    with session_scope() as session:
        stranger = create_account(session, "Ajena")
    error(client.get(url, params={"account_id": stranger.id}, headers=admin), 404, "not_found")
    mine = client.get(url, params={"account_id": world.account_id}, headers=viewer)
    assert mine.json()["total"] == 4


def test_the_audit_log_is_filtered_and_paged(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    created = client.post("/api/v1/keys", json={"name": "ERP"}, headers=admin).json()
    client.delete(f"/api/v1/keys/{created['id']}", headers=admin)
    sub_id = create_sub(client, admin, sms=10)["id"]
    with session_scope() as session:
        user = session.exec(select(User).where(User.email == world.admin_email)).one()
        session.add(
            AuditEntry(
                account_id=world.account_id,
                actor=f"user:{user.id}",
                action="login.failed",
                target=f"user:{user.id}",
                created_at=utcnow() - timedelta(days=3),
            )
        )
    url = "/api/v1/audit"

    everything = client.get(url, headers=admin).json()
    actions = [e["action"] for e in everything["entries"]]
    assert everything["total"] == len(actions) == 9
    # Newest (by id) first: the back-dated entry was written last.
    assert actions[:3] == ["login.failed", "credits.transfer", "credits.transfer"]
    assert actions.count("subaccount.create") == 2

    keys = client.get(url, params={"action": "apikey."}, headers=admin).json()
    assert [e["action"] for e in keys["entries"]] == ["apikey.revoke", "apikey.create"]
    assert {e["target"] for e in keys["entries"]} == {f"apikey:{created['id']}"}
    assert keys["entries"][1]["details"]["name"] == "ERP"
    assert keys["entries"][1]["actor"] == "apikey:2 (app-admin)"
    exact = client.get(url, params={"action": "apikey"}, headers=admin).json()
    assert exact["total"] == 0

    by_email = client.get(url, params={"actor": world.admin_email}, headers=admin).json()
    assert [(e["action"], e["actor_email"]) for e in by_email["entries"]] == [
        ("login.failed", world.admin_email)
    ]
    by_actor_text = client.get(url, params={"actor": "app-admin"}, headers=admin).json()
    assert by_actor_text["total"] == 8
    by_target = client.get(url, params={"target": f"account:{sub_id}"}, headers=admin).json()
    assert by_target["total"] == 4
    of_sub = client.get(url, params={"account_id": sub_id}, headers=admin).json()
    assert of_sub["total"] == 3 and {e["account_id"] for e in of_sub["entries"]} == {sub_id}
    recent = client.get(
        url, params={"since": (utcnow() - timedelta(days=1)).isoformat()}, headers=admin
    ).json()
    assert recent["total"] == 8
    older = client.get(
        url, params={"until": (utcnow() - timedelta(days=1)).isoformat()}, headers=admin
    ).json()
    assert [e["action"] for e in older["entries"]] == ["login.failed"]
    page = client.get(url, params={"limit": 3, "offset": 3}, headers=admin).json()
    assert page["total"] == 9
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in everything["entries"][3:6]]

    with session_scope() as session:
        stranger = create_account(session, "Ajena")
    error(client.get(url, params={"account_id": stranger.id}, headers=admin), 404, "not_found")
    # The sub-account's administrator sees its own log only.
    with session_scope() as session:
        _key, sub_key = create_api_key(session, sub_id, "Cusco", "admin")
    sub_view = client.get(url, headers={"Authorization": f"Bearer {sub_key}"}).json()
    assert {e["account_id"] for e in sub_view["entries"]} == {sub_id}


# -- XML and the OpenAPI document ------------------------------------------------------


def test_an_allowance_move_in_xml(client: TestClient, world: World) -> None:
    admin = key_for(world, "admin")
    sub_id = create_sub(client, admin)["id"]
    path = "/api/v1/subaccounts/{subaccount_id}/allowance"
    openapi = client.app.openapi()  # type: ignore[attr-defined]
    components = openapi["components"]["schemas"]
    operation = openapi["paths"][path]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    body = render_xml(
        {"channel": "email", "quantity": 1200, "direction": "give", "note": "año 2027 & más"},
        "request",
        request_schema,
        components,
    )
    answer = client.post(
        path.format(subaccount_id=sub_id),
        content=body,
        headers={**admin, "Content-Type": "application/xml", "Accept": "application/xml"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/xml; charset=utf-8"
    assert b"<subaccount_available>1200</subaccount_available>" in answer.content
    response_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    read = XmlReader(components).read(parse_xml(answer.content), response_schema)
    assert read == {
        "subaccount_id": sub_id,
        "channel": "email",
        "quantity": 1200,
        "direction": "give",
        "available": 3800,
        "subaccount_available": 1200,
    }
    [entry] = [e for e in audited("credits.transfer") if e.account_id == world.account_id][-1:]
    assert entry.details["note"] == "año 2027 & más"

    listed = client.get("/api/v1/subaccounts", headers={**admin, "Accept": "application/xml"})
    schema = openapi["paths"]["/api/v1/subaccounts"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    as_json = client.get("/api/v1/subaccounts", headers=admin).json()
    assert XmlReader(components).read(parse_xml(listed.content), schema) == as_json


def test_the_document_declares_the_routes_and_idempotency_keys(client: TestClient) -> None:
    assert client.get("/api/docs").status_code == 200
    openapi = client.get("/api/openapi.json").json()
    paths = openapi["paths"]

    def header_names(path: str, method: str) -> set[str]:
        return {p["name"] for p in paths[path][method].get("parameters", []) if p["in"] == "header"}

    for path in ("/api/v1/subaccounts", "/api/v1/subaccounts/{subaccount_id}/allowance"):
        assert "Idempotency-Key" in header_names(path, "post"), path
        [declared] = [
            p for p in paths[path]["post"]["parameters"] if p["name"] == "Idempotency-Key"
        ]
        assert declared["required"] is False and declared["description"]
    for path in ("/api/v1/sms", "/api/v1/messages", "/api/v1/campaigns"):
        assert "Idempotency-Key" in header_names(path, "post"), path
    # Not honoured there: the token request (no application yet) and the new key's secret.
    assert "Idempotency-Key" not in header_names("/api/v1/keys", "post")
    assert "Idempotency-Key" not in header_names("/api/v1/oauth/token", "post")
    assert "Idempotency-Key" not in header_names("/api/v1/subaccounts", "get")
    assert "x-mailer-no-idempotency-key" not in str(openapi)
    for path in ("/api/v1/keys", "/api/v1/credits/movements", "/api/v1/audit"):
        assert paths[path]["get"]["tags"] == ["account"]
    assert "/api/v1/keys/{key_id}" in paths
