"""A campaign through the whole engine to a real MTA (Postfix): every delivered message
passes an independent DKIM verifier (opendkim, RSA and Ed25519) as Postfix stored it, a
550 at RCPT is a bounce at once, a later failure comes back as a real DSN to the VERP
return path, and the ledger's numbers match what arrived."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.audience.service import add_contact
from mailer.campaigns import pipeline
from mailer.campaigns.service import start_campaign
from mailer.core.config import Settings
from mailer.delivery.domains import add_domain
from mailer.delivery.verp import parse_return_path
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message
from mailer.messages.service import count_by_state, pending_ids
from mailer.storage.db import session_scope
from tests.helpers import DOMAIN, build_world
from tests.integration.delivery.conftest import require_postfix
from tests.mta import PostfixServer, SmtpReceiver, SmtpSink, delivered_to
from tests.opendkim import OpendkimVerifier

RECIPIENTS = 25


@pytest.fixture(scope="module")
def mta(dsn_receiver: SmtpReceiver) -> Iterator[PostfixServer]:
    """Postfix for a domain that contact cleaning accepts (``.test`` is reserved)."""
    require_postfix()
    with (
        SmtpSink(reject=("RCPT",)) as rejecting,
        SmtpSink(defer=("RCPT",)) as deferring,
        PostfixServer(
            sink_port=rejecting.port,
            defer_sink_port=deferring.port,
            inbound_port=dsn_receiver.port,
            domain="correo.example.pe",
            bounce_domain="rebotes.example.pe",
        ) as server,
    ):
        yield server


def test_a_campaign_to_postfix_is_signed_bounced_and_counted_right(
    mta: PostfixServer,
    dsn_receiver: SmtpReceiver,
    opendkim: OpendkimVerifier,
    configure: object,
    tmp_path: Path,
) -> None:
    settings: Settings = configure(  # type: ignore[operator]
        None,
        MAILER_RELAY__PORT=str(mta.port),
        MAILER_DELIVERY__BOUNCE_DOMAIN=mta.bounce_domain,
    )
    world = build_world(settings, tmp_path, 0)
    sending = add_domain(settings.sending_domains_dir, DOMAIN, ed25519=True, replace=True)
    keys = {
        name: value
        for name, kind, value in sending.records()
        if kind == "TXT" and "._domainkey." in name
    }
    tag = f"c{world.campaign_id}x{int(time.time() * 1000) % 100000}"
    people = [f"{tag}p{i}@{mta.domain}" for i in range(RECIPIENTS)]
    refused = f"reject-{tag}@{mta.domain}"  # 550 at RCPT
    later = f"bounce-{tag}@{mta.domain}"  # accepted, then a DSN
    with session_scope(settings) as session:
        for address in [*people, refused, later]:
            add_contact(session, world.account_id, address, list_id=world.list_id)
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        ids = pending_ids(session, world.campaign_id)
    pipeline.send_batch(world.campaign_id, ids)

    wanted = {address.lower().encode() for address in people}
    deadline = time.monotonic() + 30
    arrived: list[bytes] = []
    while time.monotonic() < deadline:
        arrived = [m for m in mta.messages() if delivered_to(m) in wanted]
        if len(arrived) >= RECIPIENTS:
            break
        time.sleep(0.2)
    assert len(arrived) == RECIPIENTS
    for message in arrived:
        results = opendkim(message, keys)
        assert [r.algorithm for r in results] == ["rsa-sha256", "ed25519-sha256"]
        assert all(r.passed for r in results), [str(r) for r in results]

    with session_scope(settings) as session:
        states = count_by_state(session, world.campaign_id)
        later_id = session.execute(
            select(Message.id).where(Message.to_address == later)
        ).scalar_one()
        bounce = session.execute(select(Event).where(Event.kind == EventKind.BOUNCED)).scalar_one()
        assert bounce.data["hard"] is True and bounce.data["code"] == 550
    # Postfix took every message but the refused one: the ledger says what arrived.
    assert states == {"sent": RECIPIENTS + 1, "failed": 1}

    deadline = time.monotonic() + 30
    dsn = None
    while dsn is None and time.monotonic() < deadline:
        for received in dsn_receiver.messages:
            if any(
                parse_return_path(settings.secret_key, r) == later_id for r in received.rcpt_tos
            ):
                dsn = received
        time.sleep(0.2)
    assert dsn is not None, "no DSN came back to the VERP address"
    assert dsn.mail_from == ""
    assert b"report-type=delivery-status" in dsn.data and later.encode() in dsn.data
