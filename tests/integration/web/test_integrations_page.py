"""The "Integraciones" page: an administrator creates an API key and an OAuth client in the
portal, sees each secret once, uses it against the real API, revokes it and sees it refused
at once; duplicate names and missing CSRF tokens are refused with a clear answer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from mailer.accounts.models import ApiKey, AuditEntry
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.helpers import World, build_world

PAGE = "/integrations"
ONCE = "Copie la clave ahora: no se mostrará otra vez"


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    return build_world(sqlite_settings, tmp_path, 1)


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def csrf(client: TestClient, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


@pytest.fixture
def admin(client: TestClient, world: World) -> TestClient:
    response = client.post(
        "/login",
        data={
            "email": world.admin_email,
            "password": world.admin_password,
            "csrf_token": csrf(client),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    return client


def actions(account_id: int) -> list[str]:
    with session_scope() as session:
        return list(
            session.exec(
                select(AuditEntry.action)
                .where(AuditEntry.account_id == account_id)
                .order_by(col(AuditEntry.id))
            )
        )


def shown_secret(html: str) -> str:
    match = re.search(r'<pre class="raw" id="secret">([^<]+)</pre>', html)
    assert match, "no secret on the page"
    return match.group(1).strip()


def test_the_page_lists_the_keys_and_is_linked(admin: TestClient) -> None:
    page = admin.get(PAGE)
    assert page.status_code == 200
    assert "Integraciones" in page.text
    assert "Pruebas" in page.text  # the key of the test world
    assert 'href="/api/docs"' in page.text
    assert f'href="{PAGE}"' in admin.get("/account").text


def test_an_api_key_is_created_shown_once_used_and_revoked(admin: TestClient, world: World) -> None:
    created = admin.post(
        f"{PAGE}/keys",
        data={
            "name": "ERP Compras",
            "role": "viewer",
            "scopes": ["read"],
            "csrf_token": csrf(admin, PAGE),
        },
    )
    assert created.status_code == 200, created.text
    assert ONCE in created.text
    assert created.headers["cache-control"] == "no-store"
    key = shown_secret(created.text)
    assert key.startswith("mk_")

    page = admin.get(PAGE)
    assert "ERP Compras" in page.text and key[:11] in page.text  # the prefix, not the secret
    assert key not in page.text and ONCE not in page.text

    me = admin.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200, me.text

    with session_scope() as session:
        key_id = session.exec(select(ApiKey.id).where(ApiKey.name == "ERP Compras")).one()
    revoked = admin.post(
        f"{PAGE}/keys/{key_id}/revoke",
        data={"csrf_token": csrf(admin, PAGE)},
        follow_redirects=False,
    )
    assert revoked.status_code == 303 and revoked.headers["location"] == PAGE
    assert admin.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert "Revocada" in admin.get(PAGE).text
    assert actions(world.account_id)[-2:] == ["apikey.create", "apikey.revoke"]


def test_an_oauth_client_gets_tokens_until_revoked(admin: TestClient, world: World) -> None:
    created = admin.post(
        f"{PAGE}/clients",
        data={"name": "Tablero", "role": "manager", "csrf_token": csrf(admin, PAGE)},
    )
    assert created.status_code == 200, created.text
    assert ONCE in created.text
    assert created.headers["cache-control"] == "no-store"
    secret = shown_secret(created.text)
    client_id = re.search(r'id="client-id">([^<]+)<', created.text)
    assert client_id
    client_id_value = client_id.group(1)
    assert secret not in admin.get(PAGE).text

    token = admin.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id_value, secret),
    )
    assert token.status_code == 200, token.text
    access = token.json()["access_token"]
    me = admin.get("/api/v1/me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 200, me.text

    revoked = admin.post(
        f"{PAGE}/clients/{client_id_value}/revoke",
        data={"csrf_token": csrf(admin, PAGE)},
        follow_redirects=False,
    )
    assert revoked.status_code == 303
    assert admin.get("/api/v1/me", headers={"Authorization": f"Bearer {access}"}).status_code == 401
    again = admin.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id_value, secret),
    )
    assert again.status_code == 401
    assert [a for a in actions(world.account_id) if a.startswith("oauth_client.")] == [
        "oauth_client.create",
        "oauth_client.revoke",
    ]


def test_errors_are_shown_on_the_page(admin: TestClient) -> None:
    token = csrf(admin, PAGE)
    duplicate = admin.post(f"{PAGE}/keys", data={"name": "Pruebas", "csrf_token": token})
    assert duplicate.status_code == 409
    assert "ya existe una clave de API llamada «Pruebas»" in duplicate.text
    empty = admin.post(f"{PAGE}/clients", data={"name": "  ", "csrf_token": token})
    assert empty.status_code == 422
    assert 'role="alert"' in empty.text
    admin.post(f"{PAGE}/clients", data={"name": "Uno", "csrf_token": token})
    twice = admin.post(f"{PAGE}/clients", data={"name": "Uno", "csrf_token": token})
    assert twice.status_code == 409 and "Uno" in twice.text
    beyond = admin.post(
        f"{PAGE}/keys",
        data={"name": "Lector", "role": "viewer", "scopes": ["send"], "csrf_token": token},
    )
    assert beyond.status_code == 422 and "no puede tener los alcances" in beyond.text
    missing = admin.post(f"{PAGE}/keys/999/revoke", data={"csrf_token": token})
    assert missing.status_code == 200 and "no existe" in missing.text


def test_the_forms_need_the_csrf_token(admin: TestClient, world: World) -> None:
    before = admin.get(PAGE).text.count('id="key-')
    for path in (f"{PAGE}/keys", f"{PAGE}/clients", f"{PAGE}/keys/1/revoke"):
        response = admin.post(path, data={"name": "Sin token"}, follow_redirects=False)
        assert response.status_code == 403, path
    page = admin.get(PAGE).text
    assert page.count('id="key-') == before and "Sin token" not in page
    assert (
        admin.get("/api/v1/me", headers={"Authorization": f"Bearer {world.api_key}"}).status_code
        == 200
    )
