"""A campaign through the real pipeline: CSV import, sandboxed template, ledger snapshot,
queue (dramatiq), render, MIME, DKIM, SMTP to a real aiosmtpd server, bulk ledger updates."""

from __future__ import annotations

import email
import email.policy
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy import func, select

from mailer.campaigns import pipeline
from mailer.campaigns.service import campaign_counts, get_campaign, send_now
from mailer.core.config import Settings
from mailer.events.models import Event
from mailer.messages.models import Message, MessageState
from mailer.storage.db import session_scope
from mailer.tracking.urls import read_click_token
from mailer.workers import configure_broker, start_worker
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server
from tests.helpers import (
    DOMAIN,
    Recorder,
    World,
    build_world,
    dkim_verifies,
    start_recording_relay,
    wait_for_state,
)

RECIPIENTS = 1000


@pytest.fixture
def relay() -> Iterator[tuple[int, Recorder]]:
    capture, recorder = start_recording_relay()
    yield capture.port, recorder
    capture.stop()


def run_campaign(settings: Settings, world: World) -> None:
    broker = configure_broker(settings)
    worker = start_worker(broker, 4)
    try:
        send_now(world.account_id, world.campaign_id, actor="test")
        assert wait_for_state(settings, world, {"completed", "failed"}) == "completed"
    finally:
        worker.stop()


def check_delivery(settings: Settings, world: World, recorder: Recorder) -> None:
    # Every recipient got exactly one message.
    counts = Counter(rcpt for _from, rcpts, _data in recorder.messages for rcpt in rcpts)
    assert len(counts) == RECIPIENTS and set(counts.values()) == {1}
    by_rcpt = {rcpts[0]: data for _from, rcpts, data in recorder.messages}
    for index in (0, 1, 499, RECIPIENTS - 1):
        address = f"persona{index:05d}@example.pe"
        data = by_rcpt[address]
        # DKIM verifies against the domain's published key, for the exact bytes received.
        assert dkim_verifies(settings, data), address
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert message["Subject"] == f"Aviso para Nombre{index} ñandú"
        assert message["To"].addresses[0].addr_spec == address
        assert f"@{DOMAIN}" in message["From"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        assert f"Hola Nombre{index} de Empresa {index} S.A.C." in html
        assert f"C{index:05d}" in text
        # Links go through the click redirect, which leads to the personalised URL.
        targets = {
            read_click_token(settings.secret_key, token).url
            for token in re.findall(r"/t/c/([A-Za-z0-9_.-]+)", html)
        }
        assert f"https://www.example.pe/portal?c=C{index:05d}" in targets
        assert "/t/o/" in html  # the open pixel
        assert 'style="' in html and "@media" in html  # inlined once, media query kept
    # The ledger says 1,000 sent, with the reply and the Message-ID of each.
    with session_scope(settings) as session:
        campaign = get_campaign(session, world.account_id, world.campaign_id)
        counts_by_state = campaign_counts(session, campaign)
        assert counts_by_state["total"] == RECIPIENTS
        assert counts_by_state["sent"] == RECIPIENTS
        assert campaign.completed_at is not None
        missing = session.execute(
            select(func.count()).where(
                Message.campaign_id == world.campaign_id,
                (Message.reply_code != 250) | Message.header_message_id.is_(None),  # type: ignore[union-attr]
            )
        ).scalar_one()
        assert missing == 0
        sent_events = session.execute(
            select(func.count()).where(Event.campaign_id == world.campaign_id, Event.kind == "sent")
        ).scalar_one()
        assert sent_events == RECIPIENTS


def test_thousand_recipients_sqlite_and_postgres(
    settings: Settings,
    relay: tuple[int, Recorder],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    configure: object,
) -> None:
    port, recorder = relay
    settings = configure(settings.database_url, MAILER_RELAY__PORT=str(port))  # type: ignore[operator]
    world = build_world(settings, tmp_path, RECIPIENTS)
    run_campaign(settings, world)
    check_delivery(settings, world, recorder)


@pytest.mark.parametrize(
    ("server", "port", "url", "broker_class"),
    [
        ("Redis", 6379, REDIS_URL, "RedisBroker"),
        ("RabbitMQ", 5672, RABBITMQ_URL, "RabbitmqBroker"),
    ],
)
def test_thousand_recipients_on_a_shared_broker(
    relay: tuple[int, Recorder],
    tmp_path: Path,
    configure: object,
    server: str,
    port: int,
    url: str,
    broker_class: str,
) -> None:
    require_server(server, "127.0.0.1", port)
    relay_port, recorder = relay
    settings = configure(None, MAILER_RELAY__PORT=str(relay_port), MAILER_BROKER_URL=url)  # type: ignore[operator]
    broker = dramatiq.get_broker()
    assert type(broker).__name__ == broker_class
    broker.flush_all()  # nothing left over from another run
    world = build_world(settings, tmp_path, RECIPIENTS)
    try:
        run_campaign(settings, world)
    finally:
        broker.flush_all()
        broker.close()
    check_delivery(settings, world, recorder)


def test_a_batch_run_twice_sends_once(
    relay: tuple[int, Recorder], tmp_path: Path, configure: object
) -> None:
    port, recorder = relay
    settings = configure(None, MAILER_RELAY__PORT=str(port))  # type: ignore[operator]
    world = build_world(settings, tmp_path, 30)
    from mailer.campaigns.service import start_campaign
    from mailer.messages.service import pending_ids

    with session_scope(settings) as session:
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, world.campaign_id)
    first = pipeline.send_batch(world.campaign_id, ids)
    again = pipeline.send_batch(world.campaign_id, ids)  # a redelivered queue message
    assert len(first.by_state[MessageState.SENT]) == 30
    assert again.claimed == 0
    assert len(recorder.messages) == 30
    with session_scope(settings) as session:
        assert get_campaign(session, world.account_id, world.campaign_id).state == "completed"


def test_rejections_and_deferrals_are_recorded_not_raised(
    relay: tuple[int, Recorder], tmp_path: Path, configure: object
) -> None:
    port, recorder = relay
    settings = configure(None, MAILER_RELAY__PORT=str(port))  # type: ignore[operator]
    world = build_world(settings, tmp_path, 5)
    from mailer.audience.service import add_contact
    from mailer.campaigns.service import start_campaign
    from mailer.messages.service import pending_ids

    with session_scope(settings) as session:
        add_contact(session, world.account_id, "reject-nadie@example.pe", list_id=world.list_id)
        add_contact(session, world.account_id, "defer-lleno@example.pe", list_id=world.list_id)
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, world.campaign_id)
    outcome = pipeline.send_batch(world.campaign_id, ids)
    assert len(outcome.by_state[MessageState.SENT]) == 5
    assert len(outcome.by_state[MessageState.FAILED]) == 1
    assert len(outcome.by_state[MessageState.DEFERRED]) == 1
    assert outcome.retry_at is not None
    with session_scope(settings) as session:
        rows = {
            m.to_address: m
            for m in session.execute(
                select(Message).where(Message.campaign_id == world.campaign_id)
            ).scalars()
        }
        rejected, deferred = rows["reject-nadie@example.pe"], rows["defer-lleno@example.pe"]
        assert (rejected.state, rejected.reply_code) == ("failed", 550)
        assert (deferred.state, deferred.reply_code) == ("deferred", 450)
        assert deferred.next_attempt_at is not None
        assert get_campaign(session, world.account_id, world.campaign_id).state == "sending"
    # Not due yet: running the batch again sends nothing.
    assert pipeline.send_batch(world.campaign_id, ids).claimed == 0
    assert len(recorder.messages) == 5
