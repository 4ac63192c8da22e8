"""Tables of outbound webhooks: subscriptions, deliveries (one per event per subscription),
the attempts of each delivery, and the dispatcher's cursor over the events table."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.core.statemachine import StateMachine
from mailer.storage.types import JsonDict, UtcDateTime
from mailer.webhooks.signing import SEALED_LENGTH

_BIG_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite's rowid alias is INTEGER


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (next_attempt_at)
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # retries exhausted, 410 Gone, or the endpoint was disabled


_D = DeliveryState
DELIVERY_STATE = StateMachine[DeliveryState](
    "webhook delivery",
    {
        _D.PENDING: frozenset({_D.SUCCEEDED, _D.FAILED}),
        # A replay starts a new attempt series with the same webhook id.
        _D.SUCCEEDED: frozenset({_D.PENDING}),
        _D.FAILED: frozenset({_D.PENDING}),
    },
)

DELIVERY_STATE_LABELS_ES: dict[str, str] = {
    _D.PENDING: "Pendiente",
    _D.SUCCEEDED: "Entregado",
    _D.FAILED: "Fallido",
}


class DisabledReason(StrEnum):
    GONE = "gone"  # the receiver answered 410 Gone
    FAILING = "failing"  # a delivery ran out of retries, nothing succeeded for a day
    MANUAL = "manual"  # an administrator disabled it


DISABLED_REASON_LABELS_ES: dict[str, str] = {
    DisabledReason.GONE: "el receptor respondió 410 Gone (pidió no recibir más envíos)",
    DisabledReason.FAILING: "fallos continuos: una entrega agotó sus reintentos y ningún intento "
    "tuvo éxito durante el plazo configurado (24 horas por omisión)",
    DisabledReason.MANUAL: "desactivado por un administrador",
}


class WebhookSubscription(SQLModel, table=True):
    """An account's endpoint: where to post which event types, and how it is doing."""

    __tablename__ = "webhook_subscriptions"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("accounts.id", name="fk_webhook_subscriptions_account_id"),
            nullable=False,
            index=True,
        )
    )
    url: str = Field(max_length=2000)
    description: str = Field(default="", max_length=200)
    # "whsec_" + base64 of 32 random bytes (Standard Webhooks), sealed (signing.seal_secret):
    # we sign with it, so it is encrypted rather than hashed.
    secret: str = Field(max_length=SEALED_LENGTH)
    # The secret before the last rotation (sealed), still signed with until
    # previous_secret_until.
    previous_secret: str | None = Field(default=None, max_length=SEALED_LENGTH)
    previous_secret_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    event_types: list[str] = Field(default_factory=list, sa_type=JsonDict)
    active: bool = True
    disabled_reason: str = Field(default="", max_length=32)  # a DisabledReason
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Consecutive failed attempts, and when the first of them was (None while healthy).
    failure_streak: int = 0
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_success_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Only events after this one are delivered: a new endpoint does not receive history.
    start_event_id: int = Field(default=0, sa_type=BigInteger)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class WebhookDelivery(SQLModel, table=True):
    """One event for one subscription: its payload, state and retry schedule.

    ``(subscription_id, event_id)`` is unique, which makes the dispatcher idempotent; test
    events have no event id.  ``webhook_id`` is what receivers deduplicate by: stable for
    the event and subscription, also across replays.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "subscription_id", "event_id", name="uq_webhook_deliveries_subscription_event"
        ),
        UniqueConstraint("webhook_id", name="uq_webhook_deliveries_webhook_id"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription", "subscription_id", "state", "id"),
    )

    id: int | None = Field(default=None, sa_column=Column(_BIG_ID, primary_key=True))
    account_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("accounts.id", name="fk_webhook_deliveries_account_id"),
            nullable=False,
            index=True,
        )
    )
    subscription_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("webhook_subscriptions.id", name="fk_webhook_deliveries_subscription_id"),
            nullable=False,
        )
    )
    event_id: int | None = Field(default=None, sa_type=BigInteger)
    webhook_id: str = Field(max_length=64)
    event_type: str = Field(max_length=64)
    # The exact JSON body, so every attempt and replay sends the same bytes.
    payload: str = Field(sa_type=Text)
    state: str = Field(default=DeliveryState.PENDING, max_length=16)
    attempts: int = 0  # in the current attempt series (a replay starts a new one)
    series_started_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    claim_token: str | None = Field(default=None, max_length=32)
    claimed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_status: int | None = None
    last_error: str = Field(default="", max_length=1000)
    replays: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery, as the receiver answered it (or did not)."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, sa_column=Column(_BIG_ID, primary_key=True))
    delivery_id: int = Field(
        sa_column=Column(
            _BIG_ID,
            ForeignKey("webhook_deliveries.id", name="fk_webhook_attempts_delivery_id"),
            nullable=False,
            index=True,
        )
    )
    attempted_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    status_code: int | None = None
    duration_ms: int = 0
    succeeded: bool = False
    response_excerpt: str = Field(default="", max_length=1000)
    error: str = Field(default="", max_length=1000)


class WebhookCursor(SQLModel, table=True):
    """How far the dispatcher has read the events table (a transactional outbox).

    Every event with an id up to ``last_event_id`` has been dispatched, except the ids in
    ``gaps``: ids skipped because their transaction had not committed yet (PostgreSQL hands
    out ids before commit), kept as ``[id, first seen (unix seconds)]`` and looked for again
    until ``webhooks.gap_grace_seconds`` has passed.
    """

    __tablename__ = "webhook_cursors"

    name: str = Field(primary_key=True, max_length=32)
    last_event_id: int = Field(default=0, sa_type=BigInteger)
    gaps: list[list[int]] = Field(default_factory=list, sa_type=JsonDict)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


def payload_of(delivery: WebhookDelivery) -> dict[str, Any]:
    """The delivery's body as a dict."""
    data: dict[str, Any] = json.loads(delivery.payload)
    return data
