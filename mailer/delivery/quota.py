"""Daily caps and warm-up of relays, shared by every worker through the ``relay_usage`` table.

A relay with a ``daily_cap`` or a warm-up schedule may take only so many messages a day.
A batch first *reserves* its share with a conditional update (two workers never both
take the last hundred), sends, then gives back what it did not use.  Warm-up: on day *n*
(0 on the first day) a relay may take ``warmup_start * warmup_growth ** n`` messages,
never more than its cap; the first day is ``warmup_started_on`` or, if unset, the first
day the relay was used.  Relays with neither limit are not counted at all.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from mailer.core.config import RelaySettings
from mailer.delivery.models import RelayUsage

__all__ = ["any_limited", "daily_allowance", "give_back", "reserve", "usage_on"]


def daily_allowance(relay: RelaySettings, day: date, first_day: date | None) -> int | None:
    """Messages *relay* may take on *day* (None: unlimited)."""
    allowance: int | None = relay.daily_cap or None
    if relay.warmup_start:
        start = relay.warmup_started_on or first_day or day
        days = max(0, (day - start).days)
        warm = relay.warmup_start * relay.warmup_growth ** min(days, 200)
        if warm < (allowance or float("inf")):
            allowance = int(warm)
    return allowance


def _limited(relay: RelaySettings) -> bool:
    return bool(relay.daily_cap or relay.warmup_start)


def any_limited(relays: list[RelaySettings]) -> bool:
    """Whether any relay has a daily cap or a warm-up (else nothing needs reserving)."""
    return any(_limited(relay) for relay in relays)


def reserve(
    session: Session, relays: list[RelaySettings], wanted: int, day: date
) -> dict[str, int | None]:
    """Reserve up to *wanted* messages on each limited relay for *day*; None = no limit.

    Commit soon after: the reservation is what other workers see.
    """
    budgets: dict[str, int | None] = {}
    for relay in relays:
        if not _limited(relay):
            budgets[relay.label] = None
            continue
        _ensure_row(session, relay.label, day)
        first_day = session.execute(
            select(func.min(col(RelayUsage.day))).where(col(RelayUsage.relay) == relay.label)
        ).scalar()
        allowance = daily_allowance(relay, day, first_day) or 0
        taken = 0
        for _ in range(3):
            used = session.execute(
                select(col(RelayUsage.sent)).where(
                    col(RelayUsage.relay) == relay.label, col(RelayUsage.day) == day
                )
            ).scalar_one()
            take = max(0, min(wanted, allowance - int(used)))
            if take == 0:
                break
            done = session.execute(
                update(RelayUsage)
                .where(
                    col(RelayUsage.relay) == relay.label,
                    col(RelayUsage.day) == day,
                    col(RelayUsage.sent) == used,  # unchanged since we read it
                )
                .values(sent=col(RelayUsage.sent) + take)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount:  # type: ignore[attr-defined]
                taken = take
                break
        budgets[relay.label] = taken
    return budgets


def give_back(
    session: Session, reserved: dict[str, int | None], used: dict[str, int], day: date
) -> None:
    """Return the reserved messages a batch did not send."""
    for label, amount in reserved.items():
        unused = (amount or 0) - used.get(label, 0)
        if amount is None or unused <= 0:
            continue
        session.execute(
            update(RelayUsage)
            .where(col(RelayUsage.relay) == label, col(RelayUsage.day) == day)
            .values(sent=col(RelayUsage.sent) - unused)
            .execution_options(synchronize_session=False)
        )


def _ensure_row(session: Session, label: str, day: date) -> None:
    exists = session.execute(
        select(col(RelayUsage.sent)).where(
            col(RelayUsage.relay) == label, col(RelayUsage.day) == day
        )
    ).first()
    if exists is not None:
        return
    try:
        with session.begin_nested():
            session.execute(insert(RelayUsage).values(relay=label, day=day, sent=0))
    except IntegrityError:
        pass  # another worker created it first


def usage_on(
    session: Session, relays: list[RelaySettings], day: date
) -> dict[str, tuple[int, int | None]]:
    """Per relay: messages taken on *day* (counted for limited relays only) and allowed."""
    taken = dict(
        session.execute(
            select(col(RelayUsage.relay), col(RelayUsage.sent)).where(col(RelayUsage.day) == day)
        ).all()
    )
    firsts = dict(
        session.execute(
            select(col(RelayUsage.relay), func.min(col(RelayUsage.day))).group_by(
                col(RelayUsage.relay)
            )
        ).all()
    )
    return {
        r.label: (int(taken.get(r.label, 0)), daily_allowance(r, day, firsts.get(r.label)))
        for r in relays
    }
