"""The delivery engine through the real pipeline and a real SMTP server (aiosmtpd):
identities that come back (VERP, Message-ID), bounces at once with their policy, retries
and expiry, held messages, daily caps, the reputation guard, resends, progress, exactly one
start of a scheduled campaign, and the acceptance journal of a worker killed mid-batch."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mailer.audience.models import Contact
from mailer.audience.service import add_contact
from mailer.audience.suppression import is_suppressed
from mailer.campaigns import pipeline
from mailer.campaigns.service import (
    campaign_progress,
    get_campaign,
    pause_campaign,
    resend_failed,
    schedule_campaign,
    start_campaign,
)
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import Conflict, ValidationFailed
from mailer.delivery.verp import header_message_id, parse_return_path
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message
from mailer.messages.service import count_by_state, pending_ids
from mailer.scheduler.tasks import start_due_campaigns
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, Recorder, World, build_world, start_recording_relay


@pytest.fixture
def relay() -> Iterator[tuple[int, Recorder]]:
    capture, recorder = start_recording_relay()
    yield capture.port, recorder
    capture.stop()


@pytest.fixture
def engine(relay: tuple[int, Recorder], configure: object) -> tuple[Settings, Recorder]:
    port, recorder = relay
    settings = configure(None, MAILER_RELAY__PORT=str(port))  # type: ignore[operator]
    return settings, recorder


def start(settings: Settings, world: World, *extra: str) -> list[int]:
    with session_scope(settings) as session:
        for address in extra:
            add_contact(session, world.account_id, address, list_id=world.list_id)
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        return pending_ids(session, world.campaign_id)


def rows(settings: Settings, world: World) -> dict[str, Message]:
    with session_scope(settings) as session:
        found = session.execute(
            select(Message).where(Message.campaign_id == world.campaign_id)
        ).scalars()
        return {m.to_address: m for m in found}


def test_messages_carry_verp_a_stable_message_id_and_unsubscribe_headers(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, recorder = engine
    world = build_world(settings, tmp_path, 2)
    ids = start(settings, world)
    pipeline.send_batch(world.campaign_id, ids)
    ledger = rows(settings, world)
    for mail_from, rcpts, data in recorder.messages:
        row = ledger[rcpts[0]]
        assert parse_return_path(settings.secret_key, mail_from) == row.id
        assert parse_return_path("another-install", mail_from) is None  # signed
        message = email.message_from_bytes(data, policy=email.policy.default)
        expected = header_message_id(settings.secret_key, row.id, DOMAIN)
        assert message["Message-ID"] == f"<{expected}>" == f"<{row.header_message_id}>"
        unsubscribe = message["List-Unsubscribe"]
        assert "/u/" in unsubscribe and f"mailto:unsubscribe+{row.id}-" in unsubscribe
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Feedback-ID"] == f"{world.campaign_id}:{world.account_id}:campaign:{DOMAIN}"
        signed = "".join(str(message["DKIM-Signature"]).split()).lower()
        assert ":list-unsubscribe:" in signed and ":feedback-id:" in signed


def test_a_5xx_is_a_bounce_at_once_and_the_policy_applies(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, _recorder = engine
    world = build_world(settings, tmp_path, 1)
    ids = start(settings, world, "reject-nadie@example.pe", "full-lleno@example.pe")
    outcome = pipeline.send_batch(world.campaign_id, ids)
    assert outcome.bounced == 2
    with session_scope(settings) as session:
        events = {
            e.data["text"].split(":")[0] + ":" + str(e.data["hard"]): e
            for e in session.execute(select(Event).where(Event.kind == EventKind.BOUNCED)).scalars()
        }
        assert set(events) == {"RCPT:True", "RCPT:False"}
        hard = events["RCPT:True"]
        assert (hard.data["reason"], hard.data["status"]) == ("userunknown", "5.1.1")
        assert events["RCPT:False"].data["reason"] == "mailboxfull"
        assert all(e.contact_id is not None for e in events.values())
        contacts = {c.email: c for c in session.execute(select(Contact)).scalars()}
        # Hard: bounced and suppressed at once.  Soft: only after three within 30 days.
        assert contacts["reject-nadie@example.pe"].email_status == "bounced"
        assert is_suppressed(session, world.account_id, "email", "reject-nadie@example.pe")
        assert contacts["full-lleno@example.pe"].email_status == "active"
    assert count_by_state_of(settings, world) == {"sent": 1, "failed": 2}


def count_by_state_of(settings: Settings, world: World) -> dict[str, int]:
    with session_scope(settings) as session:
        return count_by_state(session, world.campaign_id)


def test_deferrals_back_off_exponentially_and_expire(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, _recorder = engine
    world = build_world(settings, tmp_path, 0)
    ids = start(settings, world, "defer-a@example.pe", "defer-b@example.pe")
    before = utcnow()
    pipeline.send_batch(world.campaign_id, ids)
    first = rows(settings, world)["defer-a@example.pe"]
    assert first.state == "deferred" and first.attempts == 1
    assert first.next_attempt_at is not None
    wait = (first.next_attempt_at - before).total_seconds()
    assert 299 <= wait <= 310  # retry_base_seconds
    # Second attempt doubles; a row queued more than 24 h ago fails instead.
    with session_scope(settings) as session:
        session.execute(update(Message).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        session.execute(
            update(Message)
            .where(Message.to_address == "defer-b@example.pe")
            .values(queued_at=utcnow() - timedelta(hours=25))
        )
    before = utcnow()
    pipeline.send_batch(world.campaign_id, ids)
    after = rows(settings, world)
    assert after["defer-a@example.pe"].attempts == 2
    wait = (after["defer-a@example.pe"].next_attempt_at - before).total_seconds()  # type: ignore[operator]
    assert 599 <= wait <= 610
    expired = after["defer-b@example.pe"]
    assert expired.state == "failed" and expired.reply_text.startswith("expired")


def test_a_destination_that_slows_us_down_holds_without_spending_attempts(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, recorder = engine
    world = build_world(settings, tmp_path, 0)
    ids = start(settings, world, "slow-a@example.pe")
    outcome = pipeline.send_batch(world.campaign_id, ids)
    row = rows(settings, world)["slow-a@example.pe"]
    assert row.state == "deferred" and row.attempts == 0  # held: the attempt given back
    assert outcome.retry_at is not None and row.next_attempt_at is not None
    with session_scope(settings) as session:
        kinds = [e.kind for e in session.execute(select(Event)).scalars()]
        assert EventKind.DEFERRED not in kinds and EventKind.FAILED not in kinds
    assert recorder.messages == []


def test_a_daily_cap_sends_what_it_allows_and_holds_the_rest_until_tomorrow(
    relay: tuple[int, Recorder], configure: object, tmp_path: Path
) -> None:
    port, recorder = relay
    settings = configure(  # type: ignore[operator]
        None,
        MAILER_RELAYS=f'[{{"host": "127.0.0.1", "port": {port}, "name": "nueva-ip", '
        f'"warmup_start": 3, "warmup_growth": 2}}]',
    )
    world = build_world(settings, tmp_path, 5)
    ids = start(settings, world)
    pipeline.send_batch(world.campaign_id, ids)
    assert len(recorder.messages) == 3  # day 0 of the warm-up
    ledger = rows(settings, world)
    held = [m for m in ledger.values() if m.state == "deferred"]
    assert len(held) == 2 and all(m.attempts == 0 for m in held)
    assert all(m.next_attempt_at and m.next_attempt_at > utcnow() for m in held)
    pipeline.send_batch(world.campaign_id, ids)  # still today: nothing more
    assert len(recorder.messages) == 3


def test_the_reputation_guard_pauses_a_campaign_that_bounces_too_much(
    relay: tuple[int, Recorder], configure: object, tmp_path: Path
) -> None:
    port, _recorder = relay
    settings = configure(  # type: ignore[operator]
        None, MAILER_RELAY__PORT=str(port), MAILER_DELIVERY__GUARD_MIN_SAMPLE="10"
    )
    world = build_world(settings, tmp_path, 9)
    ids = start(settings, world, "reject-1@example.pe", "reject-2@example.pe")
    pipeline.send_batch(world.campaign_id, ids)
    with session_scope(settings) as session:
        campaign = get_campaign(session, world.account_id, world.campaign_id)
        assert campaign.state == "paused"
        assert "tasa de rebote 18.2%" in campaign.state_reason
        progress = campaign_progress(session, campaign)
        assert progress["state_reason"] == campaign.state_reason


def test_resend_to_failed_sends_only_the_failed_rows(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, _recorder = engine
    world = build_world(settings, tmp_path, 2)
    ids = start(settings, world, "defer-x@example.pe")
    with session_scope(settings) as session:
        session.execute(update(Message).values(queued_at=utcnow() - timedelta(hours=30)))
    with session_scope(settings) as session, pytest.raises(ValidationFailed):
        resend_failed(session, world.account_id, world.campaign_id)  # still sending
    pipeline.send_batch(world.campaign_id, ids)  # defer-x expires at once: failed
    with session_scope(settings) as session:
        assert get_campaign(session, world.account_id, world.campaign_id).state == "completed"
        child = resend_failed(session, world.account_id, world.campaign_id, created_by="t")
        child_id = child.id
        assert child.parent_id == world.campaign_id
    with session_scope(settings) as session:
        start_campaign(session, world.account_id, child_id)  # type: ignore[arg-type]
    with session_scope(settings) as session:
        again = session.execute(
            select(Message.to_address).where(Message.campaign_id == child_id)
        ).scalars()
        assert list(again) == ["defer-x@example.pe"]


def test_progress_shows_rate_and_time_left(
    engine: tuple[Settings, Recorder], tmp_path: Path
) -> None:
    settings, _recorder = engine
    world = build_world(settings, tmp_path, 30)
    ids = start(settings, world)
    pipeline.send_batch(world.campaign_id, ids[:20])
    with session_scope(settings) as session:
        progress = campaign_progress(
            session, get_campaign(session, world.account_id, world.campaign_id)
        )
    assert (progress["sent"], progress["pending"]) == (20, 10)
    assert progress["rate_per_second"] > 0 and progress["eta_seconds"] is not None
    assert progress["eta_seconds"] == int(10 / (20 / 60))


def test_a_scheduled_campaign_is_started_by_exactly_one_worker(
    settings: Settings, tmp_path: Path
) -> None:
    world = build_world(settings, tmp_path, 50)
    with session_scope(settings) as session:
        schedule_campaign(
            session, world.account_id, world.campaign_id, utcnow() + timedelta(seconds=1)
        )
    time.sleep(1.1)
    outcomes: list[str] = []

    def racer() -> None:
        try:
            with session_scope(settings) as session:
                start_campaign(session, world.account_id, world.campaign_id)
            outcomes.append("started")
        except Conflict:
            outcomes.append("conflict")
        except Exception as exc:  # SQLite may refuse the loser's write instead
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("started") == 1
    with session_scope(settings) as session:
        assert count_by_state(session, world.campaign_id) == {"queued": 50}
    start_due_campaigns()  # later scheduler runs do nothing: it is no longer scheduled
    with session_scope(settings) as session:
        assert count_by_state(session, world.campaign_id) == {"queued": 50}


def test_pause_stops_the_next_batch(engine: tuple[Settings, Recorder], tmp_path: Path) -> None:
    settings, recorder = engine
    world = build_world(settings, tmp_path, 4)
    ids = start(settings, world)
    pipeline.send_batch(world.campaign_id, ids[:2])
    with session_scope(settings) as session:
        pause_campaign(session, world.account_id, world.campaign_id)
    assert pipeline.send_batch(world.campaign_id, ids[2:]).claimed == 0
    assert len(recorder.messages) == 2


SLOW_CHILD = textwrap.dedent(
    """
    import sys
    from mailer.campaigns import pipeline
    ids = [int(x) for x in sys.argv[2].split(",")]
    pipeline.send_batch(int(sys.argv[1]), ids)
    """
)


def test_a_worker_killed_mid_batch_loses_nothing_and_resends_at_most_one_per_connection(
    relay: tuple[int, Recorder], configure: object, tmp_path: Path
) -> None:
    port, recorder = relay
    settings = configure(  # type: ignore[operator]
        None, MAILER_RELAY__PORT=str(port), MAILER_RELAY__MAX_CONNECTIONS="2"
    )
    world = build_world(settings, tmp_path, 400)
    ids = start(settings, world)
    env = {k: v for k, v in os.environ.items()}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHILD, str(world.campaign_id), ",".join(map(str, ids))],
        env=env,
    )
    deadline = time.monotonic() + 60
    while len(recorder.messages) < 100 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    arrived_at_kill = len(recorder.messages)
    assert 100 <= arrived_at_kill < 400, "the kill must land mid-batch"
    with session_scope(settings) as session:
        assert count_by_state(session, world.campaign_id).get("sending", 0) > 0
    touched = pipeline.recover_journals(settings, requeue=False)
    assert touched == [world.campaign_id]
    with session_scope(settings) as session:
        states = count_by_state(session, world.campaign_id)
        assert "sending" not in states
        # Everything the relay acknowledged before the kill is already recorded as sent.
        assert states["sent"] >= arrived_at_kill - 2
    pipeline.send_batch(world.campaign_id, ids)
    received = Counter(rcpts[0] for _f, rcpts, _d in recorder.messages)
    assert len(received) == 400  # nobody lost
    duplicates = {address: n for address, n in received.items() if n > 1}
    assert sum(n - 1 for n in duplicates.values()) <= 2  # at most one per open connection
    ids_by_address: dict[str, set[str]] = {}
    for _f, rcpts, data in recorder.messages:
        message = email.message_from_bytes(data, policy=email.policy.default)
        ids_by_address.setdefault(rcpts[0], set()).add(str(message["Message-ID"]))
    assert all(len(v) == 1 for v in ids_by_address.values())  # a duplicate: same Message-ID
    assert count_by_state_of(settings, world) == {"sent": 400}


@pytest.mark.redis
def test_two_worker_processes_on_postgresql_and_redis_survive_kill_9(
    relay: tuple[int, Recorder], configure: object, postgres_url: str, tmp_path: Path
) -> None:
    """The scale setup: `mailer worker --processes 2` on PostgreSQL + Redis, every worker
    killed with SIGKILL mid-campaign, then started again."""
    import redis as redis_client

    from mailer.campaigns.service import send_now
    from tests.conftest import REDIS_URL, require_server

    require_server("Redis", "127.0.0.1", 6379)
    port, recorder = relay
    redis_client.Redis.from_url(REDIS_URL).flushdb()
    settings = configure(  # type: ignore[operator]
        postgres_url,
        MAILER_RELAY__PORT=str(port),
        MAILER_RELAY__MAX_CONNECTIONS="2",
        MAILER_BROKER_URL=REDIS_URL,
        MAILER_BATCH_SIZE="50",
    )
    world = build_world(settings, tmp_path, 600)
    env = dict(os.environ)
    command = [str(Path(sys.executable).parent / "mailer"), "worker", "--processes", "2"]

    def start_workers() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, start_new_session=True)

    workers = start_workers()
    try:
        send_now(world.account_id, world.campaign_id)
        deadline = time.monotonic() + 120
        while len(recorder.messages) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        children = Path(f"/proc/{workers.pid}/task/{workers.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        workers.wait(timeout=30)
        assert len(recorder.messages) < 600, "the kill must land mid-campaign"
        workers = start_workers()  # applies the dead workers' journals, then goes on
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with session_scope(settings) as session:
                if get_campaign(session, world.account_id, world.campaign_id).state != "sending":
                    break
            time.sleep(0.25)
    finally:
        workers.send_signal(signal.SIGTERM)
        try:
            workers.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(workers.pid, signal.SIGKILL)
    received = Counter(rcpts[0] for _f, rcpts, _d in recorder.messages)
    assert len(received) == 600  # nobody lost
    assert sum(n - 1 for n in received.values()) <= 2 * 2  # one per open connection at most
    assert count_by_state_of(settings, world) == {"sent": 600}
