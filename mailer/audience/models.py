"""Contacts, lists and list membership."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.core.statemachine import StateMachine
from mailer.storage.types import JsonDict, UtcDateTime


class ChannelStatus(StrEnum):
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    INVALID = "invalid"


_S = ChannelStatus
CHANNEL_STATUS = StateMachine[ChannelStatus](
    "contact channel",
    {
        _S.ACTIVE: frozenset({_S.UNSUBSCRIBED, _S.BOUNCED, _S.COMPLAINED, _S.INVALID}),
        # Coming back needs a new opt-in (resubscribe) or a corrected address.
        _S.UNSUBSCRIBED: frozenset({_S.ACTIVE, _S.COMPLAINED}),
        _S.BOUNCED: frozenset({_S.ACTIVE, _S.UNSUBSCRIBED, _S.COMPLAINED}),
        _S.COMPLAINED: frozenset({_S.UNSUBSCRIBED}),
        _S.INVALID: frozenset({_S.ACTIVE}),
    },
)


CHANNEL_LABELS_ES: dict[str, str] = {
    _S.ACTIVE: "Activo",
    _S.UNSUBSCRIBED: "De baja",
    _S.BOUNCED: "Rebotado",
    _S.COMPLAINED: "Queja",
    _S.INVALID: "No válido",
}


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("account_id", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    email: str = Field(max_length=320)
    first_name: str = Field(default="", max_length=200)
    last_name: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=32)
    company: str = Field(default="", max_length=300)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    email_status: str = Field(default=ChannelStatus.ACTIVE, max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    def template_fields(self) -> dict[str, Any]:
        """What a template sees as ``contact``."""
        return {
            **self.attributes,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "phone": self.phone,
            "company": self.company,
        }


class MailingList(SQLModel, table=True):
    __tablename__ = "lists"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class ContactImport(SQLModel, table=True):
    """One import of a contact file: its figures and the rows it rejected (for the report)."""

    __tablename__ = "contact_imports"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    list_id: int | None = Field(default=None, foreign_key="lists.id")
    filename: str = Field(default="", max_length=300)
    mode: str = Field(default="add_or_update", max_length=16)
    encoding: str = Field(default="", max_length=32)
    delimiter: str = Field(default="", max_length=4)
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates_in_file: int = 0
    added_to_list: int = 0
    rejected: list[Any] = Field(default_factory=list, sa_type=JsonDict)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class ListMember(SQLModel, table=True):
    __tablename__ = "list_members"

    list_id: int = Field(foreign_key="lists.id", primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", primary_key=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
