"""Outbound webhooks: the functions the API, the portal and the actors call.

Subscriptions (create, update, enable and disable, rotate the secret, delete; a URL must
pass the target policy of ``targets`` and secrets are stored sealed), test events,
the dispatcher (``dispatch_new_events``: events -> deliveries, see ``outbox``), attempts
(``claim_due`` and ``attempt`` for the actors, ``deliver_due`` to run them in place, see
``attempts``), replays, and the lists of deliveries and attempts.  Audit entries of what
people do are the interfaces' (they know who and from where); the automatic disabling of
a failing endpoint is audited here.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import SplitResult, urlsplit

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from mailer.accounts.service import Principal
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import Conflict, NotFound, ValidationFailed
from mailer.core.sealing import Resealed, Sealer
from mailer.storage.db import session_scope
from mailer.webhooks import outbox, signing, targets
from mailer.webhooks.attempts import Claimed, attempt, claim_due, deliver_due, disable
from mailer.webhooks.event_types import TEST_EVENT_TYPE, EventType
from mailer.webhooks.models import (
    DELIVERY_STATE,
    DeliveryState,
    DisabledReason,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)

__all__ = [
    "Claimed",
    "attempt",
    "claim_due",
    "create_subscription",
    "delete_subscription",
    "deliver_due",
    "disable_subscription",
    "dispatch_new_events",
    "enable_subscription",
    "get_delivery",
    "get_subscription",
    "list_attempts",
    "list_deliveries",
    "list_subscriptions",
    "replay_delivery",
    "replay_failed",
    "rotate_secret",
    "send_test_event",
    "state_counts",
    "update_subscription",
]

MAX_URL_LENGTH = 2000
MAX_SUBSCRIPTIONS = 20  # per account: each one multiplies the deliveries of every event
ROTATION_GRACE = timedelta(hours=24)  # the old secret also signs this long after a rotation
_ORDER = {event_type.value: index for index, event_type in enumerate(EventType)}


# -- subscriptions ---------------------------------------------------------------------


def _port_given(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number from 0 to 65535)
    except ValueError:
        return False
    return True


def check_url(url: str, settings: Settings | None = None) -> str:
    """*url*, trimmed, if webhooks may be posted to it: http(s), no credentials, a host that
    resolves to addresses the target policy allows, on an allowed port."""
    url = url.strip()
    parts = urlsplit(url)
    if (
        len(url) > MAX_URL_LENGTH
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not _port_given(parts)
        or any(ch.isspace() for ch in url)
    ):
        raise ValidationFailed(
            "the webhook URL must be an http:// or https:// address (at most {limit} characters)",
            field="url",
            limit=MAX_URL_LENGTH,
        )
    if parts.username or parts.password:
        raise ValidationFailed(
            "put no user name or password in the webhook URL: verify the signature instead",
            field="url",
        )
    policy = targets.TargetPolicy.from_settings((settings or get_settings()).webhooks)
    targets.check_target(parts, policy)
    return url


def check_event_types(event_types: Sequence[str]) -> list[str]:
    """The event types, known and without repeats, in their canonical order."""
    chosen = {str(event_type).strip() for event_type in event_types}
    unknown = sorted(chosen - set(_ORDER))
    if unknown:
        raise ValidationFailed(
            "unknown event type '{event_type}'; use some of: {allowed}",
            field="event_types",
            event_type=unknown[0],
            allowed=", ".join(_ORDER),
        )
    if not chosen:
        raise ValidationFailed("choose at least one event type", field="event_types")
    return sorted(chosen, key=_ORDER.__getitem__)


def create_subscription(
    session: Session,
    account_id: int,
    url: str,
    event_types: Sequence[str],
    *,
    description: str = "",
    created_by: str = "",
    settings: Settings | None = None,
) -> tuple[WebhookSubscription, str]:
    """A new endpoint; its secret is returned (in clear, to be shown to the administrator
    once) and stored sealed.  It receives the events appended from now on, not the
    account's history."""
    settings = settings or get_settings()
    start_event_id = outbox.start_of_new_subscription(session, utcnow())
    count = session.execute(
        select(func.count())
        .select_from(WebhookSubscription)
        .where(col(WebhookSubscription.account_id) == account_id)
    ).scalar_one()
    if count >= MAX_SUBSCRIPTIONS:
        raise Conflict(
            "an account can have at most {limit} webhook endpoints", limit=MAX_SUBSCRIPTIONS
        )
    secret = signing.generate_secret()
    subscription = WebhookSubscription(
        account_id=account_id,
        url=check_url(url, settings),
        description=description.strip()[:200],
        secret=signing.seal_secret(secret, settings),
        event_types=check_event_types(event_types),
        start_event_id=start_event_id,
        created_by=created_by[:200],
    )
    session.add(subscription)
    session.flush()
    return subscription, secret


def list_subscriptions(session: Session, account_id: int) -> list[WebhookSubscription]:
    return list(
        session.exec(
            select(WebhookSubscription)
            .where(WebhookSubscription.account_id == account_id)
            .order_by(col(WebhookSubscription.id))
        )
    )


def get_subscription(
    session: Session, account_id: int, subscription_id: int
) -> WebhookSubscription:
    subscription = session.get(WebhookSubscription, subscription_id)
    if subscription is None or subscription.account_id != account_id:
        raise NotFound("webhook {id} does not exist", id=subscription_id)
    return subscription


def update_subscription(
    session: Session,
    account_id: int,
    subscription_id: int,
    *,
    url: str | None = None,
    description: str | None = None,
    event_types: Sequence[str] | None = None,
    active: bool | None = None,
    principal: Principal | None = None,
    settings: Settings | None = None,
) -> WebhookSubscription:
    subscription = get_subscription(session, account_id, subscription_id)
    if url is not None and url.strip() != subscription.url:
        subscription.url = check_url(url, settings)
    if description is not None:
        subscription.description = description.strip()[:200]
    if event_types is not None:
        subscription.event_types = check_event_types(event_types)
    subscription.updated_at = utcnow()
    session.add(subscription)
    if active is True and not subscription.active:
        enable_subscription(session, account_id, subscription_id)
    elif active is False and subscription.active:
        disable_subscription(session, account_id, subscription_id, principal=principal)
    session.flush()
    return subscription


def enable_subscription(
    session: Session, account_id: int, subscription_id: int
) -> WebhookSubscription:
    """Post to the endpoint again, with a clean record (events of the time it was disabled
    are not sent; its failed deliveries can be replayed)."""
    subscription = get_subscription(session, account_id, subscription_id)
    subscription.active = True
    subscription.disabled_reason = ""
    subscription.disabled_at = None
    subscription.failure_streak = 0
    subscription.failing_since = None
    subscription.updated_at = utcnow()
    session.add(subscription)
    return subscription


def disable_subscription(
    session: Session,
    account_id: int,
    subscription_id: int,
    *,
    principal: Principal | None = None,
) -> WebhookSubscription:
    subscription = get_subscription(session, account_id, subscription_id)
    if subscription.active:
        disable(session, subscription, DisabledReason.MANUAL, principal=principal)
    return subscription


def rotate_secret(
    session: Session,
    account_id: int,
    subscription_id: int,
    *,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> tuple[WebhookSubscription, str]:
    """A new secret (returned in clear, stored sealed); for a day, requests carry
    signatures with both (receivers switch)."""
    now = now or utcnow()
    subscription = get_subscription(session, account_id, subscription_id)
    secret = signing.generate_secret()
    subscription.previous_secret = subscription.secret  # sealed already
    subscription.previous_secret_until = now + ROTATION_GRACE
    subscription.secret = signing.seal_secret(secret, settings or get_settings())
    subscription.updated_at = now
    session.add(subscription)
    return subscription, secret


def reseal_secrets(session: Session, settings: Settings) -> Resealed:
    """Every endpoint's signing secrets (the current one and one kept after a rotation)
    sealed again under the current ``secret_key``."""
    sealer = Sealer.from_settings(signing.SEALING_PURPOSE, settings)
    done = Resealed()
    for subscription in session.exec(select(WebhookSubscription)):
        subscription.secret = done.add(sealer, subscription.secret)
        if subscription.previous_secret:
            subscription.previous_secret = done.add(sealer, subscription.previous_secret)
        session.add(subscription)
    return done


def delete_subscription(session: Session, account_id: int, subscription_id: int) -> None:
    """Delete the endpoint with its deliveries and their attempts."""
    subscription = get_subscription(session, account_id, subscription_id)
    deliveries = select(col(WebhookDelivery.id)).where(
        col(WebhookDelivery.subscription_id) == subscription_id
    )
    session.execute(delete(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(deliveries)))
    session.execute(
        delete(WebhookDelivery).where(col(WebhookDelivery.subscription_id) == subscription_id)
    )
    session.delete(subscription)
    session.flush()


# -- test events, dispatching and delivering ------------------------------------------------


def send_test_event(
    session: Session, account_id: int, subscription_id: int, *, now: datetime | None = None
) -> WebhookDelivery:
    """A ``webhook.test`` delivery to the endpoint (whatever its event types)."""
    now = now or utcnow()
    subscription = get_subscription(session, account_id, subscription_id)
    if not subscription.active:
        raise Conflict("webhook {id} is disabled: enable it first", id=subscription_id)
    payload = {
        "type": TEST_EVENT_TYPE,
        "timestamp": outbox.iso(now),
        "data": {
            "account_id": account_id,
            "webhook_subscription_id": subscription_id,
            "message": "Evento de prueba de mailer: la firma y la URL funcionan.",
        },
    }
    delivery = WebhookDelivery(
        account_id=account_id,
        subscription_id=subscription_id,
        event_id=None,
        webhook_id="msg_" + secrets.token_hex(12),
        event_type=TEST_EVENT_TYPE,
        payload=outbox.dumps(payload),
        series_started_at=now,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


def dispatch_new_events(
    settings: Settings, *, now: datetime | None = None, max_steps: int = 100
) -> int:
    """Turn the events appended since the last run into deliveries (one transaction per
    batch); returns how many deliveries were offered (duplicates are ignored)."""
    offered = 0
    for _ in range(max_steps):
        with session_scope(settings) as session:
            step = outbox.dispatch_step(session, settings, now or utcnow())
        offered += step.deliveries
        if not step.more:
            break
    return offered


# -- replays ---------------------------------------------------------------------------


def _restart(delivery: WebhookDelivery, now: datetime) -> None:
    DELIVERY_STATE.check(DeliveryState(delivery.state), DeliveryState.PENDING)
    delivery.state = DeliveryState.PENDING.value
    delivery.attempts = 0
    delivery.series_started_at = now
    delivery.next_attempt_at = now
    delivery.completed_at = None
    delivery.claim_token = None
    delivery.claimed_at = None
    delivery.replays += 1


def _active(session: Session, account_id: int, subscription_id: int) -> WebhookSubscription:
    subscription = get_subscription(session, account_id, subscription_id)
    if not subscription.active:
        raise Conflict(
            "webhook {id} is disabled: enable it before replaying deliveries", id=subscription_id
        )
    return subscription


def replay_delivery(
    session: Session,
    account_id: int,
    subscription_id: int,
    delivery_id: int,
    *,
    now: datetime | None = None,
) -> WebhookDelivery:
    """Send a finished delivery again: a new series of attempts, the same webhook id."""
    _active(session, account_id, subscription_id)
    delivery = get_delivery(session, account_id, subscription_id, delivery_id)
    _restart(delivery, now or utcnow())
    session.add(delivery)
    session.flush()
    return delivery


def replay_failed(
    session: Session, account_id: int, subscription_id: int, *, now: datetime | None = None
) -> int:
    """Replay every failed delivery of the endpoint; returns how many."""
    _active(session, account_id, subscription_id)
    now = now or utcnow()
    result = session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.subscription_id) == subscription_id,
            col(WebhookDelivery.state) == DeliveryState.FAILED.value,
        )
        .values(
            state=DeliveryState.PENDING.value,
            attempts=0,
            series_started_at=now,
            next_attempt_at=now,
            completed_at=None,
            claim_token=None,
            claimed_at=None,
            replays=col(WebhookDelivery.replays) + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- reading ---------------------------------------------------------------------------


def get_delivery(
    session: Session, account_id: int, subscription_id: int, delivery_id: int
) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id)
    if (
        delivery is None
        or delivery.account_id != account_id
        or delivery.subscription_id != subscription_id
    ):
        raise NotFound("webhook delivery {id} does not exist", id=delivery_id)
    return delivery


def list_deliveries(
    session: Session,
    account_id: int,
    subscription_id: int,
    *,
    state: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first."""
    get_subscription(session, account_id, subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription_id)
    if state:
        query = query.where(WebhookDelivery.state == state)
    return list(
        session.exec(query.order_by(col(WebhookDelivery.id).desc()).offset(offset).limit(limit))
    )


def state_counts(session: Session, subscription_id: int) -> dict[str, int]:
    rows = session.execute(
        select(col(WebhookDelivery.state), func.count())
        .where(col(WebhookDelivery.subscription_id) == subscription_id)
        .group_by(col(WebhookDelivery.state))
    ).all()
    counts = dict.fromkeys((s.value for s in DeliveryState), 0)
    counts.update({state: int(count) for state, count in rows})
    return counts


def list_attempts(session: Session, delivery_ids: Sequence[int]) -> dict[int, list[WebhookAttempt]]:
    """The attempts of each delivery, oldest first."""
    found: dict[int, list[WebhookAttempt]] = defaultdict(list)
    if not delivery_ids:
        return found
    for item in session.exec(
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id).in_(list(delivery_ids)))
        .order_by(col(WebhookAttempt.id))
    ):
        found[item.delivery_id].append(item)
    return found
