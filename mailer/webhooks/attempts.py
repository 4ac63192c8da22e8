"""Attempts: claiming due deliveries, one signed POST each, the retry schedule and the rule
that disables an endpoint that keeps failing.

A delivery is claimed (a token and a time on its row) before it is attempted, so two
workers, or a periodic job and a queue message, never post it at the same time; a claim
whose worker died expires after ``webhooks.claim_lease_seconds``.  No transaction is open
while the receiver is being waited for.

The schedule: after the n-th failed attempt of a series, wait ``retry_delays_seconds[n-1]``
(5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h by default) give or take ``jitter``; a series
lasts at most ``max_age_hours`` (24 h): a retry that would fall later is made at the
deadline, and then the delivery fails.  2xx succeeds; 410 Gone fails it at once and
disables the endpoint; any other answer, a timeout, a refused connection, a target the
policy refuses (``targets``) or a secret that cannot be unsealed is retried.
An endpoint is disabled when one of its deliveries runs out of retries and none of its
attempts succeeded for ``disable_after_hours`` (24 h): its pending deliveries fail with it
(they can be replayed once it is enabled again), and an audit entry ``webhook.disabled``
says why.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from mailer.accounts.service import Principal, audit
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.sealing import Unsealable
from mailer.storage.db import session_scope
from mailer.webhooks import sender, signing
from mailer.webhooks.models import (
    DeliveryState,
    DisabledReason,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from mailer.webhooks.sender import AttemptOutcome
from mailer.webhooks.targets import TargetPolicy

DISABLED_ERROR = "the endpoint was disabled"


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    token: str


def next_attempt_at(
    settings: Settings,
    series_started_at: datetime,
    attempts_made: int,
    now: datetime,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after the *attempts_made*-th failed attempt, or None: give up."""
    delays = settings.webhooks.retry_delays_seconds
    deadline = series_started_at + timedelta(hours=settings.webhooks.max_age_hours)
    if attempts_made < 1 or attempts_made > len(delays) or now >= deadline:
        return None
    delay = float(delays[attempts_made - 1])
    spread = delay * settings.webhooks.jitter
    delay += (rng or random).uniform(-spread, spread)
    return min(now + timedelta(seconds=max(0.0, delay)), deadline)


def claim_due(
    session: Session, settings: Settings, *, now: datetime | None = None, limit: int = 500
) -> list[Claimed]:
    """Claim up to *limit* deliveries whose attempt is due, of active endpoints."""
    now = now or utcnow()
    expired = now - timedelta(seconds=settings.webhooks.claim_lease_seconds)
    free = or_(col(WebhookDelivery.claimed_at).is_(None), col(WebhookDelivery.claimed_at) < expired)
    due = (
        select(col(WebhookDelivery.id))
        .where(
            col(WebhookDelivery.state) == DeliveryState.PENDING.value,
            col(WebhookDelivery.next_attempt_at) <= now,
            free,
            col(WebhookDelivery.subscription_id).in_(
                select(col(WebhookSubscription.id)).where(col(WebhookSubscription.active).is_(True))
            ),
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(limit)
    )
    token = secrets.token_hex(8)
    # One UPDATE: on PostgreSQL a racing claimer re-checks the row after the lock and
    # skips it; SQLite runs one writer at a time.
    session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id).in_(due.scalar_subquery()),
            col(WebhookDelivery.state) == DeliveryState.PENDING.value,
            free,
        )
        .values(claim_token=token, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    ids = session.execute(
        select(col(WebhookDelivery.id))
        .where(col(WebhookDelivery.claim_token) == token)
        .order_by(col(WebhookDelivery.id))
    ).scalars()
    return [Claimed(int(delivery_id), token) for delivery_id in ids]


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    body: bytes
    webhook_id: str
    secrets: tuple[str, ...]
    error: str = ""  # why it cannot be sent (an attempt that fails at once)


def _prepare(
    session: Session, settings: Settings, claimed: Claimed, now: datetime
) -> _Request | None:
    row = session.execute(
        select(WebhookDelivery, WebhookSubscription)
        .join(
            WebhookSubscription,
            col(WebhookSubscription.id) == col(WebhookDelivery.subscription_id),
        )
        .where(
            col(WebhookDelivery.id) == claimed.delivery_id,
            col(WebhookDelivery.claim_token) == claimed.token,
            col(WebhookDelivery.state) == DeliveryState.PENDING.value,
        )
    ).first()
    if row is None:
        return None  # claimed again after a lease expired, replayed, or already done
    delivery, subscription = row
    if not subscription.active:
        return None  # disabled meanwhile: disabling failed its pending deliveries
    sealed = [subscription.secret]
    if subscription.previous_secret and (
        subscription.previous_secret_until is None or subscription.previous_secret_until > now
    ):
        sealed.append(subscription.previous_secret)
    body = delivery.payload.encode()
    try:
        keys = tuple(signing.unseal_secret(value, settings) for value in sealed)
    except Unsealable as exc:
        return _Request(subscription.url, body, delivery.webhook_id, (), error=exc.message)
    return _Request(subscription.url, body, delivery.webhook_id, keys)


def attempt(
    settings: Settings, claimed: Claimed, *, now: datetime | None = None
) -> AttemptOutcome | None:
    """Post one claimed delivery and record what happened; None if the claim is stale.

    *now* places the attempt in time for the schedule (tests move it); the signature's
    timestamp is always the real time, as receivers check it against their clock.
    """
    started = now or utcnow()
    with session_scope(settings) as session:
        request = _prepare(session, settings, claimed, started)
    if request is None:
        return None
    if request.error:
        outcome = AttemptOutcome(None, 0, error=request.error)
    else:
        timestamp = int(utcnow().timestamp())
        outcome = sender.post(
            request.url,
            request.body,
            signing.headers(request.secrets, request.webhook_id, timestamp, request.body),
            settings.webhooks.timeout_seconds,
            TargetPolicy.from_settings(settings.webhooks),
        )
    with session_scope(settings) as session:
        record(session, settings, claimed, outcome, now=started)
    return outcome


def record(
    session: Session,
    settings: Settings,
    claimed: Claimed,
    outcome: AttemptOutcome,
    *,
    now: datetime | None = None,
) -> None:
    """Store the attempt (made at *now*), then move the delivery and its endpoint's health
    on, if the claim still holds."""
    now = now or utcnow()
    # An UPDATE first: it takes the row lock (PostgreSQL) or the write lock (SQLite)
    # before anything is read.
    held = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == claimed.delivery_id,
            col(WebhookDelivery.claim_token) == claimed.token,
        )
        .values(claim_token=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    delivery = session.get(WebhookDelivery, claimed.delivery_id, populate_existing=True)
    if delivery is None:
        return  # deleted with its endpoint meanwhile
    session.add(
        WebhookAttempt(
            delivery_id=claimed.delivery_id,
            attempted_at=now,
            status_code=outcome.status_code,
            duration_ms=outcome.duration_ms,
            succeeded=outcome.succeeded,
            response_excerpt=outcome.response_excerpt[:1000],
            error=outcome.error[:1000],
        )
    )
    if not held:
        return  # claimed again, replayed or disabled meanwhile: the attempt is on file only
    subscription = session.execute(
        select(WebhookSubscription)
        .where(col(WebhookSubscription.id) == delivery.subscription_id)
        .with_for_update()
    ).scalar_one()
    delivery.attempts += 1
    delivery.last_status = outcome.status_code
    delivery.last_error = (
        outcome.error or ("" if outcome.succeeded else f"HTTP {outcome.status_code}")
    )[:1000]
    if outcome.succeeded:
        _finish(delivery, DeliveryState.SUCCEEDED, now)
        subscription.failure_streak = 0
        subscription.failing_since = None
        subscription.last_success_at = now
    else:
        subscription.failure_streak += 1
        subscription.failing_since = subscription.failing_since or now
        retry_at = None
        if not outcome.gone:
            retry_at = next_attempt_at(settings, delivery.series_started_at, delivery.attempts, now)
        if retry_at is not None:
            delivery.next_attempt_at = retry_at
        else:
            _finish(delivery, DeliveryState.FAILED, now)
    session.add(delivery)
    session.add(subscription)
    session.flush()
    if outcome.gone:
        disable(session, subscription, DisabledReason.GONE, now=now)
    elif delivery.state == DeliveryState.FAILED and subscription.failing_since is not None:
        quiet = timedelta(hours=settings.webhooks.disable_after_hours)
        if subscription.failing_since <= now - quiet:
            disable(session, subscription, DisabledReason.FAILING, now=now)


def _finish(delivery: WebhookDelivery, state: DeliveryState, now: datetime) -> None:
    delivery.state = state.value
    delivery.completed_at = now
    delivery.next_attempt_at = None


def disable(
    session: Session,
    subscription: WebhookSubscription,
    reason: DisabledReason,
    *,
    now: datetime | None = None,
    principal: Principal | None = None,
) -> None:
    """Stop posting to the endpoint: its pending deliveries fail (replayable later)."""
    now = now or utcnow()
    subscription.active = False
    subscription.disabled_reason = reason.value
    subscription.disabled_at = now
    subscription.updated_at = now
    session.add(subscription)
    session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.subscription_id) == subscription.id,
            col(WebhookDelivery.state) == DeliveryState.PENDING.value,
        )
        .values(
            state=DeliveryState.FAILED.value,
            last_error=DISABLED_ERROR,
            completed_at=now,
            next_attempt_at=None,
            claim_token=None,
            claimed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    audit(
        session,
        principal,
        "webhook.disabled",
        f"webhook:{subscription.id}",
        account_id=subscription.account_id,
        url=subscription.url,
        reason=reason.value,
    )


def deliver_due(
    settings: Settings, *, now: datetime | None = None, limit: int = 500
) -> list[AttemptOutcome]:
    """Claim what is due and attempt it here, one after the other (tests, the CLI)."""
    with session_scope(settings) as session:
        claims = claim_due(session, settings, now=now, limit=limit)
    outcomes = []
    for claimed in claims:
        outcome = attempt(settings, claimed, now=now)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes
