"""Two-factor login in the portal: enrolment with a QR code verified by a first code, the
code asked after the password, codes good once, recovery codes, throttling of wrong codes,
disabling with password and code, and an administrator's reset for a lost phone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from mailer.accounts import totp
from mailer.accounts.models import AuditEntry, User
from mailer.accounts.service import create_user
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.helpers import World, build_world

PASSWORD = "una clave larga 123"
EMAIL = "gestor@example.pe"


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    world = build_world(sqlite_settings, tmp_path, 1)
    with session_scope() as session:
        create_user(session, world.account_id, EMAIL, PASSWORD, "manager")
    return world


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def csrf(client: TestClient, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def password_step(client: TestClient, email: str = EMAIL, password: str = PASSWORD) -> str:
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response.headers["location"]


def code_step(client: TestClient, code: str) -> object:
    return client.post(
        "/login/totp",
        data={"code": code, "csrf_token": csrf(client, "/login/totp")},
        follow_redirects=False,
    )


def enrol(client: TestClient) -> tuple[pyotp.TOTP, list[str]]:
    assert password_step(client) == "/"
    page = client.post("/security/totp/start", data={"csrf_token": csrf(client, "/security")})
    assert page.status_code == 200 and "<svg" in page.text
    assert page.headers["cache-control"] == "no-store"
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    uri = re.search(r'id="totp-uri">([^<]+)<', page.text)
    assert secret and uri
    assert uri.group(1).startswith("otpauth://totp/mailer:gestor%40example.pe?secret=")
    assert "issuer=mailer" in uri.group(1)
    generator = pyotp.TOTP(secret.group(1))
    token = csrf(client, "/security")
    wrong = client.post("/security/totp/confirm", data={"code": "000000", "csrf_token": token})
    assert wrong.status_code == 422 and "el código no coincide" in wrong.text
    confirmed = client.post(
        "/security/totp/confirm", data={"code": generator.now(), "csrf_token": token}
    )
    assert confirmed.status_code == 200 and "quedó activada" in confirmed.text
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", confirmed.text)
    assert len(codes) == totp.RECOVERY_CODES
    with session_scope() as session:
        user = session.exec(select(User).where(User.email == EMAIL)).one()
        # Neither the secret nor a recovery code is stored as given.
        assert user.totp_enabled_at is not None
        assert secret.group(1) not in user.totp_secret
        assert all(code not in user.totp_recovery for code in codes)
    client.post("/logout", data={"csrf_token": csrf(client, "/security")})
    return generator, codes


def audit_actions() -> list[str]:
    with session_scope() as session:
        return list(session.exec(select(AuditEntry.action).order_by(AuditEntry.id)))


def test_enrol_then_login_asks_for_a_code_good_once(client: TestClient) -> None:
    generator, _codes = enrol(client)
    assert password_step(client) == "/login/totp"
    # The password alone opens nothing (and leaving the code page starts over).
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert code_step(client, generator.now()).headers["location"] == "/login"  # type: ignore[attr-defined]
    assert password_step(client) == "/login/totp"
    wrong = code_step(client, "123456")
    assert wrong.status_code == 401 and "código incorrecto" in wrong.text  # type: ignore[attr-defined]
    code = generator.at(time.time() + 30)  # the next step: the enrolment used this one
    right = code_step(client, code)
    assert right.status_code == 303 and right.headers["location"] == "/"  # type: ignore[attr-defined]
    assert client.get("/").status_code == 200

    replay = TestClient(client.app)
    assert password_step(replay) == "/login/totp"
    assert code_step(replay, code).status_code == 401  # type: ignore[attr-defined]
    actions = audit_actions()
    assert "totp.enable" in actions and actions.count("login.totp_failed") == 2
    with session_scope() as session:
        login = session.exec(
            select(AuditEntry).where(AuditEntry.action == "login").order_by(AuditEntry.id.desc())  # type: ignore[union-attr]
        ).first()
        assert login is not None and login.details == {"second_factor": "totp"}


def test_recovery_codes_work_once(client: TestClient) -> None:
    _generator, codes = enrol(client)
    assert password_step(client) == "/login/totp"
    used = code_step(client, codes[0].upper().replace("-", " "))  # typed loosely
    assert used.status_code == 303  # type: ignore[attr-defined]
    assert "le quedan 7" in client.get("/").text
    again = TestClient(client.app)
    password_step(again)
    assert code_step(again, codes[0]).status_code == 401  # type: ignore[attr-defined]


def test_wrong_codes_are_throttled(client: TestClient) -> None:
    generator, _codes = enrol(client)
    assert password_step(client) == "/login/totp"
    for _ in range(totp.MAX_FAILURES):
        assert code_step(client, "999999").status_code == 401  # type: ignore[attr-defined]
    locked = code_step(client, generator.at(time.time() + 30))
    assert locked.status_code == 401 and "demasiados códigos incorrectos" in locked.text  # type: ignore[attr-defined]


def test_the_code_must_follow_the_password_in_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator, _codes = enrol(client)
    assert password_step(client) == "/login/totp"
    monkeypatch.setattr("mailer.web.auth.SECOND_FACTOR_SECONDS", -1)
    late = code_step(client, generator.at(time.time() + 30))
    assert late.status_code == 303 and late.headers["location"] == "/login"  # type: ignore[attr-defined]
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_disable_needs_password_and_code(client: TestClient) -> None:
    generator, codes = enrol(client)
    password_step(client)
    assert code_step(client, codes[1]).status_code == 303  # type: ignore[attr-defined]
    token = csrf(client, "/security")
    regenerated = client.post(
        "/security/recovery-codes", data={"code": codes[2], "csrf_token": token}
    )
    fresh = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", regenerated.text)
    assert len(fresh) == totp.RECOVERY_CODES and not set(fresh) & set(codes)
    refused = client.post(
        "/security/totp/disable",
        data={"password": "no es la clave", "code": generator.now(), "csrf_token": token},
    )
    assert refused.status_code == 422 and "contraseña incorrecta" in refused.text
    disabled = client.post(
        "/security/totp/disable",
        data={"password": PASSWORD, "code": fresh[0], "csrf_token": token},
    )
    assert disabled.status_code == 200 and "desactivada" in disabled.text
    client.post("/logout", data={"csrf_token": csrf(client, "/security")})
    assert password_step(client) == "/"
    assert {"totp.recovery_codes", "totp.disable"} <= set(audit_actions())


def test_an_administrator_resets_a_lost_phone(client: TestClient, world: World) -> None:
    enrol(client)
    admin = TestClient(client.app)
    assert password_step(admin, world.admin_email, world.admin_password) == "/"
    users = admin.get("/users")
    assert "2FA" in users.text
    with session_scope() as session:
        user = session.exec(select(User).where(User.email == EMAIL)).one()
    reset = admin.post(f"/users/{user.id}/totp-reset", data={"csrf_token": csrf(admin, "/users")})
    assert "Se quitó la verificación en dos pasos" in reset.text
    assert password_step(client) == "/"
    assert "user.totp_reset" in audit_actions()
