"""The suppression list: addresses and phones an account must never message again.

Checked at import (a suppressed address is not re-added), at segment evaluation and in
the audience of every send (:func:`not_suppressed`), and once more by the send path just
before delivery (:func:`suppressed_among`), so an unsubscribe between the snapshot and the
send still holds.

Every entry carries a hash of its value; after an erasure request the value itself is
blanked and the hash alone keeps blocking the address (Ley 29733: no personal data kept,
the person never mailed again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, exists, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from mailer.audience.models import Contact, Suppression
from mailer.cleaning.phones import check_phone
from mailer.core.clock import utcnow
from mailer.core.errors import ValidationFailed

HASH_PREFIX = b"mailer-suppression-v1\x00"


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    INVALID = "invalid"
    MANUAL = "manual"
    ERASED = "erased"


SUPPRESSION_LABELS_ES: dict[str, str] = {
    SuppressionReason.UNSUBSCRIBED: "Se dio de baja",
    SuppressionReason.BOUNCED: "Rebote permanente",
    SuppressionReason.COMPLAINED: "Queja por correo no deseado",
    SuppressionReason.INVALID: "Dirección no válida",
    SuppressionReason.MANUAL: "Agregado a mano",
    SuppressionReason.ERASED: "Datos eliminados a pedido del titular",
}

CHANNELS = ("email", "sms")


def normalise_value(channel: str, value: str) -> str:
    """Addresses in lower case; phones in E.164 when they are valid (as contacts store them),
    so "987 654 321" and "+51987654321" are one entry."""
    value = value.strip()
    if channel == "email":
        return value.lower()
    checked = check_phone(value)
    return checked.e164 if checked.ok else value.replace(" ", "")


def value_hash(channel: str, value: str) -> str:
    """SHA-256 of the normalised value (the same on every install, so a list of hashes can
    be moved between installs)."""
    digest = hashlib.sha256(HASH_PREFIX + channel.encode() + b"\x00")
    digest.update(normalise_value(channel, value).encode())
    return digest.hexdigest()


def check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValidationFailed(
            "unknown channel '{channel}': use email or sms", field="channel", channel=channel
        )


def suppress(
    session: Session,
    account_id: int,
    channel: str,
    values: Iterable[str],
    reason: str,
    source: str = "",
    *,
    keep_value: bool = True,
) -> int:
    """Add entries (existing ones are kept as they are); returns how many were new."""
    check_channel(channel)
    if reason not in set(SuppressionReason):
        raise ValidationFailed(
            "unknown suppression reason '{reason}'", field="reason", reason=reason
        )
    rows: dict[str, dict[str, Any]] = {}
    for value in values:
        normalised = normalise_value(channel, value)
        if not normalised:
            continue
        digest = value_hash(channel, normalised)
        rows[digest] = {
            "account_id": account_id,
            "channel": channel,
            "value": normalised if keep_value else "",
            "value_hash": digest,
            "reason": reason,
            "source": source[:200],
        }
    if not rows:
        return 0
    existing = _stored_hashes(session, account_id, channel, list(rows))
    new = [row for digest, row in rows.items() if digest not in existing]
    if not new:
        return 0
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(Suppression)
    now = utcnow()
    # ON CONFLICT: a concurrent writer may have added the same entry since the SELECT.
    session.execute(statement.on_conflict_do_nothing(), [{**row, "created_at": now} for row in new])
    return len(new)


def unsuppress(session: Session, account_id: int, channel: str, value: str) -> bool:
    """Remove an entry (a person who opted in again); erased entries cannot be removed by
    value, which is the point of them."""
    check_channel(channel)
    result = session.execute(
        delete(Suppression).where(
            col(Suppression.account_id) == account_id,
            col(Suppression.channel) == channel,
            col(Suppression.value_hash) == value_hash(channel, value),
            col(Suppression.reason) != SuppressionReason.ERASED,
        )
    )
    return bool(getattr(result, "rowcount", 0))


def count_suppressions(session: Session, account_id: int, channel: str | None = None) -> int:
    query = select(func.count()).where(col(Suppression.account_id) == account_id)
    if channel:
        query = query.where(col(Suppression.channel) == channel)
    return int(session.execute(query).scalar_one())


def suppressed_among(
    session: Session, account_id: int, channel: str, values: Iterable[str]
) -> set[str]:
    """The given values (as given) that are suppressed, found by their hashes."""
    by_hash: dict[str, list[str]] = {}
    for value in values:
        by_hash.setdefault(value_hash(channel, value), []).append(value)
    return {
        value
        for digest in _stored_hashes(session, account_id, channel, list(by_hash))
        for value in by_hash[digest]
    }


def _stored_hashes(session: Session, account_id: int, channel: str, hashes: list[str]) -> set[str]:
    """The given hashes that have an entry (in chunks: SQLite caps bound parameters)."""
    found: set[str] = set()
    for start in range(0, len(hashes), 900):
        found.update(
            session.execute(
                _STORED_HASHES,
                {"account": account_id, "channel": channel, "hashes": hashes[start : start + 900]},
            ).scalars()
        )
    return found


# Built once: every API send asks it, and building a statement costs more than running it.
_STORED_HASHES = select(col(Suppression.value_hash)).where(
    col(Suppression.account_id) == bindparam("account"),
    col(Suppression.channel) == bindparam("channel"),
    col(Suppression.value_hash).in_(bindparam("hashes", expanding=True)),
)


def is_suppressed(session: Session, account_id: int, channel: str, value: str) -> bool:
    return bool(suppressed_among(session, account_id, channel, [value]))


def not_suppressed(account_id: int, channel: str = "email") -> ColumnElement[bool]:
    """WHERE clause: the contact's address (or phone) is not on the suppression list.

    Entries whose value was erased cannot match a contact row: the erased contact is gone,
    and import refuses to bring the address back (:func:`suppressed_among`)."""
    column = col(Contact.email) if channel == "email" else col(Contact.phone)
    return ~exists().where(
        col(Suppression.account_id) == account_id,
        col(Suppression.channel) == channel,
        col(Suppression.value) == column,
    )


def list_suppressions(
    session: Session,
    account_id: int,
    *,
    channel: str | None = None,
    search: str = "",
    offset: int = 0,
    limit: int = 100,
) -> list[Suppression]:
    query = select(Suppression).where(col(Suppression.account_id) == account_id)
    if channel:
        query = query.where(col(Suppression.channel) == channel)
    if search.strip():
        query = query.where(col(Suppression.value).contains(search.strip().lower()))
    return list(
        session.execute(
            query.order_by(col(Suppression.id).desc()).offset(offset).limit(limit)
        ).scalars()
    )
