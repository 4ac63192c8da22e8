"""The retry schedule, the event type mapping and the payload shape."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from mailer.core.config import Settings, WebhookSettings
from mailer.events.models import Event, EventKind
from mailer.webhooks.attempts import next_attempt_at
from mailer.webhooks.event_types import EventType, event_type_for, kinds_for
from mailer.webhooks.outbox import payload_for, webhook_id_for

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def settings(**webhooks: object) -> Settings:
    return Settings(webhooks=WebhookSettings(**webhooks))  # type: ignore[arg-type]


def test_schedule_backs_off_and_ends_at_the_24_hour_deadline() -> None:
    config = settings(jitter=0)
    now, attempts, moments = T0, 0, [T0]
    while True:
        attempts += 1  # the attempt made at `now` failed
        following = next_attempt_at(config, T0, attempts, now)
        if following is None:
            break
        moments.append(following)
        now = following
    waits = [(b - a).total_seconds() for a, b in itertools.pairwise(moments)]
    assert waits[:6] == [5, 300, 1800, 7200, 18000, 36000]
    # The seventh wait (10 h) would pass the day: that attempt is made at the deadline.
    assert moments[-1] == T0 + timedelta(hours=24)
    assert len(moments) == 8


def test_jitter_stays_within_its_fraction() -> None:
    config = settings(jitter=0.1)
    rng = random.Random(7)
    delays = {
        (next_attempt_at(config, T0, 2, T0, rng) - T0).total_seconds()  # type: ignore[operator]
        for _ in range(200)
    }
    assert min(delays) >= 270 and max(delays) <= 330 and len(delays) > 100


def test_no_retry_once_the_series_is_over() -> None:
    config = settings(jitter=0, max_age_hours=1)
    assert next_attempt_at(config, T0, 1, T0 + timedelta(hours=2)) is None
    assert next_attempt_at(config, T0, 8, T0) is None
    assert next_attempt_at(config, T0, 4, T0 + timedelta(minutes=50)) == T0 + timedelta(hours=1)


def test_delays_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_WEBHOOKS__RETRY_DELAYS_SECONDS", "1, 2,3")
    monkeypatch.setenv("MAILER_CONFIG", "/nonexistent/mailer.toml")
    assert Settings().webhooks.retry_delays_seconds == [1, 2, 3]


@pytest.mark.parametrize(
    ("kind", "channel", "expected"),
    [
        (EventKind.SENT, "email", "email.sent"),
        (EventKind.SENT, "sms", None),  # an SMS's acceptance is sms.submitted
        (EventKind.FAILED, "sms", "sms.failed"),
        (EventKind.FAILED, None, "email.failed"),
        (EventKind.OPENED, "email", "email.opened"),
        (EventKind.CLICKED, "email", "email.clicked"),
        (EventKind.SCANNED, "email", None),
        (EventKind.DELAYED, "email", "email.delayed"),
        (EventKind.BOUNCED, "email", "email.bounced"),
        (EventKind.COMPLAINED, "email", "email.complained"),
        (EventKind.UNSUBSCRIBED, "sms", "sms.unsubscribed"),
        (EventKind.RESUBSCRIBED, "email", "email.resubscribed"),
        (EventKind.SMS_SUBMITTED, "sms", "sms.submitted"),
        (EventKind.SMS_DELIVERED, None, "sms.delivered"),
        (EventKind.SMS_UNDELIVERED, "sms", "sms.undelivered"),
        (EventKind.SMS_INBOUND, None, "sms.inbound"),
        (EventKind.CAMPAIGN_STATE, None, "campaign.state_changed"),
    ],
)
def test_event_types(kind: str, channel: str | None, expected: str | None) -> None:
    found = event_type_for(kind, channel)
    assert (found.value if found else None) == expected


def test_every_kind_is_mapped_or_deliberately_skipped() -> None:
    skipped = {EventKind.SCANNED}
    for kind in EventKind:
        if kind not in skipped:
            assert event_type_for(kind, "email") or event_type_for(kind, "sms"), kind
    assert kinds_for({t.value for t in EventType}) == {k.value for k in EventKind} - skipped
    assert kinds_for({"sms.failed"}) == {EventKind.FAILED.value}


def test_payload_shape() -> None:
    event = Event(
        id=42,
        account_id=1,
        kind=EventKind.OPENED,
        message_id=7,
        contact_id=3,
        campaign_id=2,
        occurred_at=T0,
        machine=True,
        data={"ua": "GoogleImageProxy", "reasons": ["proxy"], "message_id": "overridden"},
    )
    payload = payload_for(
        "email.opened",
        event,
        channel="email",
        to_address="ana@example.pe",
        contact_email="old@example.pe",
        contact_phone="+51987654321",
    )
    assert payload == {
        "type": "email.opened",
        "timestamp": "2026-11-23T12:00:00.000Z",
        "data": {
            "ua": "GoogleImageProxy",
            "reasons": ["proxy"],
            "event_id": 42,
            "account_id": 1,
            "message_id": 7,
            "campaign_id": 2,
            "contact_id": 3,
            "machine": True,
            "email": "ana@example.pe",
        },
    }
    sms = Event(
        id=5, account_id=1, kind=EventKind.SMS_INBOUND, occurred_at=T0, data={"text": "BAJA"}
    )
    data = payload_for(
        "sms.inbound",
        sms,
        channel=None,
        to_address=None,
        contact_email=None,
        contact_phone="+51900",
    )["data"]
    assert data["phone"] == "+51900" and "machine" not in data and "email" not in data
    sent = Event(id=6, account_id=1, kind=EventKind.SMS_DELIVERED, occurred_at=T0, data={})
    data = payload_for(
        "sms.delivered",
        sent,
        channel="sms",
        to_address="+51987654321",
        contact_email=None,
        contact_phone=None,
        origin="apikey:7 (ERP Compras)",
    )["data"]
    assert data["origin"] == "apikey:7 (ERP Compras)"  # which application sent it


def test_webhook_ids_are_stable_per_event_and_subscription() -> None:
    assert webhook_id_for(1, 2) == webhook_id_for(1, 2)
    assert len({webhook_id_for(1, 2), webhook_id_for(2, 1), webhook_id_for(1, 3)}) == 3
    assert webhook_id_for(1, 2).startswith("msg_")
