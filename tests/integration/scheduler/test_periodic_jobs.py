"""Scheduled campaigns start when due; rows of a dead worker are offered again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from mailer.campaigns.service import get_campaign, schedule_campaign, start_campaign
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import ValidationFailed
from mailer.messages.models import Message, MessageState
from mailer.messages.service import claim_batch, count_by_state, pending_ids
from mailer.scheduler.tasks import recover_stalled_sends, start_due_campaigns
from mailer.storage.db import session_scope
from mailer.workers import configure_broker, start_worker
from tests.helpers import build_world, start_recording_relay, wait_for_state


def test_scheduled_campaign_starts_when_due(
    sqlite_settings: Settings, tmp_path: Path, configure: object
) -> None:
    relay, recorder = start_recording_relay()
    try:
        settings = configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
        world = build_world(settings, tmp_path, 12)
        with session_scope() as session, pytest.raises(ValidationFailed, match="past"):
            schedule_campaign(
                session, world.account_id, world.campaign_id, utcnow() - timedelta(minutes=1)
            )
        with session_scope() as session:
            schedule_campaign(
                session, world.account_id, world.campaign_id, utcnow() + timedelta(hours=1)
            )
        start_due_campaigns()
        with session_scope() as session:
            assert get_campaign(session, world.account_id, world.campaign_id).state == "scheduled"
            get_campaign(session, world.account_id, world.campaign_id).scheduled_at = (
                utcnow() - timedelta(seconds=1)
            )
        worker = start_worker(configure_broker(settings), 2)
        try:
            start_due_campaigns()
            assert wait_for_state(settings, world, {"completed"}, timeout=30) == "completed"
        finally:
            worker.stop()
    finally:
        relay.stop()
    assert len(recorder.messages) == 12


def test_rows_claimed_by_a_dead_worker_are_offered_again(
    sqlite_settings: Settings, tmp_path: Path, configure: object
) -> None:
    relay, recorder = start_recording_relay()
    try:
        settings = configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
        world = build_world(settings, tmp_path, 8)
        with session_scope() as session:
            start_campaign(session, world.account_id, world.campaign_id)
        with session_scope() as session:
            ids = pending_ids(session, world.campaign_id)
            claimed = claim_batch(session, ids)  # ... and the worker dies here
        assert len(claimed.rows) == 8
        recover_stalled_sends()  # within the lease: nothing happens
        with session_scope() as session:
            assert count_by_state(session, world.campaign_id) == {"sending": 8}
            session.execute(update(Message).values(claimed_at=utcnow() - timedelta(hours=2)))
        worker = start_worker(configure_broker(settings), 2)
        try:
            recover_stalled_sends()
            assert wait_for_state(settings, world, {"completed"}, timeout=30) == "completed"
        finally:
            worker.stop()
        with session_scope() as session:
            assert count_by_state(session, world.campaign_id) == {MessageState.SENT.value: 8}
    finally:
        relay.stop()
    assert len(recorder.messages) == 8


def test_a_stalled_campaign_is_enqueued_again(
    sqlite_settings: Settings, tmp_path: Path, configure: object
) -> None:
    """The queue message was lost (broker restart, crash between commit and enqueue)."""
    relay, recorder = start_recording_relay()
    try:
        settings = configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
        world = build_world(settings, tmp_path, 6)
        with session_scope() as session:
            start_campaign(session, world.account_id, world.campaign_id)  # never enqueued
        worker = start_worker(configure_broker(settings), 2)
        try:
            recover_stalled_sends()  # recent activity: not stalled yet
            with session_scope() as session:
                assert count_by_state(session, world.campaign_id) == {"queued": 6}
                session.execute(update(Message).values(updated_at=utcnow() - timedelta(hours=1)))
            recover_stalled_sends()
            assert wait_for_state(settings, world, {"completed"}, timeout=30) == "completed"
        finally:
            worker.stop()
    finally:
        relay.stop()
    assert len(recorder.messages) == 6
