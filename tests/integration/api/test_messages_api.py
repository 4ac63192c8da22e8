"""Transactional e-mail through the API: 202 with the id, sent by a worker through the real
delivery path (a recording SMTP relay) with tracking, variables and DKIM, the allowance
charged once accepted; bad requests answered with the field to fix."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from fastapi.testclient import TestClient

from mailer.accounts import credits
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from mailer.workers import start_worker
from tests.helpers import DOMAIN, Recorder, World, build_world, start_recording_relay


@pytest.fixture
def relay() -> Iterator[tuple[int, Recorder]]:
    capture, recorder = start_recording_relay()
    yield capture.port, recorder
    capture.stop()


@pytest.fixture
def world(
    configure: object, relay: tuple[int, Recorder], tmp_path: Path
) -> Iterator[tuple[Settings, World]]:
    settings: Settings = configure(None, MAILER_RELAY__PORT=str(relay[0]))  # type: ignore[operator]
    built = build_world(settings, tmp_path, 1)
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "email", 10)
    worker = start_worker(dramatiq.get_broker(), 2)
    try:
        yield settings, built
    finally:
        worker.stop()


def test_a_transactional_email_is_sent_tracked_and_charged(
    world: tuple[Settings, World], relay: tuple[int, Recorder]
) -> None:
    settings, built = world
    headers = {"Authorization": f"Bearer {built.api_key}"}
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/api/v1/messages",
            headers=headers,
            json={
                "to": "Ana@Empresa.pe",
                "to_name": "Ana Quispe",
                "from_email": f"notificaciones@{DOMAIN}",
                "from_name": "Mesa de partes",
                "subject": "Trámite {{ tramite }} registrado",
                "html": '<p>Hola {{ contact.first_name }}: <a href="https://www.example.pe/t">'
                "ver {{ tramite }}</a></p>",
                "variables": {"tramite": "T-118"},
                "tags": ["mesa"],
            },
        )
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            body = client.get(f"/api/v1/messages/{message_id}", headers=headers).json()
            if body["state"] == "sent":
                break
            time.sleep(0.1)
        assert body["state"] == "sent", body
        assert body["tags"] == ["mesa"] and body["origin"].startswith("apikey:")
        assert [e["kind"] for e in body["events"]] == ["sent"]
        [balance] = client.get("/api/v1/credits", headers=headers).json()
        assert (balance["available"], balance["held"]) == (9, 0)
    [(mail_from, rcpts, data)] = relay[1].messages
    assert rcpts == ["ana@empresa.pe"] and mail_from.startswith("bounces+")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == "Trámite T-118 registrado"
    assert parsed["DKIM-Signature"] and parsed["List-Unsubscribe"]
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "ver T-118" in html and "/t/c/" in html and "/t/o/" in html


def test_bad_transactional_requests_name_the_field(world: tuple[Settings, World]) -> None:
    settings, built = world
    headers = {"Authorization": f"Bearer {built.api_key}"}
    base = {"to": "ana@empresa.pe", "from_email": f"n@{DOMAIN}"}
    with TestClient(create_app(settings)) as client:
        cases = [
            ({**base, "to": "not-an-address"}, "to"),
            ({**base}, "subject"),
            ({**base, "subject": "x", "html": "<p>{{ x</p>"}, "html"),
            (
                {**base, "from_email": "n@unknown.example.pe", "subject": "x", "html": "y"},
                "from_email",
            ),
            ({**base, "template_id": 99, "subject": "x"}, "template_id"),
        ]
        for payload, field in cases:
            answer = client.post("/api/v1/messages", headers=headers, json=payload)
            assert answer.status_code in (404, 422), (payload, answer.text)
            assert answer.json()["error"]["field"] == field, (payload, answer.text)
