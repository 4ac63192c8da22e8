"""The event table and the permanent per-campaign counters events are rolled up into."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, false
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.storage.types import JsonDict, UtcDateTime


class EventKind(StrEnum):
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    CAMPAIGN_STATE = "campaign_state"
    OPENED = "opened"  # data: ua, ip, reasons (why a machine), proxy, web
    CLICKED = "clicked"  # data: link (index), url, ua, ip, reasons
    SCANNED = "scanned"  # a machine followed the hidden link no human sees
    BOUNCED = "bounced"  # data: hard, reason, status, code, text
    DELAYED = "delayed"  # a delay notice (DSN Action: delayed): not a bounce
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"  # data: source, list_id (one list) or none (all)
    RESUBSCRIBED = "resubscribed"
    # SMS: data of each: gateway, parts, provider ids, status / error (sms/ reports them)
    SMS_SUBMITTED = "sms_submitted"  # accepted by the gateway (submit_sm_resp OK)
    SMS_DELIVERED = "sms_delivered"  # final receipt: delivered (the allowance is charged)
    SMS_UNDELIVERED = "sms_undelivered"  # final receipt: undelivered, expired or rejected
    SMS_INBOUND = "sms_inbound"  # a reply (MO); data: from, to, text, keyword


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_campaign_kind", "campaign_id", "kind"),
        Index("ix_events_contact_kind", "contact_id", "kind", "occurred_at"),
        Index("ix_events_occurred_at", "occurred_at"),
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
    # An open or click by a machine (proxy prefetch, link scanner); data["reasons"] says why.
    machine: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)


NO_LINK = -1
"""``CampaignCounter.link`` of the figures that are not about one link."""


class CampaignCounter(SQLModel, table=True):
    """A campaign's figures from events that were deleted after the retention period.

    Permanent: the statistics of a campaign are these counters plus its live events.
    """

    __tablename__ = "campaign_counters"

    campaign_id: int = Field(primary_key=True)
    metric: str = Field(primary_key=True, max_length=32)
    link: int = Field(default=NO_LINK, primary_key=True)
    account_id: int = Field(index=True)
    value: int = Field(default=0, sa_type=BigInteger)
    url: str = Field(default="", max_length=2000)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
