"""Contacts, lists and list membership."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, UniqueConstraint
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


CONTACT_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "phone",
    "company",
    "position",
    "document",
)
"""The fixed fields of a contact (everything else is a custom attribute)."""


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("account_id", "email"),
        Index("ix_contacts_account_domain", "account_id", "email_domain"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    email: str = Field(max_length=320)
    email_domain: str = Field(default="", max_length=255)
    first_name: str = Field(default="", max_length=200)
    last_name: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=32)  # E.164 when valid, else as given
    phone_kind: str = Field(default="", max_length=24)  # mobile, fixed_line, ... ("" = none)
    company: str = Field(default="", max_length=300)
    position: str = Field(default="", max_length=200)
    document: str = Field(default="", max_length=32)  # RUC, DNI, CE, passport
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    email_status: str = Field(default=ChannelStatus.ACTIVE, max_length=16, index=True)
    sms_status: str = Field(default=ChannelStatus.ACTIVE, max_length=16)
    # The last cleaning verdict of the address ("" = never cleaned).
    email_verdict: str = Field(default="", max_length=16)
    email_reasons: str = Field(default="", max_length=200)  # comma-separated reason codes
    email_suggestion: str = Field(default="", max_length=320)
    cleaned_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
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
            "position": self.position,
            "document": self.document,
        }


class AttributeType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    BOOLEAN = "boolean"


class AttributeDefinition(SQLModel, table=True):
    """A custom contact attribute with a type: values are checked and stored typed."""

    __tablename__ = "contact_attributes"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=64)
    type: str = Field(default=AttributeType.TEXT, max_length=16)
    label: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Consent(SQLModel, table=True):
    """One consent given or withdrawn, per channel: the proof Ley 29733 asks to keep.

    Append-only: the latest row of a contact and channel is the current state."""

    __tablename__ = "consents"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    channel: str = Field(max_length=8)
    granted: bool = True
    source: str = Field(default="", max_length=200)  # form, import, api, portal, sms keyword
    ip: str = Field(default="", max_length=64)  # or the channel it came by
    text: str = Field(default="", max_length=4000)  # the wording shown to the person
    occurred_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Suppression(SQLModel, table=True):
    """An address (or phone) that must never receive the channel again.

    ``value`` is empty once the person's data was erased: the keyed hash alone still
    blocks the address at import, at segment evaluation and at send."""

    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("account_id", "channel", "value_hash"),
        Index("ix_suppressions_lookup", "account_id", "channel", "value"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id")
    channel: str = Field(max_length=8)
    value: str = Field(default="", max_length=320)
    value_hash: str = Field(max_length=64)
    reason: str = Field(max_length=32)  # unsubscribed, bounced, complained, manual, erased
    source: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Segment(SQLModel, table=True):
    """Saved rules over contacts, evaluated when used (see ``audience.segments``)."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=1000)
    rules: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class CleaningRun(SQLModel, table=True):
    """One cleaning of a list or segment: progress, then the report."""

    __tablename__ = "cleaning_runs"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    list_id: int | None = Field(default=None, foreign_key="lists.id")
    segment_id: int | None = Field(default=None, foreign_key="segments.id")
    status: str = Field(default="queued", max_length=16)  # queued, running, done, failed
    total: int = 0
    done: int = 0
    counts: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    error: str = Field(default="", max_length=1000)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


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
    status: str = Field(default="done", max_length=16)  # queued, running, done, failed
    format: str = Field(default="csv", max_length=8)
    stored_path: str = Field(default="", max_length=500)  # the upload, while it waits
    mapping: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    progress: float = 0.0
    error: str = Field(default="", max_length=1000)
    encoding: str = Field(default="", max_length=32)
    delimiter: str = Field(default="", max_length=4)
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates_in_file: int = 0
    suppressed: int = 0
    skipped: int = 0
    added_to_list: int = 0
    rejected: list[Any] = Field(default_factory=list, sa_type=JsonDict)
    created_by: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ListMember(SQLModel, table=True):
    __tablename__ = "list_members"

    list_id: int = Field(foreign_key="lists.id", primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", primary_key=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
