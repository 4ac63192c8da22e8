"""The REST API through FastAPI's test client against a migrated database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mailer.accounts.service import create_api_key, create_oauth_client
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.helpers import World, build_world


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return build_world(settings, tmp_path, 3)


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def key_for(world: World, role: str) -> dict[str, str]:
    with session_scope() as session:
        _key, plaintext = create_api_key(session, world.account_id, f"app-{role}", role)
    return {"Authorization": f"Bearer {plaintext}"}


def test_health_readiness_metrics_docs(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
    metrics = client.get("/metrics").text
    assert "mailer_queue_depth" in metrics and "mailer_http_requests_total" in metrics
    assert client.get("/api/docs").status_code == 200
    paths = client.get("/api/openapi.json").json()["paths"]
    assert "/api/v1/campaigns/{campaign_id}/send" in paths


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer mk_00000000_nope"}, "unknown or revoked"),
        ({"Authorization": "Basic abc"}, "Bearer"),
        ({"X-API-Key": "not-a-key"}, "malformed"),
    ],
)
def test_wrong_api_keys_are_refused(
    client: TestClient, headers: dict[str, str], message: str
) -> None:
    response = client.get("/api/v1/lists", headers={**headers, "Accept-Language": "en"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "authentication_failed" and message in error["message"]


def test_messages_are_spanish_unless_english_is_asked_for(client: TestClient) -> None:
    spanish = client.get("/api/v1/campaigns", headers={"Authorization": "Bearer mk_x_y"})
    assert spanish.json()["error"]["message"] == "clave de API desconocida o revocada"
    english = client.get(
        "/api/v1/campaigns",
        headers={"Authorization": "Bearer mk_x_y", "Accept-Language": "en-US,en;q=0.9"},
    )
    assert english.json()["error"]["message"] == "unknown or revoked API key"
    assert english.json()["error"]["code"] == spanish.json()["error"]["code"]


def test_lists_import_templates_and_campaign_flow(
    client: TestClient, world: World, settings: Settings
) -> None:
    auth = {"Authorization": f"Bearer {world.api_key}"}
    assert client.get("/api/v1/me", headers=auth).json()["role"] == "manager"
    created = client.post("/api/v1/lists", json={"name": "Ciudadanos"}, headers=auth)
    assert created.status_code == 201
    list_id = created.json()["id"]
    csv = "email,nombre\nuno@example.pe,Uno\nesto no es un correo,Dos\ntres@example.pe,Tres\n"
    imported = client.post(
        f"/api/v1/lists/{list_id}/import",
        files={"file": ("ciudadanos.csv", csv.encode(), "text/csv")},
        headers=auth,
    ).json()
    assert (imported["created"], imported["added_to_list"]) == (2, 2)
    assert [(e["line"], e["column"]) for e in imported["errors"]] == [(3, "email")]
    lists = {
        item["name"]: item["members"] for item in client.get("/api/v1/lists", headers=auth).json()
    }
    assert lists["Ciudadanos"] == 2
    contacts = client.get(f"/api/v1/lists/{list_id}/contacts", headers=auth).json()
    assert [c["email"] for c in contacts] == ["uno@example.pe", "tres@example.pe"]

    broken = client.post(
        "/api/v1/templates",
        json={"name": "Rota", "subject": "Hola", "html": "<p>a</p>\n<p>{% if x %}sin cerrar</p>"},
        headers=auth,
    )
    assert broken.status_code == 422
    assert broken.json()["error"]["code"] == "template_error"
    assert broken.json()["error"]["message"].startswith("HTML, línea 2: ")
    assert broken.json()["error"]["field"] == "html"
    template = client.post(
        "/api/v1/templates",
        json={
            "name": "Aviso API",
            "subject": "Hola {{ contact.first_name }}",
            "html": "<p>Hola</p>",
        },
        headers=auth,
    )
    assert template.status_code == 201
    campaign = client.post(
        "/api/v1/campaigns",
        json={
            "name": "Por API",
            "template_id": template.json()["id"],
            "list_id": list_id,
            "from_email": "avisos@envios.example.pe",
            "from_name": "Entidad",
        },
        headers=auth,
    )
    assert campaign.status_code == 201 and campaign.json()["state"] == "draft"
    bad_domain = client.post(
        "/api/v1/campaigns",
        json={
            "name": "Dominio ajeno",
            "template_id": template.json()["id"],
            "list_id": list_id,
            "from_email": "x@otro.example.pe",
            "from_name": "X",
        },
        headers=auth,
    )
    campaign_id = bad_domain.json()["id"]
    refused = client.post(f"/api/v1/campaigns/{campaign_id}/send", headers=auth)
    assert refused.status_code == 404
    assert "mailer domain add otro.example.pe" in refused.json()["error"]["message"]
    missing = client.get("/api/v1/campaigns/999999", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    invalid = client.post("/api/v1/campaigns", json={"name": "x"}, headers=auth)
    assert invalid.status_code == 422 and invalid.json()["error"]["field"]


ROUTES = [
    ("get", "/api/v1/me", "read"),
    ("get", "/api/v1/lists", "read"),
    ("post", "/api/v1/lists", "edit"),
    ("get", "/api/v1/lists/{list_id}/contacts", "read"),
    ("post", "/api/v1/lists/{list_id}/import", "edit"),
    ("get", "/api/v1/templates", "read"),
    ("post", "/api/v1/templates", "edit"),
    ("get", "/api/v1/templates/{template_id}", "read"),
    ("put", "/api/v1/templates/{template_id}", "edit"),
    ("get", "/api/v1/templates/{template_id}/versions", "read"),
    ("post", "/api/v1/templates/{template_id}/versions/{version}/restore", "edit"),
    ("post", "/api/v1/templates/{template_id}/duplicate", "edit"),
    ("get", "/api/v1/templates/{template_id}/check", "read"),
    ("post", "/api/v1/templates/{template_id}/test", "send"),
    ("get", "/api/v1/library", "read"),
    ("post", "/api/v1/library/{key}/use", "edit"),
    ("get", "/api/v1/campaigns", "read"),
    ("post", "/api/v1/campaigns", "edit"),
    ("get", "/api/v1/campaigns/{campaign_id}", "read"),
    ("get", "/api/v1/campaigns/{campaign_id}/stats", "read"),
    ("post", "/api/v1/campaigns/{campaign_id}/send", "send"),
    ("post", "/api/v1/campaigns/{campaign_id}/schedule", "send"),
    ("post", "/api/v1/campaigns/{campaign_id}/pause", "send"),
    ("post", "/api/v1/campaigns/{campaign_id}/resume", "send"),
    ("post", "/api/v1/campaigns/{campaign_id}/cancel", "send"),
    ("get", "/api/v1/campaigns/{campaign_id}/progress", "read"),
    ("post", "/api/v1/campaigns/{campaign_id}/resend-failed", "edit"),
    ("get", "/api/v1/contacts", "read"),
    ("post", "/api/v1/contacts", "edit"),
    ("get", "/api/v1/contacts/{contact_id}", "read"),
    ("patch", "/api/v1/contacts/{contact_id}", "edit"),
    ("delete", "/api/v1/contacts/{contact_id}", "send"),
    ("post", "/api/v1/contacts/{contact_id}/consents", "edit"),
    ("get", "/api/v1/contacts/{contact_id}/export", "send"),
    ("get", "/api/v1/attributes", "read"),
    ("put", "/api/v1/attributes/{name}", "edit"),
    ("get", "/api/v1/segments", "read"),
    ("post", "/api/v1/segments", "edit"),
    ("post", "/api/v1/segments/count", "read"),
    ("get", "/api/v1/segments/{segment_id}", "read"),
    ("patch", "/api/v1/segments/{segment_id}", "edit"),
    ("delete", "/api/v1/segments/{segment_id}", "edit"),
    ("get", "/api/v1/suppressions", "read"),
    ("post", "/api/v1/suppressions", "edit"),
    ("delete", "/api/v1/suppressions/{channel}/{value}", "send"),
    ("post", "/api/v1/lists/{list_id}/imports", "edit"),
    ("get", "/api/v1/imports/{import_id}", "read"),
    ("post", "/api/v1/cleanings", "edit"),
    ("get", "/api/v1/cleanings/{run_id}", "read"),
    ("post", "/api/v1/cleanings/fixes", "edit"),
    ("post", "/api/v1/verify", "read"),
    ("get", "/api/v1/webhooks", "admin"),
    ("post", "/api/v1/webhooks", "admin"),
    ("get", "/api/v1/webhooks/{webhook_id}", "admin"),
    ("patch", "/api/v1/webhooks/{webhook_id}", "admin"),
    ("delete", "/api/v1/webhooks/{webhook_id}", "admin"),
    ("post", "/api/v1/webhooks/{webhook_id}/rotate-secret", "admin"),
    ("post", "/api/v1/webhooks/{webhook_id}/test", "admin"),
    ("get", "/api/v1/webhooks/{webhook_id}/deliveries", "admin"),
    ("post", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay", "admin"),
    ("post", "/api/v1/webhooks/{webhook_id}/replay-failed", "admin"),
    ("post", "/api/v1/sms", "send"),
    ("get", "/api/v1/sms/replies", "read"),
    ("get", "/api/v1/sms/{message_id}", "read"),
    ("post", "/api/v1/sms/count", "read"),
    ("get", "/api/v1/sms/campaigns/{campaign_id}/stats", "read"),
    ("get", "/api/v1/credits", "read"),
    ("post", "/api/v1/messages", "send"),
    ("get", "/api/v1/messages/{message_id}", "read"),
    ("post", "/api/v1/oauth/token", "public"),
    ("get", "/api/v1/oauth/clients", "admin"),
    ("post", "/api/v1/oauth/clients", "admin"),
    ("delete", "/api/v1/oauth/clients/{client_id}", "admin"),
    ("get", "/api/v1/keys", "admin"),
    ("post", "/api/v1/keys", "admin"),
    ("delete", "/api/v1/keys/{key_id}", "admin"),
    ("get", "/api/v1/credits/movements", "read"),
    ("get", "/api/v1/subaccounts", "admin"),
    ("post", "/api/v1/subaccounts", "admin"),
    ("post", "/api/v1/subaccounts/{subaccount_id}/allowance", "admin"),
    ("get", "/api/v1/audit", "admin"),
]
GRANTED = {
    "viewer": {"public", "read"},
    "editor": {"public", "read", "edit"},
    "manager": {"public", "read", "edit", "send"},
    "admin": {"public", "read", "edit", "send", "admin"},
}
# Routes that a channel scope also opens (besides the broad "send").
NARROW_SCOPES = {
    ("post", "/api/v1/sms"): "sms:send",
    ("post", "/api/v1/messages"): "email:send",
    ("post", "/api/v1/templates/{template_id}/test"): "email:send",
}


def test_every_api_route_is_in_the_role_matrix(client: TestClient) -> None:
    declared = {
        (method, path)
        for path, item in client.get("/api/openapi.json").json()["paths"].items()
        for method in item
    }
    assert declared == {(method, path) for method, path, _ in ROUTES}


def route_path(template: str, world: World) -> str:
    return template.format(
        list_id=world.list_id,
        template_id=world.template_id,
        campaign_id=world.campaign_id,
        version=1,
        key="comunicado",
        contact_id=1,
        segment_id=1,
        import_id=1,
        run_id=1,
        name="ciudad",
        channel="email",
        value="nadie@example.pe",
        webhook_id=1,
        delivery_id=1,
        message_id=1,
        client_id="mc_0000000000000000",
        key_id=1,
        subaccount_id=1,
    )


@pytest.mark.parametrize("role", ["viewer", "editor", "manager", "admin"])
def test_role_matrix_on_every_route(client: TestClient, world: World, role: str) -> None:
    headers = key_for(world, role)
    for method, template, needs in ROUTES:
        path = route_path(template, world)
        response = client.request(method, path, headers=headers, json={})
        if needs in GRANTED[role]:
            assert response.status_code != 403, (role, method, path, response.text)
        else:
            assert response.status_code == 403, (role, method, path, response.status_code)
            assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(
    ("role", "scopes"),
    [
        ("admin", "read send"),
        ("manager", "read"),
        ("manager", "read sms:send"),
        ("editor", "edit"),
        ("viewer", "read"),
    ],
)
def test_role_and_scope_matrix_with_oauth_tokens(
    client: TestClient, world: World, role: str, scopes: str
) -> None:
    """A token needs both its client's role and a scope: narrower scopes than the role
    refuse with insufficient_scope, a role that does not allow it with permission_denied."""
    with session_scope() as session:
        oauth_client, secret = create_oauth_client(
            session, world.account_id, f"app-{role}-{scopes}", role, scopes=scopes
        )
    token = client.post(
        "/api/v1/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": oauth_client.client_id,
            "client_secret": secret,
        },
    ).json()
    assert token["scope"] == " ".join(sorted(scopes.split()))
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    granted = set(scopes.split()) | {"public"}
    for method, template, needs in ROUTES:
        path = route_path(template, world)
        response = client.request(method, path, headers=headers, json={})
        narrow = NARROW_SCOPES.get((method, template))
        if needs not in GRANTED[role]:
            assert response.status_code == 403, (role, method, path, response.status_code)
            assert response.json()["error"]["code"] == "permission_denied"
        elif needs in granted or narrow in granted:
            assert response.status_code != 403, (role, scopes, method, path, response.text)
        else:
            assert response.status_code == 403, (role, scopes, method, path, response.text)
            assert response.json()["error"]["code"] == "insufficient_scope"
