"""SMS end to end through a real SMPP gateway and a real SMSC (npm ``smpp``, scripted):
queue, submit with UDH, receipts settling the ledger and the allowance (also receipts that
come after a restart of the sender), and a BAJA reply from a handset stopping SMS to it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.accounts import credits
from mailer.accounts.service import create_account
from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.service import add_contact
from mailer.campaigns import sms
from mailer.core.config import Settings
from mailer.messages.models import InboundSms, Message, MessageState
from mailer.storage.db import session_scope
from tests.integration.sms.conftest import require_smsc
from tests.smsc import Smsc


@pytest.fixture
def smsc() -> Iterator[Smsc]:
    require_smsc()
    with Smsc(receipt_delay_ms=50, undeliverable=["51987650000"]) as server:
        yield server


@pytest.fixture
def world(
    request: pytest.FixtureRequest, configure: object, smsc: Smsc
) -> Iterator[tuple[Settings, int]]:
    gateway = smsc.gateway_settings(name="operador").model_dump(mode="json")
    gateway["password"] = smsc.config["password"]
    settings: Settings = configure(  # type: ignore[operator]
        None, MAILER_SMS_GATEWAYS=json.dumps([gateway]), MAILER_SMS__DEFAULT_SENDER="ENTIDAD"
    )
    with session_scope(settings) as session:
        account = create_account(session, "Entidad")
        assert account.id is not None
        credits.grant(session, account.id, "sms", 50)
        account_id = account.id
    try:
        yield settings, account_id
    finally:
        sms.close_gateway_loop()


def states(settings: Settings, ids: list[int]) -> dict[int, str]:
    with session_scope(settings) as session:
        found = session.execute(select(Message).where(Message.id.in_(ids))).scalars()  # type: ignore[attr-defined]
        return {m.id: m.state for m in found if m.id is not None}


def wait_states(
    settings: Settings, ids: list[int], done: set[str], timeout: float = 20
) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        now = states(settings, ids)
        if set(now.values()) <= done or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_sms_through_smpp_are_settled_by_their_receipts(
    world: tuple[Settings, int], smsc: Smsc
) -> None:
    settings, account_id = world
    long_text = "Estimado proveedor: " + "su orden de compra vence pronto. " * 6  # 2 parts
    with session_scope(settings) as session:
        queued = sms.queue_sms(
            session, account_id, ["987654321", "987650000", "912345678"], long_text
        )
        ids = [m.id for m in queued.messages if m.id is not None]
        assert [m.parts for m in queued.messages] == [2, 2, 2]
    outcome = sms.send_sms_batch(ids, settings=settings)
    assert outcome.by_state == {MessageState.SENT: ids}
    final = wait_states(settings, ids, {"delivered", "undelivered"})
    assert final == {ids[0]: "delivered", ids[1]: "undelivered", ids[2]: "delivered"}
    submitted = smsc.submitted()
    assert len(submitted) == 6
    assert all(p["esm_class"] & 0x40 for p in submitted)  # UDH, split by us
    with session_scope(settings) as session:
        current = credits.balance(session, account_id, "sms")
        assert current is not None and (current.available, current.held) == (46, 0)
        assert credits.verify(session, account_id, "sms") == (46, 0)


def test_receipts_that_come_after_a_restart_still_settle(
    world: tuple[Settings, int], smsc: Smsc
) -> None:
    settings, account_id = world
    smsc.configure(receipt_delay_ms=1500)
    with session_scope(settings) as session:
        queued = sms.queue_sms(session, account_id, ["987654321"], "Hola")
        ids = [m.id for m in queued.messages if m.id is not None]
    sms.send_sms_batch(ids, settings=settings)
    sms.close_gateway_loop()  # the sender stops before the receipt comes (unbound)
    assert states(settings, ids) == {ids[0]: "sent"}
    time.sleep(1.6)
    sms.gateway_loop(settings)  # a new process binds; the SMSC delivers what waited
    assert wait_states(settings, ids, {"delivered"}) == {ids[0]: "delivered"}


def test_a_baja_from_a_handset_stops_sms_to_it(
    world: tuple[Settings, int], smsc: Smsc, tmp_path: Path
) -> None:
    settings, account_id = world
    with session_scope(settings) as session:
        contact = add_contact(session, account_id, "ana@example.pe", phone="987654321")
        contact_id = contact.id
        queued = sms.queue_sms(session, account_id, ["987654321"], "Aviso")
        ids = [m.id for m in queued.messages if m.id is not None]
    sms.send_sms_batch(ids, settings=settings)
    wait_states(settings, ids, {"delivered"})
    statuses = smsc.send_mo("51987654321", "ENTIDAD", text="Baja")
    assert statuses == [0]  # answered with deliver_sm_resp OK once stored
    with session_scope(settings) as session:
        ana = session.get(Contact, contact_id)
        assert ana is not None and ana.sms_status == ChannelStatus.UNSUBSCRIBED
        [reply] = session.execute(select(InboundSms)).scalars()
        assert (reply.keyword, reply.action, reply.message_id) == ("BAJA", "unsubscribed", ids[0])
        ack = session.execute(select(Message).where(Message.origin == "keyword:BAJA")).scalar_one()
        assert ack.to_address == "+51987654321"
