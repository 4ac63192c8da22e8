"""Tables of accounts, users, API keys and OAuth clients, the audit log, the credit ledger
and the idempotency keys of API requests."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, Index, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from mailer.core.clock import utcnow
from mailer.storage.types import JsonDict, UtcDateTime


class Account(SQLModel, table=True):
    __tablename__ = "accounts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    parent_id: int | None = Field(default=None, foreign_key="accounts.id", index=True)
    timezone: str = Field(default="America/Lima", max_length=64)
    # SMS: the sender id (short code or alphanumeric) and the reply keywords, when they
    # differ from the settings' defaults.
    sms_sender: str = Field(default="", max_length=16, sa_column_kwargs={"server_default": ""})
    sms_keywords: dict[str, Any] | None = Field(default=None, sa_type=JsonDict)
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    email: str = Field(sa_column=Column(String(320), unique=True, nullable=False))
    name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=200)
    role: str = Field(max_length=16)
    active: bool = True
    # Part of every portal session; raised on logout and password change, which ends all
    # the user's sessions (a signed cookie cannot be recalled otherwise).
    session_epoch: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Two-factor login (TOTP, see mailer.accounts.totp): the shared secret encrypted with a
    # key derived from the install's secret key, set at enrolment and in force from
    # ``totp_enabled_at`` (once a first code was verified); the last time step accepted (a
    # code is good once); the SHA-256 hashes of the unused recovery codes, space-separated.
    totp_secret: str = Field(default="", max_length=200, sa_column_kwargs={"server_default": ""})
    totp_enabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    totp_last_step: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    totp_recovery: str = Field(default="", max_length=700, sa_column_kwargs={"server_default": ""})


class ApiKey(SQLModel, table=True):
    """An API key, named after the application that uses it.  Only its hash is stored."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16, index=True)
    key_hash: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    created_by: int | None = Field(default=None, foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # Space-separated scopes (mailer.accounts.scopes); empty = whatever the role allows.
    scopes: str = Field(default="", max_length=200, sa_column_kwargs={"server_default": ""})
    # Rate limit of this application; None = the settings' (api.rate_per_second, api.burst).
    rate_per_second: float | None = None
    burst: int | None = None


class AuditEntry(SQLModel, table=True):
    """Who did what, when, from where: append-only."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int | None = Field(default=None, foreign_key="accounts.id", index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=100)
    target: str = Field(default="", max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JsonDict)
    ip: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)


class CreditKind(StrEnum):
    """Movements of the credit ledger; each moves units between *available* and *held*
    (reserved for messages whose outcome is not known yet) or in and out of the account."""

    GRANT = "grant"  # +available: an allowance given by the operator
    RESERVE = "reserve"  # available -> held: messages queued
    CHARGE = "charge"  # -held: messages accepted (e-mail) or delivered (SMS)
    RELEASE = "release"  # held -> available: messages that failed or were not delivered
    TRANSFER_OUT = "transfer_out"  # -available: to a sub-account
    TRANSFER_IN = "transfer_in"  # +available: from the parent account
    EXPIRE = "expire"  # -available: the allowance's validity ended


class CreditEntry(SQLModel, table=True):
    """One movement of an account's allowance for one channel: append-only; the balance
    is the sum of the movements (``credit_balances`` keeps it at hand)."""

    __tablename__ = "credit_entries"
    __table_args__ = (Index("ix_credit_entries_account_channel", "account_id", "channel", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id")
    channel: str = Field(max_length=8)
    kind: str = Field(max_length=16)
    quantity: int = Field(sa_type=BigInteger)
    available_after: int = Field(sa_type=BigInteger)  # the balance right after this movement
    held_after: int = Field(sa_type=BigInteger)
    ref: str = Field(default="", max_length=200)  # "campaign:12", "api:sms", "messages:3-9"
    counterpart_id: int | None = Field(default=None, foreign_key="accounts.id")
    actor: str = Field(default="", max_length=200)
    note: str = Field(default="", max_length=500)
    valid_until: datetime | None = Field(default=None, sa_type=UtcDateTime)  # of a grant
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class CreditBalance(SQLModel, table=True):
    """The running balance of an account's allowance for one channel.  An account without
    a row for a channel is not metered on it (a self-hosted install with no allowances)."""

    __tablename__ = "credit_balances"

    account_id: int = Field(foreign_key="accounts.id", primary_key=True)
    channel: str = Field(max_length=8, primary_key=True)
    available: int = Field(default=0, sa_type=BigInteger)
    held: int = Field(default=0, sa_type=BigInteger)
    valid_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class OAuthClient(SQLModel, table=True):
    """An OAuth 2.0 client (client credentials grant), named after the application that
    uses it.  Its secret is stored hashed; its tokens carry a subset of ``scopes``."""

    __tablename__ = "oauth_clients"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="accounts.id", index=True)
    name: str = Field(max_length=200)
    client_id: str = Field(max_length=40, unique=True)
    secret_hash: str = Field(max_length=64)
    role: str = Field(max_length=16)
    scopes: str = Field(max_length=200)  # space-separated: what its tokens may ask for
    rate_per_second: float | None = None
    burst: int | None = None
    created_by: int | None = Field(default=None, foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class IdempotencyKey(SQLModel, table=True):
    """The first outcome of a POST sent with an ``Idempotency-Key`` header, replayed to
    retries of it (see mailer.accounts.idempotency for the states)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("actor", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=200)  # the application: "apikey:7 (ERP Compras)"
    key: str = Field(max_length=255)
    request_hash: str = Field(max_length=64)
    state: str = Field(max_length=16)
    claim_token: str = Field(max_length=32)
    response_status: int | None = None
    response_headers: dict[str, Any] | None = Field(default=None, sa_type=JsonDict)
    response_body: bytes | None = Field(default=None, sa_type=LargeBinary)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime, index=True)
    claimed_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
