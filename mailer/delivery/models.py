"""Messages received by the built-in capture relay, shown in the portal."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import LargeBinary
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.storage.types import UtcDateTime


class CapturedMessage(SQLModel, table=True):
    __tablename__ = "captured_messages"

    id: int | None = Field(default=None, primary_key=True)
    # The account whose campaign sent it (from X-Mailer-Campaign); None for other mail.
    account_id: int | None = Field(default=None, foreign_key="accounts.id", index=True)
    mail_from: str = Field(max_length=320)
    rcpt_to: str = Field(max_length=2000, index=True)
    subject: str = Field(default="", max_length=998)
    size: int = 0
    data: bytes = Field(sa_type=LargeBinary)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)


class RelayUsage(SQLModel, table=True):
    """Messages a relay took (or has reserved) on one day: its daily cap and warm-up."""

    __tablename__ = "relay_usage"

    relay: str = Field(primary_key=True, max_length=200)
    day: date = Field(primary_key=True)
    sent: int = 0
