"""The e-mail allowance of a campaign through the real send path: reserved when it starts
(not enough refuses the start), charged for accepted messages, released for failed,
withheld and cancelled ones; the ledger always agrees with the balance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.accounts import credits
from mailer.audience.service import add_contact
from mailer.campaigns import pipeline
from mailer.campaigns.service import cancel_campaign, get_campaign, start_campaign
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.messages.service import pending_ids
from mailer.storage.db import session_scope
from tests.helpers import Recorder, World, build_world, start_recording_relay


@pytest.fixture
def world(configure: object, tmp_path: Path) -> Iterator[tuple[Settings, World, Recorder]]:
    capture, recorder = start_recording_relay()
    try:
        settings: Settings = configure(None, MAILER_RELAY__PORT=str(capture.port))  # type: ignore[operator]
        built = build_world(settings, tmp_path, 3)
        with session_scope(settings) as session:
            add_contact(session, built.account_id, "reject-1@example.pe", list_id=built.list_id)
        yield settings, built, recorder
    finally:
        capture.stop()


def balance(settings: Settings, account_id: int) -> tuple[int, int]:
    with session_scope(settings) as session:
        current = credits.balance(session, account_id, "email")
        assert current is not None
        assert credits.verify(session, account_id, "email") == (current.available, current.held)
        return current.available, current.held


def test_accepted_messages_are_charged_and_failed_ones_released(
    world: tuple[Settings, World, Recorder],
) -> None:
    settings, built, _ = world
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "email", 10)
        start_campaign(session, built.account_id, built.campaign_id)
    assert balance(settings, built.account_id) == (6, 4)
    with session_scope(settings) as session:
        ids = pending_ids(session, built.campaign_id)
    pipeline.send_batch(built.campaign_id, ids)
    assert balance(settings, built.account_id) == (7, 0)  # 3 charged, the bounce released


def test_not_enough_allowance_refuses_the_start(world: tuple[Settings, World, Recorder]) -> None:
    settings, built, _recorder = world
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "email", 3)
    with (
        pytest.raises(credits.InsufficientCredit, match="needs 4 and the account has 3"),
        session_scope(settings) as session,
    ):
        start_campaign(session, built.account_id, built.campaign_id)
    with session_scope(settings) as session:
        assert get_campaign(session, built.account_id, built.campaign_id).state == "draft"
        assert session.execute(select(Message)).first() is None
    assert balance(settings, built.account_id) == (3, 0)


def test_cancelling_releases_what_was_not_sent(world: tuple[Settings, World, Recorder]) -> None:
    settings, built, _ = world
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "email", 10)
        start_campaign(session, built.account_id, built.campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, built.campaign_id)
    pipeline.send_batch(built.campaign_id, ids[:2])
    with session_scope(settings) as session:
        cancel_campaign(session, built.account_id, built.campaign_id)
    assert balance(settings, built.account_id) == (8, 0)  # 2 charged, 2 released
