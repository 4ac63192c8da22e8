"""SMS on the ledger, on both database backends: numbers normalised and rejected with their
reason, parts counted and reserved, receipts settled (only delivered messages charged),
early receipts kept until their part is recorded, expiry, short links, replies with
keywords, and SMS campaigns to a list.  The gateway here is the capture gateway of the
embedded default; the SMPP path against a real SMSC is in ``tests/integration/sms``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mailer.accounts import credits
from mailer.accounts.service import create_account
from mailer.asgi import create_app
from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.service import add_contact, create_list
from mailer.audience.suppression import is_suppressed
from mailer.campaigns import sms
from mailer.campaigns.service import get_campaign, start_campaign
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import ValidationFailed
from mailer.events.models import Event, EventKind
from mailer.messages.models import InboundSms, Message, MessageState, SmsPart
from mailer.sms.types import Inbound, Receipt
from mailer.storage.db import session_scope
from mailer.tracking.urls import read_sms_link_code


@pytest.fixture
def account(settings: Settings) -> Iterator[tuple[Settings, int]]:
    with session_scope(settings) as session:
        created = create_account(session, "Municipalidad")
        assert created.id is not None
        credits.grant(session, created.id, "sms", 100)
        account_id = created.id
    yield settings, account_id
    sms.close_gateway_loop()


def rows(settings: Settings, ids: list[int]) -> dict[int, Message]:
    with session_scope(settings) as session:
        found = session.execute(select(Message).where(Message.id.in_(ids))).scalars()  # type: ignore[attr-defined]
        return {m.id: m for m in found if m.id is not None}


def balance(settings: Settings, account_id: int) -> tuple[int, int]:
    with session_scope(settings) as session:
        current = credits.balance(session, account_id, "sms")
        assert current is not None
        assert credits.verify(session, account_id, "sms") == (current.available, current.held)
        return current.available, current.held


def receipt(settings: Settings, provider_id: str, state: str = "delivered") -> dict[str, int]:
    with session_scope(settings) as session:
        return sms.apply_receipts(
            session,
            settings,
            [Receipt(provider_id, state, True, gateway="capture")],  # type: ignore[arg-type]
        )


def test_numbers_are_normalised_and_the_bad_ones_reported(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        queued = sms.queue_sms(
            session,
            account_id,
            ["987 654 321", "+51987654321", "01 4261234", "12", "+51 912 345 678"],
            "Su trámite {{ numero }} está listo.",
            variables={"numero": "T-118"},
        )
        numbers = [m.to_address for m in queued.messages]
        reasons = {r.index: r.reason for r in queued.rejected}
    assert numbers == ["+51987654321", "+51912345678"]
    assert set(reasons) == {1, 2, 3}
    assert "twice" in reasons[1] and "mobile" in reasons[2]
    assert [m.payload["text"] for m in queued.messages] == ["Su trámite T-118 está listo."] * 2  # type: ignore[index]
    assert balance(settings, account_id) == (98, 2)
    with session_scope(settings) as session, pytest.raises(ValidationFailed, match="to\\[0\\]"):
        sms.queue_sms(session, account_id, ["12"], "Hola")


def test_parts_are_reserved_then_charged_only_when_delivered(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    long_text = "Aviso: " + "a" * 160  # 167 septets: 2 parts
    with session_scope(settings) as session:
        queued = sms.queue_sms(
            session, account_id, ["987654321", "987650000"], long_text, origin="apikey:1 (ERP)"
        )
        ids = [m.id for m in queued.messages if m.id is not None]
    assert balance(settings, account_id) == (96, 4)
    outcome = sms.send_sms_batch(ids, settings=settings)
    assert outcome.by_state == {MessageState.SENT: ids}
    sent = rows(settings, ids)
    assert all(m.state == MessageState.SENT and m.parts == 2 for m in sent.values())
    with session_scope(settings) as session:
        parts = list(session.execute(select(SmsPart).order_by(SmsPart.id)).scalars())  # type: ignore[arg-type]
    assert [(p.message_id, p.part) for p in parts] == [
        (ids[0], 1),
        (ids[0], 2),
        (ids[1], 1),
        (ids[1], 2),
    ]
    # The capture gateway reports on its own a moment later; settle by hand here instead.
    sms.close_gateway_loop()
    first, second = parts[0].provider_id, parts[1].provider_id
    assert receipt(settings, first)["delivered"] == 0  # one part of two: not yet
    assert receipt(settings, second)["delivered"] == 1
    assert receipt(settings, second)["delivered"] == 0  # a repeated receipt changes nothing
    assert receipt(settings, parts[2].provider_id, "undelivered")["undelivered"] == 0
    assert receipt(settings, parts[3].provider_id)["undelivered"] == 1
    final = rows(settings, ids)
    assert final[ids[0]].state == MessageState.DELIVERED and final[ids[0]].final_at
    assert final[ids[1]].state == MessageState.UNDELIVERED
    assert balance(settings, account_id) == (98, 0)  # 2 charged, 2 released
    with session_scope(settings) as session:
        kinds = [
            e.kind
            for e in session.execute(select(Event).order_by(Event.id)).scalars()  # type: ignore[arg-type]
        ]
    assert kinds.count(EventKind.SMS_SUBMITTED) == 2
    assert kinds.count(EventKind.SMS_DELIVERED) == 1
    assert kinds.count(EventKind.SMS_UNDELIVERED) == 1


def test_a_receipt_before_its_submit_is_recorded_waits_for_it(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        queued = sms.queue_sms(session, account_id, ["987654321"], "Hola")
        [message_id] = [m.id for m in queued.messages]
    # The capture gateway numbers its ids from 1: receipt "1" comes first, then the submit.
    sms.close_gateway_loop()
    assert receipt(settings, "1") == {
        "matched": 0,
        "pending": 1,
        "delivered": 0,
        "undelivered": 0,
        "late": 0,
    }
    sms.send_sms_batch([message_id], settings=settings)  # type: ignore[list-item]
    sms.close_gateway_loop()
    assert rows(settings, [message_id])[message_id].state == MessageState.DELIVERED  # type: ignore[list-item,index]
    assert balance(settings, account_id) == (99, 0)


def test_no_final_receipt_within_the_validity_expires_and_releases(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        queued = sms.queue_sms(session, account_id, ["987654321"], "Hola")
        ids = [m.id for m in queued.messages if m.id is not None]
    sms.send_sms_batch(ids, settings=settings)
    sms.close_gateway_loop()  # no receipt will come
    with session_scope(settings) as session:
        session.execute(update(Message).values(sent_at=utcnow() - timedelta(hours=49)))
    with session_scope(settings) as session:
        assert sms.expire_sms(session, settings) == 1
    assert rows(settings, ids)[ids[0]].state == MessageState.EXPIRED
    assert balance(settings, account_id) == (100, 0)
    with session_scope(settings) as session:
        part = session.execute(select(SmsPart)).scalar_one()
    assert receipt(settings, part.provider_id)["late"] == 1  # recorded, not charged
    assert balance(settings, account_id) == (100, 0)


def test_not_enough_allowance_queues_nothing(account: tuple[Settings, int]) -> None:
    settings, account_id = account
    with (
        pytest.raises(credits.InsufficientCredit, match="needs 101"),
        session_scope(settings) as session,  # the error rolls the transaction back
    ):
        sms.queue_sms(session, account_id, [f"98765{i:04d}" for i in range(1, 102)], "Hola")
    with session_scope(settings) as session:
        assert session.execute(select(Message)).first() is None
    assert balance(settings, account_id) == (100, 0)


def test_the_capture_gateway_reports_delivered_receipts_through_the_writer(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        queued = sms.queue_sms(session, account_id, ["987654321", "987650000"], "Hola")
        ids = [m.id for m in queued.messages if m.id is not None]
    sms.send_sms_batch(ids, settings=settings)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = {m.state for m in rows(settings, ids).values()}
        if states == {MessageState.DELIVERED, MessageState.UNDELIVERED}:
            break
        time.sleep(0.1)
    final = rows(settings, ids)
    assert final[ids[0]].state == MessageState.DELIVERED
    assert final[ids[1]].state == MessageState.UNDELIVERED
    assert balance(settings, account_id) == (99, 0)


def test_links_are_shortened_and_clicks_recorded(account: tuple[Settings, int]) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        queued = sms.queue_sms(
            session,
            account_id,
            ["987654321"],
            "Vea su orden en https://www.example.gob.pe/ordenes?id=118.",
        )
        [row] = queued.messages
        assert row.id is not None and row.payload is not None
        text = row.payload["text"]
        message_id = row.id
    assert "example.gob.pe" not in text and text.endswith(".")
    code = text.split("/s/", 1)[1].rstrip(".")
    assert read_sms_link_code(settings.secret_key, code) == (message_id, 0)
    sms.send_sms_batch([message_id], settings=settings)
    app = create_app(settings)
    with TestClient(app, follow_redirects=False) as client:
        answer = client.get(f"/s/{code}", headers={"user-agent": "Mozilla/5.0 (Android 14)"})
        assert answer.status_code == 302
        assert answer.headers["location"] == "https://www.example.gob.pe/ordenes?id=118"
        assert client.get(f"/s/{code[:-1]}x").status_code == 404  # forged: no redirect
        assert client.get(f"/s/{code.replace('-0', '-1', 1)}").status_code == 404
    deadline = time.monotonic() + 5
    clicks: list[Event] = []
    while time.monotonic() < deadline and not clicks:
        with session_scope(settings) as session:
            clicks = list(
                session.execute(select(Event).where(Event.kind == EventKind.CLICKED)).scalars()
            )
        time.sleep(0.1)
    assert len(clicks) == 1 and clicks[0].message_id == message_id


def test_a_baja_reply_stops_sms_to_that_number_and_alta_brings_it_back(
    account: tuple[Settings, int],
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        contact = add_contact(
            session, account_id, "ana@example.pe", phone="987654321", first_name="Ana"
        )
        contact_id = contact.id
        queued = sms.queue_sms(session, account_id, ["987654321"], "Hola {{ contact.first_name }}")
        assert queued.messages[0].payload["text"] == "Hola Ana"  # type: ignore[index]
        ids = [m.id for m in queued.messages if m.id is not None]
    sms.send_sms_batch(ids, settings=settings)
    with session_scope(settings) as session:
        reply, acks = sms.handle_inbound_sms(
            session,
            settings,
            Inbound("+51987654321", "INFO", "  Bájá!! ", "capture", utcnow()),
        )
        assert (reply.keyword, reply.action, reply.message_id) == ("BAJA", "unsubscribed", ids[0])
    assert len(acks) == 1
    with session_scope(settings) as session:
        ana = session.get(Contact, contact_id)
        assert ana is not None and ana.sms_status == ChannelStatus.UNSUBSCRIBED
        assert is_suppressed(session, account_id, "sms", "+51987654321")
        ack = session.get(Message, acks[0])
        assert ack is not None and "no recibirás más SMS de Municipalidad" in ack.payload["text"]  # type: ignore[index]
        with pytest.raises(ValidationFailed, match="unsubscribed"):
            sms.queue_sms(session, account_id, ["987654321"], "Otra vez")
    sms.send_sms_batch(acks, settings=settings)  # the acknowledgement still goes out
    assert rows(settings, acks)[acks[0]].state == MessageState.SENT
    with session_scope(settings) as session:
        reply, _ = sms.handle_inbound_sms(
            session, settings, Inbound("+51987654321", "INFO", "alta", "capture", utcnow())
        )
        assert reply.action == "resubscribed"
    with session_scope(settings) as session:
        ana = session.get(Contact, contact_id)
        assert ana is not None and ana.sms_status == ChannelStatus.ACTIVE
        assert not is_suppressed(session, account_id, "sms", "+51987654321")
        plain, _ = sms.handle_inbound_sms(
            session,
            settings,
            Inbound("+51987654321", "INFO", "Gracias, recibido", "capture", utcnow()),
        )
        assert (plain.keyword, plain.action) == ("", "")
        assert len(list(session.execute(select(InboundSms)).scalars())) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BAJA", ("BAJA", "unsubscribed")),
        ("stop", ("STOP", "unsubscribed")),
        ("Salir.", ("SALIR", "unsubscribed")),
        ("baja por favor", ("BAJA", "unsubscribed")),
        ("Alta", ("ALTA", "resubscribed")),
        ("¿Cuándo vence?", ("", "")),
        ("", ("", "")),
    ],
)
def test_keywords_ignore_case_accents_and_punctuation(text: str, expected: tuple[str, str]) -> None:
    assert sms.keyword_of(text, ["BAJA", "STOP", "SALIR"], ["ALTA"]) == expected


def test_an_sms_campaign_to_a_list_reserves_sends_and_reports(
    account: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, account_id = account
    with session_scope(settings) as session:
        lst = create_list(session, account_id, "Proveedores")
        for i, phone in enumerate(["987654321", "912345678", "987650000"]):
            add_contact(
                session,
                account_id,
                f"p{i}@example.pe",
                list_id=lst.id,
                phone=phone,
                first_name=f"Nombre{i}",
            )
        add_contact(session, account_id, "sin@example.pe", list_id=lst.id)  # no phone
        campaign = sms.create_sms_campaign(
            session,
            account_id,
            name="Aviso de cierre",
            text="{{ contact.first_name }}: el cierre es el 30/11.",
            list_id=lst.id,
        )
        campaign_id = campaign.id
        assert campaign_id is not None
    with session_scope(settings) as session:
        started = start_campaign(session, account_id, campaign_id)
        assert started.total == 3
    assert balance(settings, account_id) == (97, 3)
    with session_scope(settings) as session:
        ids = list(
            session.execute(
                select(Message.id).where(Message.campaign_id == campaign_id)  # type: ignore[call-overload]
            ).scalars()
        )
    sms.send_sms_batch(ids, settings=settings)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            figures = sms.sms_campaign_stats(
                session, get_campaign(session, account_id, campaign_id)
            )
        if figures["pending"] == 0:
            break
        time.sleep(0.1)
    assert figures["delivered"] == 2 and figures["undelivered"] == 1
    assert figures["parts_charged"] == 2 and figures["recipients"] == 3
    with session_scope(settings) as session:
        assert get_campaign(session, account_id, campaign_id).state == "completed"
        texts = sorted(
            m.payload["text"]  # type: ignore[index]
            for m in session.execute(
                select(Message).where(Message.campaign_id == campaign_id)
            ).scalars()
        )
    assert texts[0] == "Nombre0: el cierre es el 30/11."
    assert balance(settings, account_id) == (98, 0)
