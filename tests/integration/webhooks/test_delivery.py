"""Webhooks against a real receiver on 127.0.0.1, on SQLite and PostgreSQL: the dispatcher
reads the events table exactly once, failures (500, a timeout) are retried and recorded,
nothing is lost or processed twice per webhook id, failing endpoints are disabled, failed
deliveries are replayed with the same id."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import Session, col

from mailer.accounts.models import AuditEntry
from mailer.accounts.service import create_account
from mailer.audience.models import Contact
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import Conflict
from mailer.events.models import Event, EventKind
from mailer.events.service import append, append_many
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from mailer.webhooks import service
from mailer.webhooks.attempts import DISABLED_ERROR
from mailer.webhooks.models import WebhookAttempt, WebhookCursor, WebhookDelivery
from mailer.webhooks.outbox import CURSOR
from tests.integration.webhooks.conftest import STALL, Receiver

TIMEOUT = "0.5"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, configure: Any) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings: Settings = configure(url, MAILER_WEBHOOKS__TIMEOUT_SECONDS=TIMEOUT)
    return settings


def account_with_messages(
    settings: Settings, count: int, channel: str = "email"
) -> tuple[int, list[int]]:
    with session_scope(settings) as session:
        account = create_account(session, "Entidad de prueba")
        assert account.id
        address = "persona{i}@example.pe" if channel == "email" else "+5198765{i:04d}"
        messages = [
            Message(account_id=account.id, channel=channel, to_address=address.format(i=i))
            for i in range(count)
        ]
        session.add_all(messages)
        session.flush()
        return account.id, [m.id or 0 for m in messages]


def subscribe(settings: Settings, receiver: Receiver, account_id: int, *types: str) -> int:
    with session_scope(settings) as session:
        subscription, secret = service.create_subscription(
            session, account_id, receiver.url, list(types) or ["email.sent"]
        )
    receiver.secrets.append(secret)
    assert subscription.id
    return subscription.id


def deliveries(session: Session, subscription_id: int) -> list[WebhookDelivery]:
    return list(
        session.execute(
            select(WebhookDelivery)
            .where(col(WebhookDelivery.subscription_id) == subscription_id)
            .order_by(col(WebhookDelivery.id))
        ).scalars()
    )


def test_retries_after_500_and_timeout_then_delivers_each_event_once(
    db: Settings, receiver: Receiver
) -> None:
    script = {1: 500, 2: STALL, 3: 200}
    receiver.answers = lambda _id, number: script.get(number, 200)
    account_id, message_ids = account_with_messages(db, 3)
    subscription_id = subscribe(db, receiver, account_id, "email.sent", "email.opened")
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids)
        append(session, account_id, EventKind.SCANNED, message_id=message_ids[0])  # not sent
        append(session, account_id, EventKind.DEFERRED, message_id=message_ids[0])  # not chosen
    assert service.dispatch_new_events(db) == 3
    assert service.dispatch_new_events(db) == 0  # the cursor moved on

    t0 = utcnow()
    assert [o.status_code for o in service.deliver_due(db, now=t0)] == [500] * 3
    assert service.deliver_due(db, now=t0) == []  # nothing due yet: back-off
    stalled = service.deliver_due(db, now=t0 + timedelta(minutes=1))
    assert [(o.status_code, o.error) for o in stalled] == [(None, "timeout after 0.5 s")] * 3
    done = service.deliver_due(db, now=t0 + timedelta(hours=1))
    assert [o.status_code for o in done] == [200] * 3
    assert service.deliver_due(db, now=t0 + timedelta(days=2)) == []

    with session_scope(db) as session:
        rows = deliveries(session, subscription_id)
        assert [(d.state, d.attempts, d.event_type) for d in rows] == [
            ("succeeded", 3, "email.sent")
        ] * 3
        attempts = service.list_attempts(session, [d.id or 0 for d in rows])
        for delivery in rows:
            log = attempts[delivery.id or 0]
            assert [a.status_code for a in log] == [500, None, 200]
            assert [a.succeeded for a in log] == [False, False, True]
            assert "timeout" in log[1].error and '"ok":true' in log[2].response_excerpt.replace(
                " ", ""
            )
    # Every request was signed; each webhook id was processed exactly once, with the
    # same id on all its attempts.
    assert all(r.verified for r in receiver.requests)
    assert len(receiver.requests) == 9
    processed = Counter(r.webhook_id for r in receiver.delivered())
    assert len(processed) == 3 and set(processed.values()) == {1}
    assert Counter(r.webhook_id for r in receiver.requests) == {k: 3 for k in processed}
    payloads = sorted(
        (r.payload for r in receiver.delivered()), key=lambda p: p["data"]["message_id"]
    )
    assert [p["data"]["message_id"] for p in payloads] == message_ids
    assert payloads[0]["type"] == "email.sent"
    assert payloads[0]["data"]["email"] == "persona0@example.pe"
    assert payloads[0]["timestamp"].endswith("Z")


def test_payloads_carry_addresses_machine_flag_and_campaign_states(
    db: Settings, receiver: Receiver
) -> None:
    account_id, (email_id,) = account_with_messages(db, 1)
    _elsewhere, (sms_id,) = account_with_messages(db, 1, channel="sms")
    with session_scope(db) as session:
        contact = Contact(account_id=account_id, email="ana@example.pe", phone="+51987654321")
        session.add(contact)
        session.flush()
        contact_id = contact.id
    types = ["email.opened", "email.clicked", "sms.delivered", "campaign.state_changed"]
    subscribe(db, receiver, account_id, *types)
    other_account, (other_message,) = account_with_messages(db, 1)
    with session_scope(db) as session:
        session.add(
            Event(account_id=account_id, kind=EventKind.OPENED, message_id=email_id, machine=True)
        )
        append(session, account_id, EventKind.CLICKED, message_id=email_id, url="https://x.pe/")
        append(
            session, account_id, EventKind.SMS_DELIVERED, message_id=sms_id, contact_id=contact_id
        )
        append(session, account_id, EventKind.CAMPAIGN_STATE, campaign_id=9, state="sending")
        append(session, account_id, EventKind.UNSUBSCRIBED, contact_id=contact_id)  # not chosen
        append(session, other_account, EventKind.OPENED, message_id=other_message)  # not ours
    assert service.dispatch_new_events(db) == 4
    service.deliver_due(db)
    by_type = {r.payload["type"]: r.payload["data"] for r in receiver.wait_for(4)}
    assert by_type["email.opened"]["machine"] is True
    assert by_type["email.opened"]["email"] == "persona0@example.pe"
    assert by_type["email.clicked"]["machine"] is False
    assert by_type["email.clicked"]["url"] == "https://x.pe/"
    assert by_type["sms.delivered"]["phone"] == "+51987650000"
    assert by_type["campaign.state_changed"] == {
        "state": "sending",
        "event_id": by_type["campaign.state_changed"]["event_id"],
        "account_id": account_id,
        "message_id": None,
        "campaign_id": 9,
        "contact_id": None,
    }


def test_dispatcher_run_twice_or_at_once_creates_each_delivery_once(db: Settings) -> None:
    account_id, message_ids = account_with_messages(db, 60)
    receiver_url = "http://127.0.0.1:9999/never-called"
    with session_scope(db) as session:
        first, _ = service.create_subscription(session, account_id, receiver_url, ["email.sent"])
        second, _ = service.create_subscription(
            session, account_id, receiver_url, ["email.sent", "email.failed"]
        )
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids[:30])
    service.dispatch_new_events(db)
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids[30:])
        append_many(session, account_id, EventKind.FAILED, message_ids[:5])
    # A cursor moved back (as after a crash between insert and commit) changes nothing.
    service.dispatch_new_events(db)
    with session_scope(db) as session:
        session.execute(
            WebhookCursor.__table__.update().values(last_event_id=0)  # type: ignore[attr-defined]
        )
    errors: list[BaseException] = []
    small_batches = db.model_copy(
        update={"webhooks": db.webhooks.model_copy(update={"dispatch_batch": 7})}
    )

    def run() -> None:
        try:
            service.dispatch_new_events(small_batches)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with session_scope(db) as session:
        counts = dict(
            session.execute(
                select(WebhookDelivery.subscription_id, func.count()).group_by(
                    WebhookDelivery.subscription_id
                )
            ).all()
        )
        assert counts == {first.id: 60, second.id: 65}
        events = session.execute(select(func.max(Event.id))).scalar()
        cursor = session.get(WebhookCursor, CURSOR)
        assert cursor is not None and cursor.last_event_id == events and cursor.gaps == []


def test_history_before_the_subscription_is_not_sent(db: Settings, receiver: Receiver) -> None:
    account_id, message_ids = account_with_messages(db, 4)
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids[:2])
    service.dispatch_new_events(db)  # no subscription yet
    subscribe(db, receiver, account_id, "email.sent")
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids[2:])
    assert service.dispatch_new_events(db) == 2
    service.deliver_due(db)
    assert sorted(r.payload["data"]["message_id"] for r in receiver.wait_for(2)) == message_ids[2:]


def test_an_event_committed_late_is_not_lost(
    configure: Any, postgres_url: str, receiver: Receiver
) -> None:
    """PostgreSQL gives the id at insert: a transaction that commits after a higher id was
    read leaves a gap that the dispatcher looks into again.  (SQLite has one writer at a
    time, so its ids become visible in order.)"""
    db: Settings = configure(postgres_url)
    account_id, message_ids = account_with_messages(db, 2)
    subscribe(db, receiver, account_id, "email.sent")
    with session_scope(db) as slow:
        append(slow, account_id, EventKind.SENT, message_id=message_ids[0])
        slow.flush()  # it has its id now, and is not committed
        with session_scope(db) as fast:
            append(fast, account_id, EventKind.SENT, message_id=message_ids[1])
        assert service.dispatch_new_events(db) == 1
        with session_scope(db) as session:
            cursor = session.get(WebhookCursor, CURSOR)
            assert cursor is not None and len(cursor.gaps) == 1
    assert service.dispatch_new_events(db) == 1
    service.deliver_due(db)
    assert sorted(r.payload["data"]["message_id"] for r in receiver.wait_for(2)) == message_ids
    with session_scope(db) as session:
        cursor = session.get(WebhookCursor, CURSOR)
        assert cursor is not None and cursor.gaps == []


def test_concurrent_senders_post_each_delivery_once(db: Settings, receiver: Receiver) -> None:
    account_id, message_ids = account_with_messages(db, 20)
    subscribe(db, receiver, account_id, "email.sent")
    with session_scope(db) as session:
        append_many(session, account_id, EventKind.SENT, message_ids)
    service.dispatch_new_events(db)
    threads = [threading.Thread(target=service.deliver_due, args=(db,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(receiver.requests) == 20
    assert len({r.webhook_id for r in receiver.requests}) == 20


def test_endpoint_failing_for_a_day_is_disabled_then_replayed(
    db: Settings, receiver: Receiver
) -> None:
    healthy = False
    receiver.answers = lambda _id, _n: 200 if healthy else 503
    account_id, message_ids = account_with_messages(db, 2)
    subscription_id = subscribe(db, receiver, account_id, "email.sent")
    with session_scope(db) as session:
        append(session, account_id, EventKind.SENT, message_id=message_ids[0])
    service.dispatch_new_events(db)
    t0 = utcnow()
    service.deliver_due(db, now=t0)
    with session_scope(db) as session:
        append(session, account_id, EventKind.SENT, message_id=message_ids[1])
    service.dispatch_new_events(db, now=t0 + timedelta(hours=20))
    service.deliver_due(db, now=t0 + timedelta(hours=20))  # both fail; still active
    with session_scope(db) as session:
        subscription = service.get_subscription(session, account_id, subscription_id)
        assert subscription.active and subscription.failure_streak == 3
    # The first delivery's last attempt, at its 24-hour deadline, fails: disabled.
    service.deliver_due(db, now=t0 + timedelta(hours=24, minutes=1))
    with session_scope(db) as session:
        subscription = service.get_subscription(session, account_id, subscription_id)
        assert not subscription.active and subscription.disabled_reason == "failing"
        rows = deliveries(session, subscription_id)
        assert [d.state for d in rows] == ["failed", "failed"]
        assert rows[1].last_error == DISABLED_ERROR
        audit = (
            session.execute(select(AuditEntry).where(col(AuditEntry.action) == "webhook.disabled"))
            .scalars()
            .one()
        )
        assert (audit.actor, audit.target) == ("system", f"webhook:{subscription_id}")
        with pytest.raises(Conflict):
            service.replay_failed(session, account_id, subscription_id)
    # While disabled: new events are not queued for it, nothing is posted.
    with session_scope(db) as session:
        append(session, account_id, EventKind.SENT, message_id=message_ids[0])
    service.dispatch_new_events(db)
    assert service.deliver_due(db, now=t0 + timedelta(days=3)) == []
    failed_ids = {r.webhook_id for r in receiver.requests}

    healthy = True
    with session_scope(db) as session:
        service.enable_subscription(session, account_id, subscription_id)
    with session_scope(db) as session:
        assert service.replay_failed(session, account_id, subscription_id) == 2
    assert [o.status_code for o in service.deliver_due(db)] == [200, 200]
    assert {r.webhook_id for r in receiver.delivered()} == failed_ids
    with session_scope(db) as session:
        rows = deliveries(session, subscription_id)
        assert [(d.state, d.attempts, d.replays) for d in rows] == [("succeeded", 1, 1)] * 2
        subscription = service.get_subscription(session, account_id, subscription_id)
        assert subscription.failure_streak == 0 and subscription.last_success_at is not None
        total = session.execute(select(func.count()).select_from(WebhookAttempt)).scalar()
        assert total == len(receiver.requests)


def test_410_gone_disables_at_once_and_single_replay(db: Settings, receiver: Receiver) -> None:
    receiver.answers = lambda _id, number: 410 if number == 1 else 204
    account_id, message_ids = account_with_messages(db, 1)
    subscription_id = subscribe(db, receiver, account_id, "email.sent")
    with session_scope(db) as session:
        append(session, account_id, EventKind.SENT, message_id=message_ids[0])
    service.dispatch_new_events(db)
    assert [o.status_code for o in service.deliver_due(db)] == [410]
    with session_scope(db) as session:
        subscription = service.get_subscription(session, account_id, subscription_id)
        assert not subscription.active and subscription.disabled_reason == "gone"
        (delivery,) = deliveries(session, subscription_id)
        assert (delivery.state, delivery.last_status) == ("failed", 410)
        service.enable_subscription(session, account_id, subscription_id)
    with session_scope(db) as session:
        service.replay_delivery(session, account_id, subscription_id, delivery.id or 0)
    assert [o.status_code for o in service.deliver_due(db)] == [204]
    assert [r.webhook_id for r in receiver.requests] == [delivery.webhook_id] * 2


def test_test_event_rotation_and_delete(db: Settings, receiver: Receiver) -> None:
    account_id, _ = account_with_messages(db, 0)
    subscription_id = subscribe(db, receiver, account_id, "email.bounced")
    with session_scope(db) as session:
        _sub, new_secret = service.rotate_secret(session, account_id, subscription_id)
    receiver.secrets[:] = [new_secret]  # the receiver switched to the new secret already
    with session_scope(db) as session:
        service.send_test_event(session, account_id, subscription_id)
    service.deliver_due(db)
    (request,) = receiver.wait_for(1)
    assert request.verified and request.payload["type"] == "webhook.test"
    assert len(request.headers["webhook-signature"].split(" ")) == 2  # new and old
    with session_scope(db) as session:
        service.delete_subscription(session, account_id, subscription_id)
    with session_scope(db) as session:
        assert session.execute(select(func.count()).select_from(WebhookDelivery)).scalar() == 0
        assert service.list_subscriptions(session, account_id) == []
