"""Ledger operations, all in bulk: claim a batch, record outcomes, count, recover."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlmodel import Session, col

from mailer.core.clock import utcnow
from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.messages.models import MESSAGE_STATE, Message, MessageState

log = logging.getLogger(__name__)

__all__ = [
    "Claim",
    "ClaimedRow",
    "Released",
    "claim_batch",
    "claim_of",
    "count_by_state",
    "counts_by_campaign",
    "has_open_rows",
    "last_activity",
    "pending_ids",
    "record_results",
    "release_claim",
    "release_expired_claims",
    "waiting_deferred",
]


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    contact_id: int | None
    to_address: str
    to_name: str
    attempts: int
    queued_at: datetime | None = None


# What a worker reads of each row it claims, in ClaimedRow's order.
_CLAIMED_COLUMNS = (
    col(Message.id),
    col(Message.contact_id),
    col(Message.to_address),
    col(Message.to_name),
    col(Message.attempts),
    col(Message.queued_at),
)


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows a worker took, under a token only it knows."""

    token: str
    rows: list[ClaimedRow]


def claim_batch(
    session: Session,
    message_ids: Sequence[int],
    *,
    now: datetime | None = None,
    token: str | None = None,
) -> Claim:
    """Atomically take the rows of *message_ids* that are still to send.

    Rows already sent, failed or claimed by another worker are left alone, which is what
    makes re-running a batch (a redelivered queue message) safe.
    """
    now = now or utcnow()
    token = token or secrets.token_hex(8)
    due = or_(
        col(Message.state) == MessageState.QUEUED,
        and_(
            col(Message.state) == MessageState.DEFERRED,
            or_(col(Message.next_attempt_at).is_(None), col(Message.next_attempt_at) <= now),
        ),
    )
    session.execute(
        update(Message)
        .where(col(Message.id).in_(list(message_ids)), due)
        .values(
            state=MessageState.SENDING,
            claim_token=token,
            claimed_at=now,
            attempts=col(Message.attempts) + 1,
            updated_at=now,
        )
    )
    rows = session.execute(
        select(*_CLAIMED_COLUMNS)
        .where(
            col(Message.id).in_(list(message_ids)),  # the primary key, not a scan for the token
            col(Message.claim_token) == token,
            col(Message.state) == MessageState.SENDING,
        )
        .order_by(col(Message.id))
    ).all()
    return Claim(token, [ClaimedRow(*row) for row in rows])


_STATE_OF = {
    DeliveryStatus.ACCEPTED: MessageState.SENT,
    DeliveryStatus.DEFERRED: MessageState.DEFERRED,
    DeliveryStatus.REJECTED: MessageState.FAILED,
    DeliveryStatus.HELD: MessageState.DEFERRED,  # not attempted: the attempt is given back
}


def record_results(
    session: Session,
    claim: Claim,
    results: Iterable[DeliveryResult],
    *,
    max_attempts: int,
    header_ids: dict[int, str] | None = None,
    now: datetime | None = None,
) -> dict[MessageState, list[int]]:
    """Write the outcome of each row still held by *claim* in one executemany; return the
    ids by their new state.  A deferral past *max_attempts* becomes a failure.

    Rows the claim no longer holds (its lease expired and another worker took them) are
    left alone: a late outcome never overwrites a newer one.
    """
    now = now or utcnow()
    header_ids = header_ids or {}
    attempts = {row.id: row.attempts for row in claim.rows}
    held = set(
        session.execute(
            select(col(Message.id))
            .where(
                col(Message.id).in_(list(attempts)),
                col(Message.claim_token) == claim.token,
                col(Message.state) == MessageState.SENDING,
            )
            .with_for_update()
        ).scalars()
    )
    lost = len(attempts) - len(held)
    if lost:
        log.warning("%d rows of claim %s were taken over before their outcome", lost, claim.token)
    by_state: dict[MessageState, list[int]] = {}
    params = []
    for result in results:
        if result.message_id not in held:
            continue
        state = _STATE_OF[result.status]
        tries = attempts.get(result.message_id, 0)
        if result.status is DeliveryStatus.HELD:
            tries = max(0, tries - 1)
        elif state is MessageState.DEFERRED and tries >= max_attempts:
            state = MessageState.FAILED
        MESSAGE_STATE.check(MessageState.SENDING, state)
        by_state.setdefault(state, []).append(result.message_id)
        params.append(
            {
                "id": result.message_id,
                "state": state.value,
                "attempts": tries,
                "relay": result.relay[:200],
                "reply_code": result.code,
                "reply_text": result.text[:1000],
                "provider_id": result.provider_id,
                "header_message_id": header_ids.get(result.message_id),
                "next_attempt_at": result.retry_at if state is MessageState.DEFERRED else None,
                "sent_at": now if state is MessageState.SENT else None,
                "claim_token": None,
                "updated_at": now,
            }
        )
    if params:
        # ORM bulk UPDATE by primary key: one executemany for the whole batch.
        session.execute(update(Message), params)
    return by_state


OPEN_STATES = (MessageState.QUEUED, MessageState.SENDING, MessageState.DEFERRED)


def withdraw_claimed(
    session: Session, claim: Claim, ids: Iterable[int], reason: str, *, now: datetime | None = None
) -> Claim:
    """Cancel claimed rows that must not be sent after all (the address was suppressed or
    unsubscribed after the snapshot); returns the claim without them."""
    withdrawn = set(ids)
    if not withdrawn:
        return claim
    now = now or utcnow()
    session.execute(
        update(Message)
        .where(
            col(Message.id).in_(list(withdrawn)),
            col(Message.claim_token) == claim.token,
            col(Message.state) == MessageState.SENDING,
        )
        .values(state=MessageState.CANCELLED, reply_text=reason[:1000], updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return Claim(claim.token, [row for row in claim.rows if row.id not in withdrawn])


def has_open_rows(session: Session, campaign_id: int) -> bool:
    """Whether the campaign still has rows to send (one index probe, run after every batch:
    counting a large campaign's rows there would cost a scan per batch)."""
    probe = (
        select(col(Message.id))
        .where(col(Message.campaign_id) == campaign_id, col(Message.state).in_(OPEN_STATES))
        .limit(1)
    )
    return session.execute(probe).first() is not None


def counts_by_campaign(session: Session, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Rows by state for several campaigns, in one grouped query (for lists of campaigns)."""
    counts: dict[int, dict[str, int]] = {campaign_id: {} for campaign_id in campaign_ids}
    if not campaign_ids:
        return counts
    rows = session.execute(
        select(col(Message.campaign_id), col(Message.state), func.count())
        .where(col(Message.campaign_id).in_(list(campaign_ids)))
        .group_by(col(Message.campaign_id), col(Message.state))
    ).all()
    for campaign_id, state, n in rows:
        counts[int(campaign_id)][state] = int(n)
    return counts


def count_by_state(session: Session, campaign_id: int) -> dict[str, int]:
    rows = session.execute(
        select(col(Message.state), func.count())
        .where(col(Message.campaign_id) == campaign_id)
        .group_by(col(Message.state))
    ).all()
    return {state: int(n) for state, n in rows}


def pending_ids(session: Session, campaign_id: int) -> list[int]:
    """Ids of rows still to send (queued, or deferred whatever their due time)."""
    return list(
        session.execute(
            select(col(Message.id))
            .where(
                col(Message.campaign_id) == campaign_id,
                col(Message.state).in_([MessageState.QUEUED, MessageState.DEFERRED]),
            )
            .order_by(col(Message.id))
        ).scalars()
    )


@dataclass(frozen=True, slots=True)
class Released:
    campaigns: list[int]  # campaigns with rows offered again
    failed: list[tuple[int, int, int | None]]  # (message, account, campaign) given up


def release_expired_claims(
    session: Session, lease: timedelta, *, max_attempts: int, now: datetime | None = None
) -> Released:
    """Settle the rows a dead worker claimed and never recorded.

    The worker died (or was stopped by its time limit) between its claim and recording the
    outcome; the relay may or may not have accepted those messages.  Until the delivery
    engine keeps a durable acceptance journal, such a row is offered again after the lease
    (at-least-once for that window), and fails once it has used *max_attempts* (a message
    that kills its worker every time must not loop forever).
    """
    now = now or utcnow()
    stale = and_(col(Message.state) == MessageState.SENDING, col(Message.claimed_at) < now - lease)
    campaigns = list(
        session.execute(select(col(Message.campaign_id)).where(stale).distinct()).scalars()
    )
    failed: list[tuple[int, int, int | None]] = []
    if campaigns:
        exhausted = col(Message.attempts) >= max_attempts
        failed = [
            (int(m), int(a), c)
            for m, a, c in session.execute(
                select(col(Message.id), col(Message.account_id), col(Message.campaign_id)).where(
                    stale, exhausted
                )
            ).all()
        ]
        session.execute(
            update(Message)
            .where(stale, exhausted)
            .values(
                state=MessageState.FAILED,
                claim_token=None,
                reply_text="gave up: the worker stopped while sending, attempt after attempt",
                updated_at=now,
            )
        )
        session.execute(
            update(Message)
            .where(stale, ~exhausted)
            .values(state=MessageState.QUEUED, claim_token=None, updated_at=now)
        )
    return Released([c for c in campaigns if c is not None], failed)


def waiting_deferred(
    session: Session, message_ids: Sequence[int]
) -> tuple[list[int], datetime | None]:
    """The deferred rows among *message_ids* and the earliest time one of them is due."""
    rows = session.execute(
        select(col(Message.id), col(Message.next_attempt_at)).where(
            col(Message.id).in_(list(message_ids)), col(Message.state) == MessageState.DEFERRED
        )
    ).all()
    due_times = [due for _id, due in rows if due is not None]
    return [int(row_id) for row_id, _due in rows], min(due_times) if due_times else None


def last_activity(session: Session, campaign_id: int) -> datetime | None:
    """When a row of the campaign last changed (a stalled send shows no activity)."""
    return session.execute(
        select(func.max(col(Message.updated_at))).where(col(Message.campaign_id) == campaign_id)
    ).scalar()


def claim_of(session: Session, token: str) -> Claim:
    """The rows a claim still holds (to apply a dead worker's journal to them)."""
    rows = session.execute(
        select(*_CLAIMED_COLUMNS)
        .where(col(Message.claim_token) == token, col(Message.state) == MessageState.SENDING)
        .order_by(col(Message.id))
    ).all()
    return Claim(token, [ClaimedRow(*row) for row in rows])


def release_claim(session: Session, token: str, *, now: datetime | None = None) -> list[int]:
    """Offer again, at once, the rows a dead worker claimed and never reported; returns
    their campaigns.  (Its journal said nothing about them: they were not sent, or were
    in flight when it died, and then a resend is the at-most-one duplicate we accept.)"""
    stale = and_(col(Message.claim_token) == token, col(Message.state) == MessageState.SENDING)
    campaigns = list(
        session.execute(select(col(Message.campaign_id)).where(stale).distinct()).scalars()
    )
    session.execute(
        update(Message)
        .where(stale)
        .values(state=MessageState.QUEUED, claim_token=None, updated_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return [c for c in campaigns if c is not None]
