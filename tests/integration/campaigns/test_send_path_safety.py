"""The send path under the failures that lose or double messages elsewhere."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
from sqlalchemy import select, update

from mailer.audience.service import add_contact
from mailer.campaigns import pipeline, tasks
from mailer.campaigns.service import get_campaign, start_campaign
from mailer.content.store import update_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.messages.models import Message
from mailer.messages.service import (
    claim_batch,
    count_by_state,
    pending_ids,
    record_results,
    release_expired_claims,
)
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, World, build_world, start_recording_relay


@pytest.fixture
def relay_settings(sqlite_settings: Settings, configure: object):  # type: ignore[no-untyped-def]
    relay, recorder = start_recording_relay()
    settings = configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
    yield settings, recorder
    relay.stop()


def started(settings: Settings, tmp_path: Path, recipients: int) -> tuple[World, list[int]]:
    world = build_world(settings, tmp_path, recipients)
    with session_scope() as session:
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope() as session:
        return world, pending_ids(session, world.campaign_id)


def test_every_deferred_row_of_a_batch_comes_back(relay_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, recorder = relay_settings
    world = build_world(settings, tmp_path, 2)
    with session_scope() as session:
        for name in ("defer-a", "defer-b", "defer-c"):
            add_contact(session, world.account_id, f"{name}@example.pe", list_id=world.list_id)
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope() as session:
        ids = pending_ids(session, world.campaign_id)
    tasks.send_batch(world.campaign_id, ids)
    broker = dramatiq.get_broker()
    delayed = [m for m in broker.queues["delivery.DQ"].queue]  # type: ignore[attr-defined]
    retry = [dramatiq.Message.decode(m) for m in delayed]
    assert len(retry) == 1 and len(retry[0].args[1]) == 3  # all three, not only the first
    # When the retry runs before the later rows are due, they are queued again, not lost.
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.to_address == "defer-a@example.pe")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    broker.queues["delivery.DQ"].queue.clear()  # type: ignore[attr-defined]
    tasks.send_batch(world.campaign_id, list(retry[0].args[1]))
    again = [dramatiq.Message.decode(m) for m in broker.queues["delivery.DQ"].queue]  # type: ignore[attr-defined]
    assert len(again) == 1 and len(again[0].args[1]) == 3
    assert len(recorder.messages) == 2


def test_a_late_outcome_never_overwrites_a_newer_one(relay_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _recorder = relay_settings
    world, ids = started(settings, tmp_path, 1)
    with session_scope() as session:
        slow = claim_batch(session, ids)  # worker A claims, then hangs past the lease
        session.execute(update(Message).values(claimed_at=utcnow() - timedelta(hours=2)))
    with session_scope() as session:
        release_expired_claims(session, timedelta(hours=1), max_attempts=5)
    with session_scope() as session:
        fast = claim_batch(session, ids)  # worker B takes over and sends
        record_results(
            session, fast, [DeliveryResult(ids[0], DeliveryStatus.ACCEPTED, 250)], max_attempts=5
        )
    with session_scope() as session:
        late = record_results(
            session,
            slow,
            [DeliveryResult(ids[0], DeliveryStatus.DEFERRED, 451, "late")],
            max_attempts=5,
        )
        assert late == {}
    with session_scope() as session:
        assert count_by_state(session, world.campaign_id) == {"sent": 1}


def test_a_row_that_kills_its_worker_fails_after_max_attempts(
    relay_settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings, _recorder = relay_settings
    _world, ids = started(settings, tmp_path, 1)
    for _attempt in range(settings.max_attempts):
        with session_scope() as session:
            assert len(claim_batch(session, ids).rows) == 1
            session.execute(update(Message).values(claimed_at=utcnow() - timedelta(hours=2)))
        with session_scope() as session:
            release_expired_claims(session, timedelta(hours=1), max_attempts=settings.max_attempts)
    with session_scope() as session:
        row = session.execute(select(Message)).scalar_one()
        assert row.state == "failed" and "gave up" in row.reply_text


def test_a_template_that_breaks_at_render_fails_its_rows(relay_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, recorder = relay_settings
    world = build_world(settings, tmp_path, 3)
    with session_scope() as session:
        update_template(
            session,
            world.account_id,
            world.template_id,
            subject="Hola",
            html="{% macro f() %}{{ f() }}{% endmacro %}<p>{{ f() }}</p>",
        )
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope() as session:
        ids = pending_ids(session, world.campaign_id)
    pipeline.send_batch(world.campaign_id, ids)
    with session_scope() as session:
        assert count_by_state(session, world.campaign_id) == {"failed": 3}
        assert get_campaign(session, world.account_id, world.campaign_id).state == "completed"
    assert recorder.messages == []


def test_a_campaign_that_cannot_be_compiled_fails_visibly(relay_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, recorder = relay_settings
    world, ids = started(settings, tmp_path, 2)
    shutil.rmtree(settings.sending_domains_dir / DOMAIN)
    pipeline._compiled.clear()
    pipeline.send_batch(world.campaign_id, ids)
    with session_scope() as session:
        assert get_campaign(session, world.account_id, world.campaign_id).state == "failed"
        assert count_by_state(session, world.campaign_id) == {"queued": 2}
    assert recorder.messages == []


def test_editing_the_template_mid_send_does_not_change_the_campaign(
    relay_settings,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings, recorder = relay_settings
    world, ids = started(settings, tmp_path, 4)
    pipeline.send_batch(world.campaign_id, ids[:2])
    with session_scope() as session:
        update_template(
            session,
            world.account_id,
            world.template_id,
            subject="Otro asunto",
            html="<p>Otro contenido</p>",
        )
    pipeline.send_batch(world.campaign_id, ids[2:])
    bodies = [data for _f, _r, data in recorder.messages]
    assert len(bodies) == 4
    assert not any(b"Otro contenido" in body for body in bodies)
