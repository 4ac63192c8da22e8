"""The inbound side of the feedback loop, against ledger rows made by the real send path.

Real report messages from the bounce corpus (``tests/fixtures/bounces/``), adapted so that
they speak about a message the engine sent (its recipient, its VERP return path, its
Message-ID), go through :func:`mailer.bounces.handle_inbound`: hard bounces suppress at once,
soft ones on the third within the window, delay notices never, complaints do; the mailto of
``List-Unsubscribe`` unsubscribes; a replay records nothing twice and a forged token nothing
at all.  Then the SMTP receiver itself: what it refuses, and that it answers 250 only once
the outcome is committed (451 when it cannot be)."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.audience.models import ChannelStatus
from mailer.audience.service import add_contact, find_contact
from mailer.audience.suppression import is_suppressed
from mailer.bounces import InboundOutcome, InboundReceiver, handle_inbound, parse_message
from mailer.bounces import inbound as inbound_module
from mailer.bounces.service import Route
from mailer.campaigns import pipeline
from mailer.campaigns.service import (
    create_campaign,
    get_campaign,
    start_campaign,
    sweep_sending_campaigns,
)
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.delivery.verp import header_message_id, return_path, verp_token
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message, MessageState
from mailer.messages.service import claim_batch, pending_ids
from mailer.storage.db import session_scope
from mailer.tracking.service import unsubscribe, unsubscribe_token
from tests.conftest import REPO
from tests.helpers import DOMAIN, Recorder, World, build_world, start_recording_relay
from tests.mta import free_port, wait_for_banner

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "bounces" / "samples"
BOUNCE_DOMAIN = "rebotes.example.pe"
FBL_ADDRESS = f"fbl@{BOUNCE_DOMAIN}"
PERSON = "persona00000@example.pe"  # the one contact build_world imports


@dataclass(frozen=True)
class Sent:
    """A campaign sent through the real pipeline to a recording relay."""

    settings: Settings
    world: World
    recorder: Recorder
    row: Message  # the ledger row of PERSON

    @property
    def verp(self) -> str:
        assert self.row.id is not None
        return return_path(self.settings.secret_key, self.row.id, BOUNCE_DOMAIN)

    @property
    def message_id(self) -> str:
        assert self.row.id is not None
        return header_message_id(self.settings.secret_key, self.row.id, DOMAIN)


def send_campaign(
    settings: Settings, world: World, recorder: Recorder, campaign_id: int, address: str = PERSON
) -> Sent:
    with session_scope(settings) as session:
        start_campaign(session, world.account_id, campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, campaign_id)
    outcome = pipeline.send_batch(campaign_id, ids)
    assert outcome.by_state.get(MessageState.SENT), outcome
    with session_scope(settings) as session:
        row = session.execute(
            select(Message).where(Message.campaign_id == campaign_id, Message.to_address == address)
        ).scalar_one()
    assert row.state == MessageState.SENT
    return Sent(settings, world, recorder, row)


def another_campaign(settings: Settings, world: World, name: str) -> int:
    with session_scope(settings) as session:
        campaign = create_campaign(
            session,
            world.account_id,
            name=name,
            template_id=world.template_id,
            list_id=world.list_id,
            from_email=f"boletin@{DOMAIN}",
            from_name="Entidad Pública",
        )
        assert campaign.id is not None
        return campaign.id


@pytest.fixture(params=["sqlite", "postgresql"])
def sent(request: pytest.FixtureRequest, configure: object, tmp_path: Path) -> Iterator[Sent]:
    """One campaign to one contact, sent on each database backend; its VERP return path at
    BOUNCE_DOMAIN."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    capture, recorder = start_recording_relay()
    try:
        settings: Settings = configure(  # type: ignore[operator]
            url,
            MAILER_RELAY__PORT=str(capture.port),
            MAILER_DELIVERY__BOUNCE_DOMAIN=BOUNCE_DOMAIN,
            MAILER_INBOUND__DOMAINS=BOUNCE_DOMAIN,
            MAILER_INBOUND__FBL_ADDRESS=FBL_ADDRESS,
            # Cleaning at campaign start asks a closed port: fail fast, the verdict is unknown.
            MAILER_DNS__TIMEOUT_SECONDS="0.05",
        )
        world = build_world(settings, tmp_path, 1)
        yield send_campaign(settings, world, recorder, world.campaign_id)
    finally:
        capture.stop()


# --- helpers ----------------------------------------------------------------------------------


def adapt(sample: str, *, recipient: str, sender: str, message_id: str | None = None) -> bytes:
    """A corpus message made to speak about our message: its failed recipient becomes
    *recipient*, the original sender (return path, the report's To) *sender*, and the
    original Message-ID *message_id* (when given).  The result is parsed back to check that
    the adaptation took."""
    data = (SAMPLES / sample).read_bytes()
    original = parse_message(data)
    replacements = {original.recipients[0].address: recipient}
    for address in (original.original_return_path, original.report_to):
        if address:
            replacements[address] = sender
    if message_id is not None and original.original_message_id:
        replacements[original.original_message_id.strip("<>")] = message_id
    for old, new in replacements.items():
        data = re.sub(re.escape(old.encode()), new.encode(), data, flags=re.IGNORECASE)
    adapted = parse_message(data)
    assert adapted.kind == original.kind
    assert adapted.recipients[0].address.lower() == recipient.lower()
    return data


def deliver(
    settings: Settings, rcpt: str, data: bytes, *, mail_from: str = "", days_ago: float = 0
) -> InboundOutcome:
    with session_scope(settings) as session:
        return handle_inbound(
            session,
            settings,
            mail_from,
            [rcpt],
            data,
            now=utcnow() - timedelta(days=days_ago),
        )


def events(settings: Settings, kind: EventKind) -> list[Event]:
    with session_scope(settings) as session:
        return list(session.execute(select(Event).where(Event.kind == kind)).scalars())


def feedback_kinds(settings: Settings) -> set[str]:
    """The kinds of the events recorded after the send (sending's own left out)."""
    with session_scope(settings) as session:
        kinds = set(session.execute(select(Event.kind)).scalars())
    return kinds - {EventKind.SENT, EventKind.CAMPAIGN_STATE}


def row_state(settings: Settings, row_id: int | None) -> str:
    with session_scope(settings) as session:
        row = session.get(Message, row_id)
        assert row is not None
        return row.state


def contact_state(sent: Sent, address: str = PERSON) -> tuple[str, bool]:
    """(e-mail status, on the suppression list) of a contact of the world's account."""
    with session_scope(sent.settings) as session:
        contact = find_contact(session, sent.world.account_id, address)
        assert contact is not None
        suppressed = is_suppressed(session, sent.world.account_id, "email", address)
        return contact.email_status, suppressed


# --- bounces ----------------------------------------------------------------------------------

HARD_SAMPLES = [
    ("lhost-postfix-06.eml", "hostunknown"),
    ("lhost-exim-30.eml", "userunknown"),
    ("lhost-gmail-01.eml", "userunknown"),
    ("lhost-sendmail-01.eml", "userunknown"),
    ("lhost-exchange2007-01.eml", "userunknown"),
]


@pytest.mark.parametrize(("sample", "reason"), HARD_SAMPLES)
def test_a_hard_bounce_to_the_verp_address_bounces_and_suppresses_once(
    sent: Sent, sample: str, reason: str
) -> None:
    dsn = adapt(sample, recipient=PERSON, sender=sent.verp, message_id=sent.message_id)
    outcome = deliver(sent.settings, sent.verp, dsn)
    assert (outcome.route, outcome.kind, outcome.matched_by) == (Route.BOUNCE, "bounce", "verp")
    assert outcome.message_ids == [sent.row.id]
    assert (outcome.recorded, outcome.changed, outcome.retry_later) == (1, 1, False)
    assert row_state(sent.settings, sent.row.id) == MessageState.BOUNCED
    assert contact_state(sent) == (ChannelStatus.BOUNCED, True)
    [bounce] = events(sent.settings, EventKind.BOUNCED)
    assert bounce.message_id == sent.row.id and bounce.contact_id == sent.row.contact_id
    assert bounce.campaign_id == sent.world.campaign_id
    assert bounce.data["hard"] is True and bounce.data["reason"] == reason
    assert bounce.data["source"] == "dsn" and bounce.data["status"].startswith("5.")
    assert bounce.data["text"] and bounce.data["matched_by"] == "verp"

    replay = deliver(sent.settings, sent.verp, dsn)
    assert (replay.recorded, replay.changed, replay.note) == (0, 0, "already bounced")
    assert len(events(sent.settings, EventKind.BOUNCED)) == 1


def test_soft_bounces_suppress_on_the_third_within_the_window(sent: Sent, tmp_path: Path) -> None:
    settings, world = sent.settings, sent.world
    rows = [sent]
    for n in range(3):
        campaign_id = another_campaign(settings, world, f"Aviso {n + 2}")
        rows.append(send_campaign(settings, world, sent.recorder, campaign_id))
    # 45 days ago (outside the 30-day window), 10 days ago, now, now.
    for index, (row, days_ago) in enumerate(zip(rows, (45, 10, 0, 0), strict=True)):
        dsn = adapt("lhost-postfix-63.eml", recipient=PERSON, sender=row.verp)
        outcome = deliver(settings, row.verp, dsn, days_ago=days_ago)
        assert outcome.recorded == 1
        status, suppressed = contact_state(sent)
        if index < 3:  # the third within 30 days is the fourth in all
            assert (status, suppressed) == (ChannelStatus.ACTIVE, False), index
            assert outcome.changed == 0
        else:
            assert (status, suppressed) == (ChannelStatus.BOUNCED, True)
            assert outcome.changed == 1
        assert row_state(settings, row.row.id) == MessageState.BOUNCED
    soft = events(settings, EventKind.BOUNCED)
    assert [e.data["reason"] for e in soft] == ["mailboxfull"] * 4
    assert not any(e.data["hard"] for e in soft)


def test_a_delay_notice_is_recorded_once_and_suppresses_nothing(sent: Sent) -> None:
    notice = adapt("rfc3464-07.eml", recipient=PERSON, sender=sent.verp)
    for attempt in range(2):
        outcome = deliver(sent.settings, sent.verp, notice)
        assert outcome.kind == "delayed" and outcome.message_ids == [sent.row.id]
        assert outcome.recorded == (1 if attempt == 0 else 0)
    [delayed] = events(sent.settings, EventKind.DELAYED)
    assert delayed.data["status"] == "4.4.0" and delayed.message_id == sent.row.id
    assert events(sent.settings, EventKind.BOUNCED) == []
    assert row_state(sent.settings, sent.row.id) == MessageState.SENT
    assert contact_state(sent) == (ChannelStatus.ACTIVE, False)


def test_auto_replies_and_positive_dsns_are_counted_not_recorded(sent: Sent) -> None:
    for sample, kind in (("rfc3834-01.eml", "autoreply"), ("rfc3464-28.eml", "delivered")):
        data = adapt(sample, recipient=PERSON, sender=sent.verp)
        outcome = deliver(sent.settings, sent.verp, data)
        assert (outcome.kind, outcome.recorded, outcome.changed) == (kind, 0, 0)
    assert feedback_kinds(sent.settings) == set()
    assert contact_state(sent) == (ChannelStatus.ACTIVE, False)


# --- complaints -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["return-path", "message-id"])
def test_a_feedback_loop_complaint_complains_and_suppresses_once(sent: Sent, by: str) -> None:
    # arf-14: an Amazon SES message reported through Yahoo's feedback loop.
    sender = sent.verp if by == "return-path" else "someone-else@example.org"
    report = adapt("arf-14.eml", recipient=PERSON, sender=sender, message_id=sent.message_id)
    outcome = deliver(sent.settings, FBL_ADDRESS, report, mail_from="fbl@yahoo.example")
    assert (outcome.route, outcome.kind, outcome.matched_by) == (Route.FEEDBACK, "complaint", by)
    assert (outcome.recorded, outcome.changed) == (1, 1)
    assert contact_state(sent) == (ChannelStatus.COMPLAINED, True)
    [complaint] = events(sent.settings, EventKind.COMPLAINED)
    assert complaint.data["feedback_type"] == "abuse" and complaint.message_id == sent.row.id
    assert row_state(sent.settings, sent.row.id) == MessageState.SENT  # it was delivered

    replay = deliver(sent.settings, FBL_ADDRESS, report, mail_from="fbl@yahoo.example")
    assert (replay.recorded, replay.changed) == (0, 0)
    assert len(events(sent.settings, EventKind.COMPLAINED)) == 1


def test_an_unsubscribe_link_after_a_complaint_keeps_the_complaint(sent: Sent) -> None:
    report = adapt("arf-14.eml", recipient=PERSON, sender=sent.verp, message_id=sent.message_id)
    deliver(sent.settings, FBL_ADDRESS, report, mail_from="fbl@yahoo.example")
    assert sent.row.id is not None
    token = unsubscribe_token(sent.settings.secret_key, sent.row.id)
    with session_scope(sent.settings) as session:
        target = unsubscribe(session, sent.settings.secret_key, token, source="one-click")
    assert target.already
    assert contact_state(sent) == (ChannelStatus.COMPLAINED, True)
    assert events(sent.settings, EventKind.UNSUBSCRIBED) == []


def test_complaints_by_mail_pause_a_sending_campaign_at_the_next_sweep(
    configure: object, tmp_path: Path
) -> None:
    capture, recorder = start_recording_relay()
    try:
        settings: Settings = configure(  # type: ignore[operator]
            None,
            MAILER_RELAY__PORT=str(capture.port),
            MAILER_DELIVERY__BOUNCE_DOMAIN=BOUNCE_DOMAIN,
            MAILER_DELIVERY__GUARD_MIN_SAMPLE="2",
            MAILER_INBOUND__DOMAINS=BOUNCE_DOMAIN,
            MAILER_INBOUND__FBL_ADDRESS=FBL_ADDRESS,
        )
        world = build_world(settings, tmp_path, 6)
        with session_scope(settings) as session:
            start_campaign(session, world.account_id, world.campaign_id)
        with session_scope(settings) as session:
            ids = pending_ids(session, world.campaign_id)
        pipeline.send_batch(world.campaign_id, ids[:3])  # half sent, the rest still queued
        with session_scope(settings) as session:
            row = session.get(Message, ids[0])
            assert row is not None and row.state == MessageState.SENT
        sent = Sent(settings, world, recorder, row)
        report = adapt(
            "arf-14.eml", recipient=row.to_address, sender=sent.verp, message_id=sent.message_id
        )
        outcome = deliver(settings, FBL_ADDRESS, report, mail_from="fbl@yahoo.example")
        assert outcome.kind == "complaint" and outcome.changed == 1
        sweep_sending_campaigns(timedelta(hours=1))
        with session_scope(settings) as session:
            campaign = get_campaign(session, world.account_id, world.campaign_id)
            assert campaign.state == "paused"
            assert "tasa de quejas 33.33%" in campaign.state_reason
    finally:
        capture.stop()


# --- mailto unsubscribe -----------------------------------------------------------------------


def mailto_of(sent: Sent) -> str:
    """The mailto address of the List-Unsubscribe header the recipient got."""
    [(_sender, _rcpts, data)] = [m for m in sent.recorder.messages if m[1] == [PERSON]]
    message = email.message_from_bytes(data, policy=email.policy.default)
    found = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", str(message["List-Unsubscribe"]))
    assert found is not None
    return found.group(1)


def test_the_mailto_unsubscribe_unsubscribes_at_once_and_a_replay_does_nothing(
    sent: Sent,
) -> None:
    address = mailto_of(sent)
    assert address.startswith("unsubscribe+") and address.endswith(f"@{BOUNCE_DOMAIN}")
    request = (
        f"From: {PERSON}\r\nTo: {address}\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"
    ).encode()
    outcome = deliver(sent.settings, address, request, mail_from=PERSON)
    assert (outcome.route, outcome.message_ids, outcome.changed) == (
        Route.UNSUBSCRIBE,
        [sent.row.id],
        1,
    )
    assert contact_state(sent) == (ChannelStatus.UNSUBSCRIBED, True)
    [unsubscribed] = events(sent.settings, EventKind.UNSUBSCRIBED)
    assert unsubscribed.data == {"source": "mailto"} and unsubscribed.message_id == sent.row.id

    replay = deliver(sent.settings, address, request, mail_from=PERSON)
    assert (replay.recorded, replay.changed) == (0, 0)
    assert len(events(sent.settings, EventKind.UNSUBSCRIBED)) == 1
    # A null sender (a bounce or an auto-reply to that address) is not a request.
    with session_scope(sent.settings) as session:
        contact = find_contact(session, sent.world.account_id, PERSON)
        assert contact is not None
        contact.email_status = ChannelStatus.ACTIVE
    assert deliver(sent.settings, address, request).changed == 0


# --- forgeries and fallbacks ------------------------------------------------------------------


def test_forged_tokens_do_nothing(sent: Sent) -> None:
    settings = sent.settings
    assert sent.row.id is not None
    forged = [
        f"bounces+{sent.row.id}-000000000000@{BOUNCE_DOMAIN}",  # a wrong MAC
        return_path("another-install-secret", sent.row.id, BOUNCE_DOMAIN),
        f"bounces+{sent.row.id}@{BOUNCE_DOMAIN}",  # no MAC at all
    ]
    for address in forged:
        # The report names our contact and a recent row sent to it: still nothing.
        dsn = adapt("lhost-postfix-06.eml", recipient=PERSON, sender=address)
        outcome = deliver(settings, address, dsn)
        assert (outcome.recorded, outcome.message_ids) == (0, []), address
        unsubscribe = address.replace("bounces+", "unsubscribe+")
        outcome = deliver(settings, unsubscribe, b"Subject: unsubscribe\r\n\r\n", mail_from=PERSON)
        assert (outcome.recorded, outcome.message_ids) == (0, []), unsubscribe
    assert feedback_kinds(settings) == set()
    assert row_state(settings, sent.row.id) == MessageState.SENT
    assert contact_state(sent) == (ChannelStatus.ACTIVE, False)


def test_without_a_token_the_signed_message_id_is_trusted_and_the_address_only_half(
    sent: Sent,
) -> None:
    settings = sent.settings
    bare = f"bounces@{BOUNCE_DOMAIN}"
    # An MTA that lost the VERP address; the returned copy has no return path either, but
    # carries our Message-ID: signed, so the hard bounce counts in full.
    other = send_campaign(
        settings, sent.world, sent.recorder, another_campaign(settings, sent.world, "Otra")
    )
    dsn = adapt("lhost-postfix-06.eml", recipient=PERSON, sender=bare, message_id=other.message_id)
    outcome = deliver(settings, bare, dsn)
    assert (outcome.matched_by, outcome.message_ids) == ("message-id", [other.row.id])
    assert row_state(settings, other.row.id) == MessageState.BOUNCED
    assert contact_state(sent) == (ChannelStatus.BOUNCED, True)

    # Only the failed address (unsigned): a recent row sent to it, and only a soft bounce.
    second = "segunda@example.pe"
    with session_scope(settings) as session:
        add_contact(session, sent.world.account_id, second, list_id=sent.world.list_id)
    third = send_campaign(
        settings,
        sent.world,
        sent.recorder,
        another_campaign(settings, sent.world, "Tercera"),
        second,
    )
    row = third.row
    dsn = adapt("lhost-exchange2007-01.eml", recipient=second, sender=bare)
    outcome = deliver(settings, bare, dsn)
    assert (outcome.matched_by, outcome.message_ids) == ("recipient", [row.id])
    assert row_state(settings, row.id) == MessageState.BOUNCED
    assert contact_state(sent, second) == (ChannelStatus.ACTIVE, False)
    last = events(settings, EventKind.BOUNCED)[-1]
    assert last.data["hard"] is True and last.data["matched_by"] == "recipient"
    # The same report at the feedback address: no token was offered there, no guessing.
    assert deliver(settings, FBL_ADDRESS, dsn).message_ids == []


def test_a_bounce_that_overtakes_the_send_outcome_is_retried_later(
    configure: object, tmp_path: Path
) -> None:
    settings: Settings = configure(  # type: ignore[operator]
        None, MAILER_DELIVERY__BOUNCE_DOMAIN=BOUNCE_DOMAIN, MAILER_DNS__TIMEOUT_SECONDS="0.05"
    )
    world = build_world(settings, tmp_path, 1)
    with session_scope(settings) as session:
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        [row_id] = pending_ids(session, world.campaign_id)
        claim_batch(session, [row_id])  # a worker is sending it right now
    address = return_path(settings.secret_key, row_id, BOUNCE_DOMAIN)
    dsn = adapt("lhost-postfix-06.eml", recipient=PERSON, sender=address)
    outcome = deliver(settings, address, dsn)
    assert outcome.retry_later and outcome.recorded == 0
    assert row_state(settings, row_id) == MessageState.SENDING
    assert verp_token(settings.secret_key, row_id) in address


# --- the SMTP receiver ------------------------------------------------------------------------


def smtp_send(port: int, mail_from: str, rcpt: str, data: bytes) -> tuple[int, bytes]:
    """(reply code, text) of the first refusal, or of the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mta.example.org")
        code, text = client.mail(mail_from)
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        return client.data(re.sub(rb"\r?\n", b"\r\n", data))  # SMTP lines end in CRLF


def test_the_receiver_refuses_relaying_and_oversize_and_commits_before_250(
    sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = sent.settings.model_copy(
        update={"inbound": sent.settings.inbound.model_copy(update={"max_bytes": 64 * 1024})}
    )
    dsn = adapt("lhost-postfix-06.eml", recipient=PERSON, sender=sent.verp)
    with InboundReceiver(settings, "127.0.0.1", 0) as receiver:
        port = receiver.port
        for rcpt in (
            "someone@example.org",
            f"bounces+1-abc@{DOMAIN}",
            f"postmaster@{BOUNCE_DOMAIN}",
        ):
            code, text = smtp_send(port, "", rcpt, dsn)
            assert (code, text[:5]) == (550, b"5.7.1"), rcpt
        code, _text = smtp_send(port, "", sent.verp, dsn + (b"x" * 70 + b"\r\n") * 1200)
        assert code == 552
        assert row_state(settings, sent.row.id) == MessageState.SENT

        def broken(*args: object, **kwargs: object) -> InboundOutcome:
            raise RuntimeError("database unavailable")

        monkeypatch.setattr(inbound_module, "handle_inbound", broken)
        code, _text = smtp_send(port, "", sent.verp, dsn)
        assert code == 451  # the sending MTA keeps it and retries
        monkeypatch.undo()

        code, text = smtp_send(port, "", sent.verp.upper(), dsn)
        assert (code, text) == (250, b"2.0.0 OK bounce: bounce")
        # Committed before the 250: another connection sees it at once.
        assert row_state(settings, sent.row.id) == MessageState.BOUNCED
        assert contact_state(sent) == (ChannelStatus.BOUNCED, True)
        code, _text = smtp_send(port, "fbl@yahoo.example", FBL_ADDRESS, b"Subject: hi\r\n\r\nhi")
        assert code == 250


def test_run_inbound_serves_until_sigterm(sent: Sent) -> None:
    port = free_port()
    env = {**os.environ, "MAILER_INBOUND__PORT": str(port)}
    code = "from mailer.bounces import run_inbound; from mailer.core.config import get_settings; "
    code += "run_inbound(get_settings())"
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    try:
        wait_for_banner(
            "127.0.0.1", port, time.monotonic() + 30, alive=lambda: process.poll() is None
        )
        dsn = adapt("lhost-postfix-06.eml", recipient=PERSON, sender=sent.verp)
        assert smtp_send(port, "", sent.verp, dsn)[0] == 250
        assert row_state(sent.settings, sent.row.id) == MessageState.BOUNCED
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
