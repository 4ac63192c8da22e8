"""API authentication: API keys (shown once, hashed, scoped, revoked at once, last use
recorded cheaply) and OAuth 2.0 client credentials (RFC 6749 §4.4) end to end."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from mailer.accounts import service
from mailer.accounts.models import ApiKey, AuditEntry, OAuthClient
from mailer.accounts.service import (
    create_api_key,
    create_oauth_client,
    issue_access_token,
    revoke_api_key,
)
from mailer.asgi import create_app
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.tokens import hash_secret
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from tests.helpers import World, build_world


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return build_world(settings, tmp_path, 1)


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept-Language": "en"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def admin_key(world: World) -> str:
    with session_scope() as session:
        _key, plaintext = create_api_key(session, world.account_id, "Consola", "admin")
    return plaintext


# -- API keys --------------------------------------------------------------------------


def test_an_api_key_is_stored_hashed_and_revoked_at_once(client: TestClient, world: World) -> None:
    with session_scope() as session:
        key, plaintext = create_api_key(session, world.account_id, "ERP Compras", "viewer")
        key_id = key.id
    with session_scope() as session:
        stored = session.get(ApiKey, key_id)
        assert stored is not None
        assert stored.key_hash == hash_secret(plaintext) and plaintext not in str(stored)
    assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(plaintext)).json()["actor"] == (
        f"apikey:{key_id} (ERP Compras)"
    )
    with session_scope() as session:
        assert key_id is not None
        revoke_api_key(session, world.account_id, key_id)
    refused = client.get("/api/v1/lists", headers=bearer(plaintext))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "unknown or revoked API key"


def test_last_use_is_recorded_at_most_once_a_minute(client: TestClient, world: World) -> None:
    with session_scope() as session:
        key, plaintext = create_api_key(session, world.account_id, "Lector", "viewer")
        key_id = key.id
    assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
    with session_scope() as session:
        first = session.get(ApiKey, key_id)
        assert first is not None and first.last_used_at is not None
        used = first.last_used_at
    assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
    with session_scope() as session:
        again = session.get(ApiKey, key_id)
        assert again is not None and again.last_used_at == used  # no write this time
        again.last_used_at = used - timedelta(minutes=5)
        session.add(again)
    service._touched.clear()  # a minute later, for this process
    assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
    with session_scope() as session:
        later = session.get(ApiKey, key_id)
        assert later is not None and later.last_used_at is not None
        assert later.last_used_at > used - timedelta(minutes=1)


def test_a_scoped_key_needs_both_role_and_scope(client: TestClient, world: World) -> None:
    with session_scope() as session:
        _key, plaintext = create_api_key(
            session, world.account_id, "Solo lectura", "manager", scopes="read"
        )
    assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
    refused = client.post("/api/v1/lists", json={"name": "X"}, headers=bearer(plaintext))
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert error["message"] == "this credential lacks the scope edit (it has: read)"


# -- OAuth 2.0 client credentials --------------------------------------------------------


def test_the_client_credentials_flow(client: TestClient, world: World) -> None:
    admin = bearer(admin_key(world))
    created = client.post(
        "/api/v1/oauth/clients",
        json={"name": "ERP Compras", "role": "manager", "scopes": ["send", "read"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert body["scopes"] == ["read", "send"] and client_id.startswith("mc_")
    with session_scope() as session:
        row = session.exec(select(OAuthClient).where(OAuthClient.client_id == client_id)).one()
        assert row.secret_hash == hash_secret(secret) and secret not in str(row)
    listed = client.get("/api/v1/oauth/clients", headers=admin).json()
    assert [c["client_id"] for c in listed] == [client_id]
    assert "client_secret" not in listed[0]

    # HTTP Basic (RFC 6749 §2.3.1), every scope the client may have.
    answer = client.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["scope"] == "read send" and token["access_token"].startswith("mat_")
    me = client.get("/api/v1/me", headers=bearer(token["access_token"])).json()
    assert me["role"] == "manager" and me["actor"].endswith("(ERP Compras)")
    assert me["actor"].startswith("oauth:")

    # Credentials in the body, a narrower scope; the send is attributed to the client.
    narrow = client.post(
        "/api/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "send",
        },
    ).json()
    assert narrow["scope"] == "send"
    sent = client.post(
        "/api/v1/sms",
        json={"to": ["987654321"], "text": "Su orden está lista"},
        headers=bearer(narrow["access_token"]),
    )
    assert sent.status_code == 202, sent.text
    with session_scope() as session:
        message = session.get(Message, sent.json()["messages"][0]["id"])
        assert message is not None and message.origin == me["actor"]
        actions = {(entry.action, entry.actor) for entry in session.exec(select(AuditEntry)).all()}
    admin_actor = client.get("/api/v1/me", headers=admin).json()["actor"]
    assert ("sms.send", me["actor"]) in actions
    assert ("oauth.token", me["actor"]) in actions  # a token request is the API's login
    assert ("oauth_client.create", admin_actor) in actions
    # The narrow token cannot read, even though the role could.
    refused = client.get("/api/v1/lists", headers=bearer(narrow["access_token"]))
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "insufficient_scope",
        "message": "this credential lacks the scope read (it has: send)",
        "field": None,
    }


def _client(
    world: World, role: str = "manager", scopes: str | None = "read send"
) -> tuple[str, str]:
    with session_scope() as session:
        client, secret = create_oauth_client(session, world.account_id, "App", role, scopes=scopes)
    return client.client_id, secret


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, ("id", "wrong secret"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, ("mc_unknown", "secret"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "password"}, ("id", "secret"), 400, "unsupported_grant_type"),
        ({}, ("id", "secret"), 400, "invalid_request"),
        (
            {"grant_type": "client_credentials", "scope": "admin"},
            ("id", "secret"),
            400,
            "invalid_scope",
        ),
        (
            {"grant_type": "client_credentials", "scope": "fly"},
            ("id", "secret"),
            400,
            "invalid_scope",
        ),
        (
            {"grant_type": "client_credentials", "client_secret": "x"},
            ("id", "secret"),
            400,
            "invalid_request",
        ),
    ],
)
def test_token_errors_follow_rfc_6749(
    client: TestClient,
    world: World,
    form: dict[str, str],
    auth: tuple[str, str] | None,
    status: int,
    error: str,
) -> None:
    client_id, secret = _client(world)
    headers = {}
    if auth is not None:
        given_id = client_id if auth[0] == "id" else auth[0]
        given_secret = secret if auth[1] == "secret" else auth[1]
        headers = basic(given_id, given_secret)
    answer = client.post("/api/v1/oauth/token", data=form, headers=headers)
    assert answer.status_code == status
    assert answer.json()["error"] == error and answer.json()["error_description"]
    assert answer.headers["cache-control"] == "no-store"
    if status == 401:
        assert answer.headers["www-authenticate"] == 'Basic realm="mailer"'


def test_an_expired_token_is_refused(client: TestClient, world: World, settings: Settings) -> None:
    client_id, secret = _client(world)
    with session_scope() as session:
        token = issue_access_token(
            session,
            client_id,
            secret,
            None,
            secret_key=settings.secret_key,
            lifetime=timedelta(hours=1),
            now=utcnow() - timedelta(hours=1, seconds=1),
        )
    refused = client.get("/api/v1/lists", headers=bearer(token.token))
    assert refused.status_code == 401
    assert "expired" in refused.json()["error"]["message"]
    assert refused.headers["www-authenticate"] == "Bearer"


def test_a_token_of_another_install_or_tampered_is_refused(
    client: TestClient, world: World, settings: Settings
) -> None:
    client_id, secret = _client(world)
    with session_scope() as session:
        foreign = issue_access_token(
            session,
            client_id,
            secret,
            None,
            secret_key="another-install-" + "y" * 32,
            lifetime=timedelta(hours=1),
        )
        mine = issue_access_token(
            session,
            client_id,
            secret,
            "read",
            secret_key=settings.secret_key,
            lifetime=timedelta(hours=1),
        )
    assert client.get("/api/v1/lists", headers=bearer(mine.token)).status_code == 200
    for token in (foreign.token, mine.token[:-2] + "AA", "mat_nonsense"):
        refused = client.get("/api/v1/lists", headers=bearer(token))
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "invalid access token"


def test_a_revoked_client_loses_its_tokens_at_once(client: TestClient, world: World) -> None:
    admin = bearer(admin_key(world))
    client_id, secret = _client(world)
    token = client.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    ).json()["access_token"]
    assert client.get("/api/v1/lists", headers=bearer(token)).status_code == 200
    assert client.delete(f"/api/v1/oauth/clients/{client_id}", headers=admin).status_code == 204
    refused = client.get("/api/v1/lists", headers=bearer(token))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "the access token's client was revoked"
    again = client.post(
        "/api/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    )
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"
    missing = client.delete("/api/v1/oauth/clients/mc_nobody", headers=admin)
    assert missing.status_code == 404


def test_client_scopes_stay_within_the_role(client: TestClient, world: World) -> None:
    admin = bearer(admin_key(world))
    refused = client.post(
        "/api/v1/oauth/clients",
        json={"name": "Lector", "role": "viewer", "scopes": ["read", "send"]},
        headers=admin,
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "scopes"
    default = client.post(
        "/api/v1/oauth/clients", json={"name": "Editor", "role": "editor"}, headers=admin
    )
    assert default.json()["scopes"] == ["edit", "read"]
    manager = bearer(_manager_key(world))
    assert client.get("/api/v1/oauth/clients", headers=manager).status_code == 403


def _manager_key(world: World) -> str:
    return world.api_key


def test_oauth_clients_and_api_keys_from_the_command_line(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from mailer.cli import app

    world = build_world(sqlite_settings, tmp_path, 1)
    runner = CliRunner()
    created = runner.invoke(
        app, ["oauth", "create", "ERP Compras", "--role", "manager", "--scopes", "send,read"]
    )
    assert created.exit_code == 0, created.output
    client_id = created.output.split("client_id=")[1].split()[0]
    secret = created.output.split("client_secret=")[1].split()[0]
    listed = runner.invoke(app, ["oauth", "list"])
    assert client_id in listed.output and "read send" in listed.output
    too_much = runner.invoke(
        app, ["oauth", "create", "Otro", "--role", "viewer", "--scopes", "send"]
    )
    assert too_much.exit_code == 1 and "cannot have the scopes send" in too_much.output
    with TestClient(create_app(sqlite_settings)) as client:
        token = client.post(
            "/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(client_id, secret),
        )
        assert token.status_code == 200
        assert runner.invoke(app, ["oauth", "revoke", client_id]).exit_code == 0
        refused = client.get("/api/v1/lists", headers=bearer(token.json()["access_token"]))
        assert refused.status_code == 401

        key = runner.invoke(
            app, ["apikey", "create", "Lector", "--role", "manager", "--scopes", "read"]
        )
        assert key.exit_code == 0, key.output
        plaintext = key.output.strip().splitlines()[-1]
        assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 200
        assert (
            client.post("/api/v1/lists", json={"name": "x"}, headers=bearer(plaintext)).status_code
            == 403
        )
        keys = runner.invoke(app, ["apikey", "list"])
        assert "Lector" in keys.output and "read" in keys.output
        assert runner.invoke(app, ["apikey", "revoke", "2"]).exit_code == 0
        assert client.get("/api/v1/lists", headers=bearer(plaintext)).status_code == 401
    assert world.account_id == 1
