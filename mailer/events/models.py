"""The event table."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.storage.types import JsonDict, UtcDateTime


class EventKind(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    CAMPAIGN_STATE = "campaign_state"
    OPENED = "opened"
    CLICKED = "clicked"


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_campaign_kind", "campaign_id", "kind"),
        Index("ix_events_contact_kind", "contact_id", "kind", "occurred_at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    account_id: int = Field(index=True)
    kind: str = Field(max_length=32)
    message_id: int | None = Field(default=None, index=True)
    contact_id: int | None = None
    campaign_id: int | None = None
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
