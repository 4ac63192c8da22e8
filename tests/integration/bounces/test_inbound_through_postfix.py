"""The feedback loop with a real MTA: a campaign goes through a Postfix of the suite's own,
Postfix accepts every message, then fails to deliver some (an ``smtp-sink`` refusing RCPT
with 550, another answering 450 until the message expires), writes its own DSNs to the VERP
return paths and delivers them to our :class:`mailer.bounces.InboundReceiver`, which must
turn them into bounced ledger rows and the policy's suppressions.  A recipient's mailto
unsubscribe comes in through the same Postfix.  Needs Postfix and root (skipped locally
without them, failed under CI=true)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.audience.models import ChannelStatus
from mailer.audience.service import add_contact, find_contact
from mailer.audience.suppression import is_suppressed
from mailer.bounces import InboundReceiver
from mailer.campaigns import pipeline
from mailer.campaigns.service import start_campaign
from mailer.core.config import Settings
from mailer.delivery.verp import verp_token
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message, MessageState
from mailer.messages.service import pending_ids
from mailer.storage.db import session_scope
from tests.helpers import build_world
from tests.integration.delivery.conftest import require_postfix
from tests.mta import PostfixServer, SmtpSink, free_port

MTA_DOMAIN = "correo.example.pe"  # contact cleaning refuses the reserved .test
BOUNCE_DOMAIN = "rebotes.example.pe"


@dataclass(frozen=True)
class Loop:
    settings: Settings
    mta: PostfixServer
    receiver: InboundReceiver


@pytest.fixture
def loop(configure: object) -> Iterator[Loop]:
    """Postfix relaying ``bounce-*`` to a sink that refuses (550) and ``delay-*`` to one that
    defers (450, bounced after one attempt); everything for BOUNCE_DOMAIN goes to our
    receiver.  DSNs are retried for a while (as in production) rather than dropped at once,
    so a DSN that overtakes the engine's own record of the send (answered 451) comes back."""
    require_postfix()
    inbound_port = free_port()
    with (
        SmtpSink(reject=("RCPT",)) as rejecting,
        SmtpSink(defer=("RCPT",)) as deferring,
        PostfixServer(
            sink_port=rejecting.port,
            defer_sink_port=deferring.port,
            inbound_port=inbound_port,
            domain=MTA_DOMAIN,
            bounce_domain=BOUNCE_DOMAIN,
            extra_main_cf={"bounce_queue_lifetime": "5m"},
        ) as mta,
    ):
        settings: Settings = configure(  # type: ignore[operator]
            None,
            MAILER_RELAY__PORT=str(mta.port),
            MAILER_DELIVERY__BOUNCE_DOMAIN=BOUNCE_DOMAIN,
            MAILER_INBOUND__DOMAINS=BOUNCE_DOMAIN,
            MAILER_DNS__TIMEOUT_SECONDS="0.05",  # cleaning asks a closed port: fail fast
        )
        with InboundReceiver(settings, "127.0.0.1", inbound_port) as receiver:
            yield Loop(settings, mta, receiver)


def wait_for_rows(
    settings: Settings, ids: dict[str, int], state: str, mta: PostfixServer, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings) as session:
            states = {
                address: session.get(Message, row_id).state for address, row_id in ids.items()
            }
        if all(value == state for value in states.values()):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"rows {states} not {state} after {timeout} s:\n{mta.log}")
        time.sleep(0.2)


def test_postfix_dsns_reach_the_receiver_and_bounce_the_right_recipients(
    loop: Loop, tmp_path: Path
) -> None:
    settings, mta = loop.settings, loop.mta
    world = build_world(settings, tmp_path, 0)
    tag = f"c{world.campaign_id}x{int(time.time() * 1000) % 100000}"
    people = [f"{tag}p{i}@{MTA_DOMAIN}" for i in range(3)]
    rejected = f"bounce-{tag}@{MTA_DOMAIN}"  # accepted, then 550 at the next hop: hard
    expired = f"delay-{tag}@{MTA_DOMAIN}"  # accepted, then 450 until it expires: soft
    with session_scope(settings) as session:
        for address in [*people, rejected, expired]:
            add_contact(session, world.account_id, address, list_id=world.list_id)
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, world.campaign_id)
    outcome = pipeline.send_batch(world.campaign_id, ids)
    assert len(outcome.by_state[MessageState.SENT]) == len(people) + 2  # Postfix took all

    with session_scope(settings) as session:
        rows = session.execute(select(Message).where(Message.campaign_id == world.campaign_id))
        row_of: dict[str, int] = {m.to_address: m.id for m in rows.scalars()}
    wait_for_rows(settings, {a: row_of[a] for a in (rejected, expired)}, "bounced", mta)

    with session_scope(settings) as session:
        bounces = {
            e.data["address"]: e
            for e in session.execute(select(Event).where(Event.kind == EventKind.BOUNCED))
            .scalars()
            .all()
        }
        hard = bounces[rejected]
        assert (hard.data["hard"], hard.data["reason"], hard.data["status"]) == (
            True,
            "userunknown",
            "5.1.1",
        )
        assert (hard.data["source"], hard.data["matched_by"], hard.data["code"]) == (
            "dsn",
            "verp",
            550,
        )
        assert hard.message_id == row_of[rejected] and hard.campaign_id == world.campaign_id
        soft = bounces[expired]
        assert soft.data["hard"] is False and soft.data["status"].startswith("4.")
        assert set(bounces) == {rejected, expired}  # one event each, nobody else

        def status(address: str) -> tuple[str, bool]:
            contact = find_contact(session, world.account_id, address)
            assert contact is not None
            suppressed = is_suppressed(session, world.account_id, "email", address)
            return contact.email_status, suppressed

        assert status(rejected) == (ChannelStatus.BOUNCED, True)
        assert status(expired) == (ChannelStatus.ACTIVE, False)  # the first soft bounce
        for address in people:
            assert status(address) == (ChannelStatus.ACTIVE, False)
            assert session.get(Message, row_of[address]).state == MessageState.SENT

    # A recipient's mailto unsubscribe, sent through the same MTA to our receiver.
    person = people[0]
    mailto = f"unsubscribe+{verp_token(settings.secret_key, row_of[person])}@{BOUNCE_DOMAIN}"
    with smtplib.SMTP(mta.host, mta.port, timeout=30) as client:
        client.sendmail(
            person,
            [mailto],
            f"From: {person}\r\nTo: {mailto}\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n",
        )
    deadline = time.monotonic() + 30
    while True:
        with session_scope(settings) as session:
            contact = find_contact(session, world.account_id, person)
            assert contact is not None
            if contact.email_status == ChannelStatus.UNSUBSCRIBED:
                assert is_suppressed(session, world.account_id, "email", person)
                break
        assert time.monotonic() < deadline, mta.log
        time.sleep(0.2)

    # Postfix handed everything over: nothing is waiting for a retry.
    deadline = time.monotonic() + 10
    while "Mail queue is empty" not in mta.queue():
        assert time.monotonic() < deadline, mta.queue()
        time.sleep(0.2)
