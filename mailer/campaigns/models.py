"""The campaign table and its state machine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.core.statemachine import StateMachine
from mailer.storage.types import JsonDict, UtcDateTime


class CampaignState(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


_C = CampaignState
CAMPAIGN_STATE = StateMachine[CampaignState](
    "campaign",
    {
        _C.DRAFT: frozenset({_C.SCHEDULED, _C.SENDING, _C.CANCELLED}),
        _C.SCHEDULED: frozenset({_C.DRAFT, _C.SENDING, _C.CANCELLED}),
        _C.SENDING: frozenset({_C.PAUSED, _C.COMPLETED, _C.CANCELLED, _C.FAILED}),
        _C.PAUSED: frozenset({_C.SENDING, _C.CANCELLED}),
        _C.FAILED: frozenset({_C.SENDING, _C.CANCELLED}),
        _C.COMPLETED: frozenset(),
        _C.CANCELLED: frozenset(),
    },
)

STATE_LABELS_ES: dict[str, str] = {
    _C.DRAFT: "Borrador",
    _C.SCHEDULED: "Programada",
    _C.SENDING: "Enviando",
    _C.PAUSED: "En pausa",
    _C.COMPLETED: "Completada",
    _C.CANCELLED: "Cancelada",
    _C.FAILED: "Fallida",
}


class Campaign(SQLModel, table=True):
    __tablename__ = "campaigns"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    channel: str = Field(
        default="email", max_length=8, sa_column_kwargs={"server_default": "email"}
    )
    # An e-mail campaign's template; an SMS campaign has its text and sender in ``content``.
    template_id: int | None = Field(default=None, foreign_key="templates.id")
    list_id: int | None = Field(default=None, foreign_key="lists.id")
    segment_id: int | None = Field(default=None, foreign_key="segments.id")
    # Addresses cleaned longer ago than this are cleaned again at start (0 = same day).
    freshness_days: int = 0
    subject: str | None = Field(default=None, max_length=998)  # None: the template's
    from_name: str = Field(max_length=200)
    from_email: str = Field(max_length=320)
    reply_to: str | None = Field(default=None, max_length=320)
    state: str = Field(default=CampaignState.DRAFT, max_length=16, index=True)
    # Why it paused or failed on its own (the reputation guard, a missing key).
    state_reason: str = Field(default="", max_length=1000)
    # A "resend to failed" run: the campaign whose failed rows it sends again.
    parent_id: int | None = Field(default=None, foreign_key="campaigns.id")
    total: int = 0  # ledger rows snapshotted when the send started
    # The template as it was when the send started (subject, html, text): editing the
    # template afterwards does not change a campaign half-way through.
    content: dict[str, Any] | None = Field(default=None, sa_type=JsonDict)
    scheduled_at: datetime | None = Field(default=None, sa_type=UtcDateTime, index=True)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
