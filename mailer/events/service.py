"""Appending events in bulk and reading them back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from mailer.core.clock import utcnow
from mailer.events.models import Event


def append_many(
    session: Session,
    account_id: int,
    kind: str,
    message_ids: Sequence[int],
    *,
    campaign_id: int | None = None,
    data: dict[int, dict[str, Any]] | None = None,
    now: datetime | None = None,
    contact_ids: Mapping[int, int | None] | None = None,
) -> None:
    """One event of *kind* per message id, in one executemany (*contact_ids*: each
    message's contact, which engagement segments and bounce policies read)."""
    if not message_ids:
        return
    now = now or utcnow()
    data = data or {}
    contact_ids = contact_ids or {}
    session.execute(
        insert(Event),
        [
            {
                "account_id": account_id,
                "kind": kind,
                "message_id": message_id,
                "campaign_id": campaign_id,
                "contact_id": contact_ids.get(message_id),
                "occurred_at": now,
                "data": data.get(message_id, {}),
            }
            for message_id in message_ids
        ],
    )


def append(
    session: Session,
    account_id: int,
    kind: str,
    *,
    campaign_id: int | None = None,
    message_id: int | None = None,
    contact_id: int | None = None,
    **data: Any,
) -> None:
    session.add(
        Event(
            account_id=account_id,
            kind=kind,
            campaign_id=campaign_id,
            message_id=message_id,
            contact_id=contact_id,
            data=data,
        )
    )
