"""The ledger table and its state machine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.core.statemachine import StateMachine
from mailer.storage.types import UtcDateTime


class MessageState(StrEnum):
    QUEUED = "queued"  # in the ledger, not yet handed to a transport
    SENDING = "sending"  # claimed by a worker (claim_token), outcome not yet recorded
    SENT = "sent"  # accepted by the relay (e-mail) or the gateway (SMS)
    DEFERRED = "deferred"  # temporary failure; next_attempt_at says when to try again
    FAILED = "failed"  # permanent failure, or retries exhausted
    BOUNCED = "bounced"  # accepted, then bounced back asynchronously
    CANCELLED = "cancelled"  # withdrawn before it was sent


_M = MessageState
MESSAGE_STATE = StateMachine[MessageState](
    "ledger row",
    {
        _M.QUEUED: frozenset({_M.SENDING, _M.CANCELLED, _M.FAILED}),
        # CANCELLED from SENDING: suppressed between the snapshot and the send.
        _M.SENDING: frozenset({_M.SENT, _M.DEFERRED, _M.FAILED, _M.QUEUED, _M.CANCELLED}),
        _M.DEFERRED: frozenset({_M.SENDING, _M.FAILED, _M.CANCELLED}),
        _M.SENT: frozenset({_M.BOUNCED}),
        _M.FAILED: frozenset(),
        _M.BOUNCED: frozenset(),
        _M.CANCELLED: frozenset(),
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
    queued_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
