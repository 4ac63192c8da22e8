"""The credit ledger: allowances per account and channel, as movements, never a bare counter.

An allowance is *granted* (with a validity), *reserved* when messages are queued, then
*charged* for the messages that count (accepted e-mails, delivered SMS) and *released* for
the others; an administrator *transfers* part of it to a sub-account (it leaves the parent),
and what is left when the validity ends *expires*.  Every movement is a ``credit_entries``
row with the balance right after it; ``credit_balances`` holds the running balance, changed
by one guarded ``UPDATE ... RETURNING`` per movement, so two workers can never both spend the
last units (the row lock serialises them on PostgreSQL, the write lock on SQLite).

An account with no balance row for a channel is not metered on it: a self-hosted install
sends without allowances until an operator grants one.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BindParameter, Executable, bindparam, func, insert, or_, select, update
from sqlmodel import Session, col

from mailer.accounts.models import Account, CreditBalance, CreditEntry, CreditKind
from mailer.core.clock import utcnow
from mailer.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from mailer.core.types import Channel
from mailer.storage.db import attach_inserted

log = logging.getLogger(__name__)

__all__ = [
    "EFFECTS",
    "Balance",
    "InsufficientCredit",
    "balance",
    "balances",
    "expire_due",
    "grant",
    "movements",
    "reserve",
    "settle",
    "transfer",
    "verify",
]

# (change of available, change of held) per unit of each movement.
EFFECTS: dict[CreditKind, tuple[int, int]] = {
    CreditKind.GRANT: (1, 0),
    CreditKind.RESERVE: (-1, 1),
    CreditKind.CHARGE: (0, -1),
    CreditKind.RELEASE: (1, -1),
    CreditKind.TRANSFER_OUT: (-1, 0),
    CreditKind.TRANSFER_IN: (1, 0),
    CreditKind.EXPIRE: (-1, 0),
}


class InsufficientCredit(Conflict):
    code = "insufficient_credit"


@dataclass(frozen=True, slots=True)
class Balance:
    channel: str
    available: int
    held: int
    valid_until: datetime | None

    @property
    def expired(self) -> bool:
        return self.valid_until is not None and self.valid_until <= utcnow()


def _channel(channel: str) -> str:
    try:
        return Channel(channel).value
    except ValueError:
        raise ValidationFailed(
            "unknown channel '{channel}'; use email or sms", field="channel", channel=channel
        ) from None


def _positive(quantity: int) -> int:
    if quantity <= 0:
        raise ValidationFailed(
            "the quantity must be a positive whole number, not {quantity}",
            field="quantity",
            quantity=quantity,
        )
    return quantity


def _move(
    session: Session,
    account_id: int,
    channel: str,
    kind: CreditKind,
    quantity: int,
    *,
    ref: str = "",
    actor: str = "",
    note: str = "",
    counterpart_id: int | None = None,
    valid_until: datetime | None = None,
    while_valid: bool = False,
) -> CreditEntry | None:
    """Apply one movement if the balance allows it (and, *while_valid*, if its validity
    has not ended); None when it does not (or the account is not metered on *channel*).

    One statement on PostgreSQL (the guarded ``UPDATE ... RETURNING`` and the entry's
    ``INSERT`` in one CTE), two on SQLite; the statements are built once per kind of
    movement (building one costs more than running it, and a send reserves every time)."""
    now = utcnow()
    params: dict[str, object] = {
        "p_account_id": account_id,
        "p_channel": channel,
        "p_kind": kind.value,
        "p_quantity": quantity,
        "p_ref": ref[:200],
        "p_actor": actor[:200],
        "p_note": note[:500],
        "p_counterpart_id": counterpart_id,
        "p_valid_until": valid_until,
        "p_now": now,
    }
    if valid_until is not None:
        # The latest validity of the grants wins (read under the same transaction).
        current = session.execute(
            select(col(CreditBalance.valid_until)).where(
                col(CreditBalance.account_id) == account_id,
                col(CreditBalance.channel) == channel,
            )
        ).scalar_one_or_none()
        params["p_balance_valid_until"] = max(current, valid_until) if current else valid_until
    moved, entry, both = _statements(kind, valid_until is not None, while_valid)
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(both, params).first()
        if row is None:
            return None
        entry_id, available, held = row
    else:
        after = session.execute(moved, params).first()
        if after is None:
            return None
        available, held = after
        entry_id = session.execute(
            entry, params | {"p_available": int(available), "p_held": int(held)}
        ).scalar_one()
    created = CreditEntry(
        id=entry_id,
        account_id=account_id,
        channel=channel,
        kind=kind,
        quantity=quantity,
        available_after=int(available),
        held_after=int(held),
        ref=ref[:200],
        counterpart_id=counterpart_id,
        actor=actor[:200],
        note=note[:500],
        valid_until=valid_until,
        created_at=now,
    )
    attach_inserted(session, [created])
    return created


_BALANCES = CreditBalance.__table__  # type: ignore[attr-defined]
_ENTRIES = CreditEntry.__table__  # type: ignore[attr-defined]
# The entry's columns and their parameters (a bind may not be named after a column of the
# INSERT or UPDATE it is in).
_ENTRY_PARAMS = {
    "account_id": "p_account_id",
    "channel": "p_channel",
    "kind": "p_kind",
    "quantity": "p_quantity",
    "ref": "p_ref",
    "actor": "p_actor",
    "note": "p_note",
    "counterpart_id": "p_counterpart_id",
    "valid_until": "p_valid_until",
    "created_at": "p_now",
}


@functools.cache
def _statements(
    kind: CreditKind, sets_validity: bool, while_valid: bool
) -> tuple[Executable, Executable, Executable]:
    """The statements of one kind of movement: the guarded ``UPDATE ... RETURNING`` of the
    balance, the entry's ``INSERT ... RETURNING id``, and both in one CTE (PostgreSQL)."""
    d_available, d_held = EFFECTS[kind]
    quantity: BindParameter[int] = bindparam("p_quantity")
    conditions = [
        _BALANCES.c.account_id == bindparam("p_account_id"),
        _BALANCES.c.channel == bindparam("p_channel"),
    ]
    if d_available < 0:
        conditions.append(_BALANCES.c.available >= quantity)
    if d_held < 0:
        conditions.append(_BALANCES.c.held >= quantity)
    if while_valid:
        conditions.append(
            or_(_BALANCES.c.valid_until.is_(None), _BALANCES.c.valid_until > bindparam("p_now"))
        )
    values: dict[str, object] = {"updated_at": bindparam("p_now")}
    if d_available:
        values["available"] = _BALANCES.c.available + d_available * quantity
    if d_held:
        values["held"] = _BALANCES.c.held + d_held * quantity
    if sets_validity:
        values["valid_until"] = bindparam("p_balance_valid_until")
    moved = (
        update(_BALANCES)
        .where(*conditions)
        .values(values)
        .returning(_BALANCES.c.available, _BALANCES.c.held)
    )
    entry = (
        insert(_ENTRIES)
        .values(
            {column: bindparam(param) for column, param in _ENTRY_PARAMS.items()}
            | {"available_after": bindparam("p_available"), "held_after": bindparam("p_held")}
        )
        .returning(_ENTRIES.c.id)
    )
    # Typed binds: PostgreSQL cannot infer the type of a bare parameter in a SELECT list.
    after = moved.cte("moved")
    both = (
        insert(_ENTRIES)
        .from_select(
            [*_ENTRY_PARAMS, "available_after", "held_after"],
            select(
                *(
                    bindparam(param, type_=_ENTRIES.c[column].type)
                    for column, param in _ENTRY_PARAMS.items()
                ),
                after.c.available,
                after.c.held,
            ),
        )
        .returning(_ENTRIES.c.id, _ENTRIES.c.available_after, _ENTRIES.c.held_after)
    )
    return moved, entry, both


def _ensure_balance(session: Session, account_id: int, channel: str) -> None:
    if session.get(CreditBalance, (account_id, channel)) is None:
        session.add(CreditBalance(account_id=account_id, channel=channel))
        session.flush()


def balance(session: Session, account_id: int, channel: str) -> Balance | None:
    """The balance of *account_id* on *channel*; None when the channel is not metered."""
    row = session.execute(
        select(CreditBalance).where(
            col(CreditBalance.account_id) == account_id,
            col(CreditBalance.channel) == _channel(channel),
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Balance(row.channel, row.available, row.held, row.valid_until)


def balances(session: Session, account_id: int) -> list[Balance]:
    rows = session.execute(
        select(CreditBalance)
        .where(col(CreditBalance.account_id) == account_id)
        .order_by(col(CreditBalance.channel))
    ).scalars()
    return [Balance(r.channel, r.available, r.held, r.valid_until) for r in rows]


def grant(
    session: Session,
    account_id: int,
    channel: str,
    quantity: int,
    *,
    valid_days: int | None = 365,
    actor: str = "",
    note: str = "",
) -> CreditEntry:
    """Give *account_id* an allowance of *quantity* units on *channel*, valid *valid_days*
    from now (None: no end).  The validity of the balance is the latest of its grants'."""
    channel = _channel(channel)
    _positive(quantity)
    if session.get(Account, account_id) is None:
        raise NotFound("account {id} does not exist", field="account_id", id=account_id)
    _ensure_balance(session, account_id, channel)
    until = utcnow() + timedelta(days=valid_days) if valid_days else None
    entry = _move(
        session,
        account_id,
        channel,
        CreditKind.GRANT,
        quantity,
        ref="grant",
        actor=actor,
        note=note,
        valid_until=until,
    )
    assert entry is not None  # a grant never lacks anything
    return entry


def reserve(
    session: Session, account_id: int, channel: str, quantity: int, *, ref: str, actor: str = ""
) -> bool:
    """Hold *quantity* units for messages being queued.  False when the account is not
    metered on *channel* (nothing to hold); raises :class:`InsufficientCredit` when it is
    and the allowance (still valid) does not cover them."""
    channel = _channel(channel)
    if quantity <= 0:
        return balance(session, account_id, channel) is not None
    if _move(
        session,
        account_id,
        channel,
        CreditKind.RESERVE,
        quantity,
        ref=ref,
        actor=actor,
        while_valid=True,
    ):
        return True
    # Not metered, expired, or short: find out which (a few more reads, off the hot path).
    current = balance(session, account_id, channel)
    if current is None:
        return False
    if current.expired:
        _expire(session, account_id, channel)
        raise InsufficientCredit(
            "the {channel} allowance of this account expired on {date}; ask your "
            "administrator for a new one",
            field="quantity",
            channel=channel,
            date=current.valid_until.date().isoformat() if current.valid_until else "",
        )
    if _move(session, account_id, channel, CreditKind.RESERVE, quantity, ref=ref, actor=actor):
        return True
    left = balance(session, account_id, channel)
    raise InsufficientCredit(
        "not enough {channel} allowance: this send needs {needed} and the account has "
        "{available} left; ask your administrator to add or transfer more",
        field="quantity",
        channel=channel,
        needed=quantity,
        available=left.available if left else 0,
    )


def settle(
    session: Session,
    account_id: int,
    channel: str,
    *,
    charged: int = 0,
    released: int = 0,
    ref: str = "",
) -> None:
    """Settle held units: *charged* are consumed, *released* return to the balance.
    Nothing happens for an account not metered on *channel*."""
    channel = _channel(channel)
    for kind, quantity in ((CreditKind.CHARGE, charged), (CreditKind.RELEASE, released)):
        if quantity <= 0:
            continue
        moved = _move(session, account_id, channel, kind, quantity, ref=ref)
        if moved is None and balance(session, account_id, channel) is not None:
            # More settled than held: a bug, never a reason to lose the outcome.
            log.error(
                "credit ledger: cannot %s %d %s of account %d (%s): not held",
                kind,
                quantity,
                channel,
                account_id,
                ref,
            )


def transfer(
    session: Session,
    from_account: int,
    to_account: int,
    channel: str,
    quantity: int,
    *,
    actor: str = "",
    note: str = "",
) -> tuple[CreditEntry, CreditEntry]:
    """Move *quantity* available units between an account and one of its direct
    sub-accounts (either way: give to a sub-account, or take back what it has not used).
    The units leave one balance and enter the other in the same transaction."""
    channel = _channel(channel)
    _positive(quantity)
    source, target = session.get(Account, from_account), session.get(Account, to_account)
    if source is None or target is None:
        missing = from_account if source is None else to_account
        raise NotFound("account {id} does not exist", field="account_id", id=missing)
    if target.parent_id != source.id and source.parent_id != target.id:
        raise PermissionDenied(
            "allowances move only between an account and its own sub-accounts",
            field="account_id",
        )
    current = balance(session, from_account, channel)
    if current is None:
        raise InsufficientCredit(
            "account {id} has no {channel} allowance to transfer",
            field="quantity",
            id=from_account,
            channel=channel,
        )
    out = _move(
        session,
        from_account,
        channel,
        CreditKind.TRANSFER_OUT,
        quantity,
        ref=f"account:{to_account}",
        actor=actor,
        note=note,
        counterpart_id=to_account,
    )
    if out is None:
        raise InsufficientCredit(
            "not enough {channel} allowance to transfer {needed}: {available} available",
            field="quantity",
            channel=channel,
            needed=quantity,
            available=current.available,
        )
    _ensure_balance(session, to_account, channel)
    into = _move(
        session,
        to_account,
        channel,
        CreditKind.TRANSFER_IN,
        quantity,
        ref=f"account:{from_account}",
        actor=actor,
        note=note,
        counterpart_id=from_account,
        valid_until=current.valid_until,
    )
    assert into is not None
    return out, into


def _expire(session: Session, account_id: int, channel: str) -> CreditEntry | None:
    current = balance(session, account_id, channel)
    if current is None or current.available <= 0:
        return None
    return _move(
        session,
        account_id,
        channel,
        CreditKind.EXPIRE,
        current.available,
        ref="validity",
        note=f"valid until {current.valid_until.isoformat() if current.valid_until else ''}",
    )


def expire_due(session: Session, *, now: datetime | None = None) -> int:
    """Expire what is left of every allowance whose validity has ended; returns how many
    balances expired.  Held units still settle (a release after the end expires at the
    next run)."""
    now = now or utcnow()
    due = session.execute(
        select(col(CreditBalance.account_id), col(CreditBalance.channel)).where(
            col(CreditBalance.valid_until) <= now, col(CreditBalance.available) > 0
        )
    ).all()
    return sum(1 for account_id, channel in due if _expire(session, account_id, channel))


def movements(
    session: Session,
    account_id: int,
    *,
    channel: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[CreditEntry]:
    """The movements of an account, newest first."""
    query = select(CreditEntry).where(col(CreditEntry.account_id) == account_id)
    if channel:
        query = query.where(col(CreditEntry.channel) == _channel(channel))
    query = query.order_by(col(CreditEntry.id).desc()).offset(offset).limit(limit)
    return list(session.execute(query).scalars())


def verify(session: Session, account_id: int, channel: str) -> tuple[int, int]:
    """The (available, held) balance recomputed from the movements alone; equal to
    :func:`balance` unless someone changed ``credit_balances`` behind the ledger's back."""
    rows = session.execute(
        select(col(CreditEntry.kind), func.sum(col(CreditEntry.quantity)))
        .where(
            col(CreditEntry.account_id) == account_id,
            col(CreditEntry.channel) == _channel(channel),
        )
        .group_by(col(CreditEntry.kind))
    ).all()
    available = held = 0
    for kind, total in rows:
        d_available, d_held = EFFECTS[CreditKind(kind)]
        available += d_available * int(total)
        held += d_held * int(total)
    return available, held
