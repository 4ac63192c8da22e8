"""The ledger table and its state machine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.core.statemachine import StateMachine
from mailer.storage.types import JsonDict, UtcDateTime


class MessageState(StrEnum):
    QUEUED = "queued"  # in the ledger, not yet handed to a transport
    SENDING = "sending"  # claimed by a worker (claim_token), outcome not yet recorded
    SENT = "sent"  # accepted by the relay (e-mail) or the gateway (SMS)
    DEFERRED = "deferred"  # temporary failure; next_attempt_at says when to try again
    FAILED = "failed"  # permanent failure, or retries exhausted
    BOUNCED = "bounced"  # accepted, then bounced back asynchronously
    CANCELLED = "cancelled"  # withdrawn before it was sent
    # SMS only, after SENT ("submitted": the gateway took it), from delivery receipts:
    DELIVERED = "delivered"  # every part delivered to the handset
    UNDELIVERED = "undelivered"  # a part was undeliverable, rejected or deleted
    EXPIRED = "expired"  # no final receipt within the validity period


_M = MessageState
MESSAGE_STATE = StateMachine[MessageState](
    "ledger row",
    {
        _M.QUEUED: frozenset({_M.SENDING, _M.CANCELLED, _M.FAILED}),
        # CANCELLED from SENDING: suppressed between the snapshot and the send.
        _M.SENDING: frozenset({_M.SENT, _M.DEFERRED, _M.FAILED, _M.QUEUED, _M.CANCELLED}),
        _M.DEFERRED: frozenset({_M.SENDING, _M.FAILED, _M.CANCELLED}),
        _M.SENT: frozenset({_M.BOUNCED, _M.DELIVERED, _M.UNDELIVERED, _M.EXPIRED}),
        _M.FAILED: frozenset(),
        _M.BOUNCED: frozenset(),
        _M.CANCELLED: frozenset(),
        _M.DELIVERED: frozenset(),
        _M.UNDELIVERED: frozenset(),
        # A receipt that comes after the validity period is recorded as an event only:
        # the allowance was already released, and the account is not charged late.
        _M.EXPIRED: frozenset(),
    },
)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id"),
        Index("ix_messages_campaign_state", "campaign_id", "state"),
        Index("ix_messages_campaign_sent", "campaign_id", "sent_at"),  # the live send rate
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    campaign_id: int | None = Field(default=None, foreign_key="campaigns.id")
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    channel: str = Field(default="email", max_length=8)
    to_address: str = Field(max_length=320)
    to_name: str = Field(default="", max_length=300)
    state: str = Field(default=MessageState.QUEUED, max_length=16)
    attempts: int = 0
    claim_token: str | None = Field(default=None, max_length=32)
    claimed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    relay: str = Field(default="", max_length=200)
    reply_code: int | None = None
    reply_text: str = Field(default="", max_length=1000)
    provider_id: str | None = Field(default=None, max_length=200, index=True)
    header_message_id: str | None = Field(default=None, max_length=250)
    # SMS: the parts the message costs (reserved when queued; charged when delivered).
    parts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # What a message sent alone carries (an API SMS: text, sender; its links), where a
    # campaign's rows take it from the campaign.
    payload: dict[str, Any] | None = Field(default=None, sa_type=JsonDict)
    # Who asked for it: "apikey:7 (ERP Compras)", "user:3"; "" for a campaign's rows.
    origin: str = Field(default="", max_length=200, sa_column_kwargs={"server_default": ""})
    final_at: datetime | None = Field(default=None, sa_type=UtcDateTime)  # SMS receipt time
    queued_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class SmsPart(SQLModel, table=True):
    """One part of a submitted SMS as the gateway knows it: its id there (normalised) and
    what its receipt said.  Receipts find their message through this table, so they match
    after a restart, however late they come."""

    __tablename__ = "sms_parts"
    __table_args__ = (Index("ix_sms_parts_provider", "gateway", "provider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id", index=True)
    part: int = 1
    gateway: str = Field(max_length=64)
    provider_id: str = Field(max_length=100)
    state: str = Field(default="submitted", max_length=16)  # or a receipt's state
    error: str = Field(default="", max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class PendingReceipt(SQLModel, table=True):
    """A delivery receipt that came before its submit was recorded (an SMSC can answer
    faster than the ledger commits): kept until its part appears."""

    __tablename__ = "sms_pending_receipts"
    __table_args__ = (Index("ix_sms_pending_provider", "gateway", "provider_id"),)

    id: int | None = Field(default=None, primary_key=True)
    gateway: str = Field(max_length=64)
    provider_id: str = Field(max_length=100)
    state: str = Field(max_length=16)
    final: bool = True
    error: str = Field(default="", max_length=100)
    text: str = Field(default="", max_length=500)
    alt_ids: str = Field(default="", max_length=200)  # other writings of the id, comma-separated
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class InboundSms(SQLModel, table=True):
    """A message a person sent us (MO): a reply, a keyword."""

    __tablename__ = "sms_inbound"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contacts.id", index=True)
    message_id: int | None = Field(default=None, foreign_key="messages.id")  # replied to
    campaign_id: int | None = Field(default=None, foreign_key="campaigns.id", index=True)
    sender: str = Field(max_length=32)
    recipient: str = Field(default="", max_length=32)
    text: str = Field(default="", max_length=2000)
    keyword: str = Field(default="", max_length=32)  # the keyword recognised, if any
    action: str = Field(default="", max_length=16)  # unsubscribed, resubscribed
    gateway: str = Field(default="", max_length=64)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)
