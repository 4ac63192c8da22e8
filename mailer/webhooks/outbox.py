"""The dispatcher: reads the append-only events table as a transactional outbox and turns
new events into deliveries, in bulk.

Sending never waits for webhooks: whatever appends an event only commits its row.  Each
dispatcher step reads the events after a stored cursor (``webhook_cursors``), keeps the
ones some active subscription wants, and inserts their deliveries with ON CONFLICT DO
NOTHING on ``(subscription_id, event_id)``, in the same transaction that moves the cursor.
So a step that runs twice, or two that run at once, create every delivery exactly once;
the cursor row is locked first, which makes concurrent steps take turns.

PostgreSQL hands out ids before commit, so an event can become visible after a higher id
was read: the ids skipped over are kept as gaps and looked for again for
``webhooks.gap_grace_seconds`` (SQLite commits in id order and leaves no such gaps).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from mailer.audience.models import Contact
from mailer.core.config import Settings
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message
from mailer.webhooks.event_types import event_type_for, kinds_for
from mailer.webhooks.models import (
    DeliveryState,
    WebhookCursor,
    WebhookDelivery,
    WebhookSubscription,
)

CURSOR = "events"
MAX_GAPS = 10_000
_CHUNK = 500  # ids per IN (...) list
_MACHINE_KINDS = frozenset({EventKind.OPENED.value, EventKind.CLICKED.value})


@dataclass(frozen=True, slots=True)
class StepResult:
    read: int  # events looked at (new ones and late ones)
    deliveries: int  # deliveries offered to the database (duplicates are ignored there)
    more: bool  # the step stopped at its batch size: run another


@dataclass(frozen=True, slots=True)
class _Target:
    id: int
    types: frozenset[str]
    kinds: frozenset[str]
    start_event_id: int


def webhook_id_for(subscription_id: int, event_id: int) -> str:
    """The ``webhook-id`` of an event for a subscription: the same on every attempt and
    replay, so receivers can deduplicate by it."""
    digest = hashlib.sha256(f"{subscription_id}:{event_id}".encode()).digest()
    return "msg_" + base64.b32encode(digest[:15]).decode("ascii").lower()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


def payload_for(
    event_type: str,
    event: Event,
    *,
    channel: str | None,
    to_address: str | None,
    contact_email: str | None,
    contact_phone: str | None,
    origin: str | None = None,
) -> dict[str, Any]:
    """``{"type", "timestamp", "data"}``: the event's own data plus the ids, the address,
    the application that asked for the message (``origin``: an API key or OAuth client's
    name, for messages sent through the API) and, for opens and clicks, whether a machine
    made them."""
    data: dict[str, Any] = dict(event.data or {})
    data.update(
        event_id=event.id,
        account_id=event.account_id,
        message_id=event.message_id,
        campaign_id=event.campaign_id,
        contact_id=event.contact_id,
    )
    if origin:
        data["origin"] = origin
    if event.kind in _MACHINE_KINDS:
        data["machine"] = bool(event.machine)
    if event_type.startswith("sms."):
        phone = to_address if channel == "sms" and to_address else contact_phone
        if phone:
            data["phone"] = phone
    elif event_type.startswith("email."):
        email = to_address if channel == "email" and to_address else contact_email
        if email:
            data["email"] = email
    return {"type": event_type, "timestamp": iso(event.occurred_at), "data": data}


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _targets(session: Session) -> dict[int, list[_Target]]:
    """Active subscriptions by account."""
    rows = session.execute(
        select(
            col(WebhookSubscription.id),
            col(WebhookSubscription.account_id),
            col(WebhookSubscription.event_types),
            col(WebhookSubscription.start_event_id),
        ).where(col(WebhookSubscription.active).is_(True))
    ).all()
    targets: dict[int, list[_Target]] = defaultdict(list)
    for sub_id, account_id, types, start in rows:
        wanted = frozenset(types or ())
        targets[account_id].append(
            _Target(sub_id, wanted, frozenset(kinds_for(set(wanted))), start)
        )
    return targets


def _lock_cursor(session: Session, now: datetime) -> tuple[int, list[list[int]]]:
    """Take the cursor row's lock (created on first use) and read it."""
    locked = session.execute(
        update(WebhookCursor).where(col(WebhookCursor.name) == CURSOR).values(updated_at=now)
    )
    if not locked.rowcount:  # type: ignore[attr-defined]
        # Start after the history: from the oldest subscription's start, or from now.
        start = session.execute(select(func.min(WebhookSubscription.start_event_id))).scalar()
        if start is None:
            start = session.execute(select(func.max(Event.id))).scalar() or 0
        dialect = session.get_bind().dialect.name
        statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(WebhookCursor)
        session.execute(
            statement.on_conflict_do_nothing(),
            [{"name": CURSOR, "last_event_id": start, "gaps": [], "updated_at": now}],
        )
        session.execute(
            update(WebhookCursor).where(col(WebhookCursor.name) == CURSOR).values(updated_at=now)
        )
    last, gaps = session.execute(
        select(col(WebhookCursor.last_event_id), col(WebhookCursor.gaps)).where(
            col(WebhookCursor.name) == CURSOR
        )
    ).one()
    return int(last), [list(gap) for gap in gaps or []]


def start_of_new_subscription(session: Session, now: datetime) -> int:
    """The id a new subscription's deliveries start after: the newest event, read under
    the cursor's lock (first thing in the creating transaction).  A dispatcher step that
    read the subscriptions without the new one has committed by then, so the new one
    misses nothing after its start; one that comes later sees it."""
    _lock_cursor(session, now)
    return int(session.execute(select(func.max(Event.id))).scalar() or 0)


def _new_gaps(last: int, seen_max: int, seen: set[int], now_unix: int) -> list[list[int]]:
    """Ids between the old and the new cursor that were not there (newest first, capped)."""
    missing: list[list[int]] = []
    for event_id in range(seen_max - 1, last, -1):
        if event_id not in seen:
            missing.append([event_id, now_unix])
            if len(missing) >= MAX_GAPS:
                break
    return missing


def dispatch_step(session: Session, settings: Settings, now: datetime) -> StepResult:
    """Read the next batch of events and create their deliveries; commit is the caller's."""
    last, gaps = _lock_cursor(session, now)
    now_unix = int(now.timestamp())
    grace = settings.webhooks.gap_grace_seconds
    gaps = [gap for gap in gaps if now_unix - gap[1] <= grace]
    batch = settings.webhooks.dispatch_batch
    targets = _targets(session)
    if not targets:
        # Nobody listens: skip to the end (see start_of_new_subscription).
        newest = session.execute(select(func.max(Event.id))).scalar() or 0
        session.execute(
            update(WebhookCursor)
            .where(col(WebhookCursor.name) == CURSOR)
            .values(last_event_id=max(last, newest), gaps=[], updated_at=now)
        )
        return StepResult(0, 0, False)

    light = session.execute(
        select(col(Event.id), col(Event.account_id), col(Event.kind))
        .where(col(Event.id) > last)
        .order_by(col(Event.id))
        .limit(batch)
    ).all()
    late: list[Any] = []
    gap_ids = [gap[0] for gap in gaps]
    for chunk in _chunks(gap_ids):
        late += session.execute(
            select(col(Event.id), col(Event.account_id), col(Event.kind)).where(
                col(Event.id).in_(chunk)
            )
        ).all()

    wanted: list[int] = []
    for event_id, account_id, kind in [*light, *late]:
        if any(
            kind in target.kinds and event_id > target.start_event_id
            for target in targets.get(account_id, ())
        ):
            wanted.append(event_id)
    rows = _deliveries(session, targets, wanted, now)
    if rows:
        dialect = session.get_bind().dialect.name
        statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(WebhookDelivery)
        session.execute(
            statement.on_conflict_do_nothing(),
            rows,
        )

    seen = {row[0] for row in light}
    found = {row[0] for row in late}
    new_last = max(seen) if seen else last
    gaps = [gap for gap in gaps if gap[0] not in found]
    gaps = (_new_gaps(last, new_last, seen, now_unix) + gaps)[:MAX_GAPS]
    session.execute(
        update(WebhookCursor)
        .where(col(WebhookCursor.name) == CURSOR)
        .values(last_event_id=new_last, gaps=gaps, updated_at=now)
    )
    return StepResult(len(light) + len(late), len(rows), len(light) >= batch)


def _deliveries(
    session: Session, targets: dict[int, list[_Target]], event_ids: list[int], now: datetime
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(event_ids)):
        found = session.execute(
            sa_select(
                Event,
                col(Message.channel),
                col(Message.to_address),
                col(Contact.email),
                col(Contact.phone),
                col(Message.origin),
            )
            .outerjoin(Message, col(Message.id) == col(Event.message_id))
            .outerjoin(Contact, col(Contact.id) == col(Event.contact_id))
            .where(col(Event.id).in_(chunk))
            .order_by(col(Event.id))
        ).all()
        for event, channel, to_address, contact_email, contact_phone, origin in found:
            assert event.id is not None
            if channel is None:
                channel = (event.data or {}).get("channel")
            event_type = event_type_for(event.kind, channel)
            if event_type is None:
                continue
            body: str | None = None
            for target in targets.get(event.account_id, ()):
                if event_type not in target.types or event.id <= target.start_event_id:
                    continue
                if body is None:
                    body = dumps(
                        payload_for(
                            event_type,
                            event,
                            channel=channel,
                            to_address=to_address,
                            contact_email=contact_email,
                            contact_phone=contact_phone,
                            origin=origin,
                        )
                    )
                rows.append(
                    {
                        "account_id": event.account_id,
                        "subscription_id": target.id,
                        "event_id": event.id,
                        "webhook_id": webhook_id_for(target.id, event.id),
                        "event_type": event_type.value,
                        "payload": body,
                        "state": DeliveryState.PENDING.value,
                        "attempts": 0,
                        "series_started_at": now,
                        "next_attempt_at": now,
                        "last_error": "",
                        "replays": 0,
                        "created_at": now,
                    }
                )
    return rows
