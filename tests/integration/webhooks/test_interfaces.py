"""Webhooks through the API, the portal and the actors (the in-process broker with its
worker threads), against the real receiver on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from mailer.accounts.models import AuditEntry
from mailer.accounts.service import create_api_key, create_user
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.core.queue import enqueue
from mailer.events.models import EventKind
from mailer.events.service import append
from mailer.storage.db import session_scope
from mailer.webhooks import service
from mailer.webhooks.tasks import QUEUE, dispatch_webhook_events
from mailer.workers import configure_broker, start_worker
from tests.helpers import World, build_world
from tests.integration.webhooks.conftest import Receiver

PASSWORD = "una clave larga 123"
ROLES = ("viewer", "editor", "manager")


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    world = build_world(sqlite_settings, tmp_path, 2)
    with session_scope() as session:
        for role in ROLES:
            create_user(session, world.account_id, f"{role}@example.pe", PASSWORD, role)
    return world


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


@pytest.fixture
def worker(sqlite_settings: Settings) -> Iterator[Any]:
    running = start_worker(configure_broker(sqlite_settings), 1, webhook_threads=2)
    yield running
    running.stop()


def key_for(world: World, role: str) -> dict[str, str]:
    with session_scope() as session:
        _key, plaintext = create_api_key(session, world.account_id, f"app-{role}", role)
    return {"Authorization": f"Bearer {plaintext}", "Accept-Language": "en"}


def test_api_manages_webhooks_and_the_actors_deliver(
    client: TestClient, world: World, receiver: Receiver, worker: Any
) -> None:
    admin = key_for(world, "admin")
    bad = client.post(
        "/api/v1/webhooks",
        json={"url": "ftp://x.pe/", "event_types": ["email.sent"]},
        headers=admin,
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "url"
    unknown = client.post(
        "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["email.nope"]}, headers=admin
    )
    assert unknown.status_code == 422
    created = client.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "description": "ERP", "event_types": ["email.sent"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    webhook = created.json()
    assert webhook["secret"].startswith("whsec_") and webhook["active"] is True
    receiver.secrets.append(webhook["secret"])
    base = f"/api/v1/webhooks/{webhook['id']}"
    listed = client.get("/api/v1/webhooks", headers=admin).json()
    assert [w["id"] for w in listed] == [webhook["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(base, headers=admin).json()

    # A test event goes through the queue and the worker's webhook threads.
    queued = client.post(f"{base}/test", headers=admin)
    assert queued.status_code == 202 and queued.json()["state"] == "pending"
    (test_request,) = receiver.wait_for(1)
    assert test_request.verified and test_request.payload["type"] == "webhook.test"

    # An event appended by sending reaches the receiver through the dispatcher actor.
    with session_scope() as session:
        append(session, world.account_id, EventKind.SENT, campaign_id=world.campaign_id)
    enqueue(dispatch_webhook_events)
    sent = receiver.wait_for(2)[1]
    assert sent.payload["type"] == "email.sent"
    assert sent.payload["data"]["campaign_id"] == world.campaign_id

    history = client.get(f"{base}/deliveries", headers=admin).json()
    assert [(d["event_type"], d["state"]) for d in history] == [
        ("email.sent", "succeeded"),
        ("webhook.test", "succeeded"),
    ]
    assert [a["status_code"] for a in history[0]["attempt_log"]] == [200]
    assert history[0]["webhook_id"] == sent.webhook_id
    assert client.get(f"{base}/deliveries?state=failed", headers=admin).json() == []

    replayed = client.post(f"{base}/deliveries/{history[0]['id']}/replay", headers=admin)
    assert replayed.status_code == 202 and replayed.json()["replays"] == 1
    assert receiver.wait_for(3)[2].webhook_id == sent.webhook_id
    assert client.post(f"{base}/replay-failed", headers=admin).json() == {"replayed": 0}

    rotated = client.post(f"{base}/rotate-secret", headers=admin).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != webhook["secret"]

    off = client.patch(base, json={"active": False}, headers=admin)
    assert off.json()["active"] is False and off.json()["disabled_reason"] == "manual"
    refused = client.post(f"{base}/test", headers=admin)
    assert refused.status_code == 409 and "disabled" in refused.json()["error"]["message"]
    on = client.patch(base, json={"active": True, "event_types": ["sms.inbound"]}, headers=admin)
    assert on.json()["active"] is True and on.json()["event_types"] == ["sms.inbound"]

    assert client.delete(base, headers=admin).status_code == 204
    assert client.get(base, headers=admin).status_code == 404
    with session_scope() as session:
        actions = set(
            session.execute(
                select(AuditEntry.action).where(col(AuditEntry.action).startswith("webhook."))
            ).scalars()
        )
    assert {"webhook.create", "webhook.replay", "webhook.disabled", "webhook.delete"} <= actions


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_manage_webhooks_in_the_api(
    client: TestClient, world: World, role: str
) -> None:
    headers = key_for(world, role)
    for method, path in (
        ("get", "/api/v1/webhooks"),
        ("post", "/api/v1/webhooks"),
        ("patch", "/api/v1/webhooks/1"),
        ("post", "/api/v1/webhooks/1/replay-failed"),
    ):
        response = client.request(
            method, path, headers=headers, json={"url": "http://127.0.0.1/", "event_types": []}
        )
        assert response.status_code == 403, (role, method, path)
        assert response.json()["error"]["code"] == "permission_denied"


def test_webhook_queue_has_threads_of_its_own(worker: Any) -> None:
    """A slow receiver occupies only the webhook threads: sending keeps its own."""
    assert set(worker.webhooks.consumers) == {QUEUE, f"{QUEUE}.DQ"}
    assert not any(name.startswith(QUEUE) for name in worker.main.consumers)
    assert {"default", "delivery"} <= set(worker.main.consumers)


def csrf(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: TestClient, email: str, password: str) -> None:
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf(client, "/login")},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def test_portal_pages_for_admins(
    client: TestClient, world: World, receiver: Receiver, sqlite_settings: Settings
) -> None:
    login(client, world.admin_email, world.admin_password)
    assert 'href="/webhooks"' in client.get("/").text
    assert "Aún no hay webhooks" in client.get("/webhooks").text
    token = csrf(client, "/webhooks")
    refused = client.post(
        "/webhooks", data={"url": receiver.url, "csrf_token": token}, follow_redirects=False
    )
    assert refused.status_code == 422 and "elija al menos un tipo de evento" in refused.text
    created = client.post(
        "/webhooks",
        data={
            "url": receiver.url,
            "description": "Sistema de trámites",
            "event_types": ["email.sent", "email.bounced"],
            "csrf_token": token,
        },
    )
    assert created.status_code == 200 and "no se volverá a mostrar" in created.text
    assert created.headers["cache-control"] == "no-store"
    match = re.search(r'<pre class="raw" id="secret">(whsec_[^<]+)</pre>', created.text)
    assert match
    receiver.secrets.append(match.group(1))
    with session_scope() as session:
        (subscription,) = service.list_subscriptions(session, world.account_id)
    page = f"/webhooks/{subscription.id}"
    detail = client.get(page)
    assert detail.status_code == 200 and match.group(1) not in detail.text
    assert "Sistema de trámites" in detail.text

    receiver.answers = lambda _id, _n: 500
    sent = client.post(f"{page}/test", data={"csrf_token": token}, follow_redirects=False)
    assert sent.status_code == 303
    service.deliver_due(sqlite_settings)
    detail = client.get(page).text
    assert "Evento de prueba en cola" in detail and "HTTP 500" in detail and "Pendiente" in detail

    client.post(f"{page}/disable", data={"csrf_token": token})
    listing = client.get("/webhooks").text
    assert "está desactivado" in listing and "desactivado por un administrador" in listing
    assert "Fallido" in client.get(f"{page}?state=failed").text
    client.post(f"{page}/enable", data={"csrf_token": token})
    receiver.answers = lambda _id, _n: 200
    replay = client.post(f"{page}/replay-failed", data={"csrf_token": token})
    assert "Se reenviarán 1 entregas fallidas" in replay.text
    service.deliver_due(sqlite_settings)
    assert len(receiver.delivered()) == 1 and receiver.delivered()[0].verified

    saved = client.post(
        page,
        data={"url": receiver.url + "/v2", "event_types": ["sms.inbound"], "csrf_token": token},
    )
    assert "Cambios guardados" in saved.text and "/hooks/v2" in saved.text
    rotated = client.post(f"{page}/rotate", data={"csrf_token": token})
    assert "Nuevo secreto" in rotated.text and match.group(1) not in rotated.text
    gone = client.post(f"{page}/delete", data={"csrf_token": token})
    assert "Webhook eliminado" in gone.text and client.get(page).status_code == 404


@pytest.mark.parametrize("role", ROLES)
def test_portal_pages_refuse_other_roles(client: TestClient, world: World, role: str) -> None:
    login(client, f"{role}@example.pe", PASSWORD)
    assert 'href="/webhooks"' not in client.get("/").text
    assert client.get("/webhooks").status_code == 403
    token = csrf(client, "/")
    created = client.post(
        "/webhooks",
        data={"url": "http://127.0.0.1/", "event_types": ["email.sent"], "csrf_token": token},
    )
    assert created.status_code == 403
    assert client.post("/webhooks/1/test", data={"csrf_token": token}).status_code == 403


def test_api_refuses_internal_targets_on_field_url(client: TestClient, world: World) -> None:
    """The test settings allow 127.0.0.0/8 only: the metadata address, a private network
    and a system port stay refused, with a message that says what to change."""
    admin = key_for(world, "admin")
    for url, shown in [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://10.0.0.5:8080/hooks", "10.0.0.5, a private address"),
        ("http://127.0.0.1:22/", "port 22"),
    ]:
        answer = client.post(
            "/api/v1/webhooks", json={"url": url, "event_types": ["email.sent"]}, headers=admin
        )
        assert answer.status_code == 422, url
        error = answer.json()["error"]
        assert error["field"] == "url" and shown in error["message"], error
    spanish = client.post(
        "/api/v1/webhooks",
        json={"url": "http://10.0.0.5/", "event_types": ["email.sent"]},
        headers={**admin, "Accept-Language": "es"},
    )
    assert (
        "no se pueden enviar webhooks a 10.0.0.5, una dirección privada"
        in (spanish.json()["error"]["message"])
    )
