"""Saved templates (per account)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.storage.types import UtcDateTime


class Template(SQLModel, table=True):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", max_length=1000)
    subject: str = Field(max_length=998)
    html: str = Field(sa_type=Text)
    text: str | None = Field(default=None, sa_type=Text)
    library_key: str | None = Field(default=None, max_length=100)
    version: int = 1  # the number of the current version (TemplateVersion keeps them all)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class TemplateVersion(SQLModel, table=True):
    """Every saved state of a template, so any earlier one can be looked at and restored."""

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="templates.id", index=True)
    version: int
    name: str = Field(max_length=200)
    subject: str = Field(max_length=998)
    html: str = Field(sa_type=Text)
    text: str | None = Field(default=None, sa_type=Text)
    saved_by: str = Field(default="", max_length=200)
    note: str = Field(default="", max_length=300)
    saved_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
