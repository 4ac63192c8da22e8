"""Idempotency-Key on API POSTs: a retry gets the first response without the work being
done again; a different body under the same key is refused; a duplicate of a request in
flight gets 409; a key whose request never committed is free again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, update
from sqlmodel import col, select

from mailer.accounts import idempotency
from mailer.accounts.models import IdempotencyKey
from mailer.accounts.service import create_api_key
from mailer.asgi import create_app
from mailer.audience.models import MailingList
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, World, build_world


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    settings.api.idempotency_wait_seconds = 0.2
    return build_world(settings, tmp_path, 1)


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def headers(world: World, key: str, api_key: str | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key or world.api_key}",
        "Idempotency-Key": key,
        "Accept-Language": "en",
    }


def count(model: type[Message] | type[MailingList]) -> int:
    with session_scope() as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


MESSAGE = {
    "to": "ana@empresa.pe",
    "from_email": f"avisos@{DOMAIN}",
    "subject": "Trámite {{ n }}",
    "html": "<p>Registrado: {{ n }}</p>",
    "variables": {"n": "T-1"},
}


def test_a_retried_send_returns_the_first_response(client: TestClient, world: World) -> None:
    first = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "envio-1"))
    assert first.status_code == 202, first.text
    retry = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "envio-1"))
    assert (retry.status_code, retry.json()) == (202, first.json())
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert "idempotent-replayed" not in first.headers
    assert count(Message) == 1

    changed = client.post(
        "/api/v1/messages",
        json={**MESSAGE, "to": "otra@empresa.pe"},
        headers=headers(world, "envio-1"),
    )
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"
    assert changed.json()["error"]["field"] == "Idempotency-Key"

    # The key belongs to the application: another one using it does its own work.
    with session_scope() as session:
        _key, other = create_api_key(session, world.account_id, "Otra", "manager")
    theirs = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "envio-1", other))
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    assert count(Message) == 2


def test_sms_and_campaign_sends_are_idempotent(client: TestClient, world: World) -> None:
    sms = {"to": ["987654321", "912345678"], "text": "Aviso"}
    first = client.post("/api/v1/sms", json=sms, headers=headers(world, "sms-1"))
    assert first.status_code == 202, first.text
    again = client.post("/api/v1/sms", json=sms, headers=headers(world, "sms-1"))
    assert again.json() == first.json() and count(Message) == 2

    path = f"/api/v1/campaigns/{world.campaign_id}/send"
    started = client.post(path, headers=headers(world, "campana-1"))
    assert started.status_code == 202, started.text
    retried = client.post(path, headers=headers(world, "campana-1"))
    assert (retried.status_code, retried.json()) == (202, started.json())
    # Without the key the second send is what it is: the campaign is already sending.
    assert client.post(path, headers=headers(world, "campana-2")).status_code == 409


def test_a_refused_request_frees_its_key(client: TestClient, world: World) -> None:
    invalid = client.post("/api/v1/lists", json={}, headers=headers(world, "lista-1"))
    assert invalid.status_code == 422 and invalid.json()["error"]["code"] == "validation_failed"
    created = client.post(
        "/api/v1/lists", json={"name": "Proveedores 2026"}, headers=headers(world, "lista-1")
    )
    assert created.status_code == 201, created.text
    replay = client.post(
        "/api/v1/lists", json={"name": "Proveedores 2026"}, headers=headers(world, "lista-1")
    )
    assert (replay.status_code, replay.json()) == (201, created.json())
    assert count(MailingList) == 2  # the world's list and this one


def _claim(settings: Settings, world: World, key: str, body: dict[str, str]) -> idempotency.Claim:
    digest = hashlib.sha256(json.dumps(body).encode()).hexdigest()
    held = idempotency.claim(
        settings,
        "apikey:1 (Pruebas)",
        key,
        idempotency.fingerprint("POST", "/api/v1/lists", "", digest),
        lease=timedelta(minutes=5),
        wait_seconds=0,
    )
    assert isinstance(held, idempotency.Claim)
    return held


def _age(claim: idempotency.Claim, minutes: int) -> None:
    with session_scope() as session:
        session.execute(
            update(IdempotencyKey)
            .where(col(IdempotencyKey.id) == claim.id)
            .values(claimed_at=utcnow() - timedelta(minutes=minutes))
        )


def test_a_duplicate_in_flight_gets_409_until_its_lease_ends(
    client: TestClient, world: World, settings: Settings
) -> None:
    body = {"name": "En curso"}
    held = _claim(settings, world, "curso-1", body)  # another request holds the key
    busy = client.post(
        "/api/v1/lists",
        content=json.dumps(body),
        headers={**headers(world, "curso-1"), "Content-Type": "application/json"},
    )
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "request_in_progress"
    # Its process died before committing: after the lease a retry does the work.
    _age(held, 10)
    done = client.post(
        "/api/v1/lists",
        content=json.dumps(body),
        headers={**headers(world, "curso-1"), "Content-Type": "application/json"},
    )
    assert done.status_code == 201, done.text


def test_a_request_that_committed_but_lost_its_response_is_not_redone(
    client: TestClient, world: World, settings: Settings
) -> None:
    body = {"name": "Perdida"}
    held = _claim(settings, world, "perdida-1", body)
    with session_scope() as session:
        idempotency.bind_to_transaction(session, held)  # the work committed, then a crash
    _age(held, 10)
    lost = client.post(
        "/api/v1/lists",
        content=json.dumps(body),
        headers={**headers(world, "perdida-1"), "Content-Type": "application/json"},
    )
    assert lost.status_code == 409
    assert lost.json()["error"]["code"] == "idempotency_response_lost"
    assert count(MailingList) == 1


def test_a_malformed_key_is_refused(client: TestClient, world: World) -> None:
    answer = client.post("/api/v1/lists", json={"name": "X"}, headers=headers(world, "k" * 300))
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "Idempotency-Key"


def test_concurrent_duplicates_do_the_work_once(
    client: TestClient, world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of a send at the same time: one does the work; the other waits for its
    outcome and gets the same answer (or, past the wait, 409 request_in_progress)."""
    import threading
    import time

    from mailer.campaigns import transactional

    settings.api.idempotency_wait_seconds = 5
    queue = transactional.queue_message

    def slow_queue(*args: object, **kwargs: object) -> Message:
        time.sleep(0.5)
        return queue(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transactional, "queue_message", slow_queue)
    answers: list[tuple[int, dict[str, object], bool]] = []

    def send() -> None:
        answer = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "doble"))
        answers.append((answer.status_code, answer.json(), "idempotent-replayed" in answer.headers))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(replayed for _, _, replayed in answers) == [False, True]
    assert answers[0][:2] == answers[1][:2] and answers[0][0] == 202
    assert count(Message) == 1


def test_a_stored_answer_is_encrypted_at_rest(client: TestClient, world: World) -> None:
    """A new OAuth client's secret is in its answer, shown once: the copy kept for a retry
    is not readable in the database, and a retry still gets it back."""
    with session_scope() as session:
        _key, admin_key = create_api_key(session, world.account_id, "Consola", "admin")
    admin = client.post(
        "/api/v1/oauth/clients",
        json={"name": "ERP de compras", "scopes": ["email:send"]},
        headers=headers(world, "cliente-1", admin_key),
    )
    assert admin.status_code == 201, admin.text
    secret = admin.json()["client_secret"]
    with session_scope() as session:
        [stored] = session.exec(select(IdempotencyKey.response_body)).all()
    assert stored is not None and stored.startswith(b"sealed:")
    assert secret.encode() not in stored and b"ERP de compras" not in stored
    retry = client.post(
        "/api/v1/oauth/clients",
        json={"name": "ERP de compras", "scopes": ["email:send"]},
        headers=headers(world, "cliente-1", admin_key),
    )
    assert retry.status_code == 201 and retry.json()["client_secret"] == secret
    assert retry.headers["idempotent-replayed"] == "true"


def test_an_answer_stored_in_clear_before_sealing_still_replays(
    client: TestClient, world: World
) -> None:
    first = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "envio-9"))
    assert first.status_code == 202, first.text
    with session_scope() as session:
        session.execute(update(IdempotencyKey).values(response_body=first.content))
    retry = client.post("/api/v1/messages", json=MESSAGE, headers=headers(world, "envio-9"))
    assert (retry.status_code, retry.json()) == (202, first.json())
