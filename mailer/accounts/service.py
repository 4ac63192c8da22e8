"""Accounts, users, API keys and the audit log: the functions the interfaces call."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, select

from mailer.accounts.models import Account, ApiKey, AuditEntry, User
from mailer.accounts.roles import parse_role
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import AuthenticationFailed, Conflict, NotFound, Term, ValidationFailed
from mailer.core.tokens import hash_secret

MIN_PASSWORD_LENGTH = 10
API_KEY_PREFIX = "mk_"

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong e-mail costs as much as a wrong
# password and the response time tells nothing.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a portal user or an API key, always inside one account."""

    account_id: int
    role: str
    actor: str  # "user:3" or "apikey:7 (ERP Compras)"
    user_id: int | None = None
    api_key_id: int | None = None


# -- accounts --------------------------------------------------------------------------


def create_account(
    session: Session, name: str, *, parent_id: int | None = None, timezone: str = "America/Lima"
) -> Account:
    name = name.strip()
    if not name:
        raise ValidationFailed("account name is empty", field="name")
    if parent_id is not None and session.get(Account, parent_id) is None:
        raise NotFound("account {id} does not exist", field="parent_id", id=parent_id)
    account = Account(name=name, parent_id=parent_id, timezone=timezone)
    session.add(account)
    session.flush()
    return account


def get_account(session: Session, account_id: int) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account {id} does not exist", id=account_id)
    return account


def first_account(session: Session) -> Account | None:
    return session.exec(select(Account).order_by(col(Account.id)).limit(1)).first()


# -- users -----------------------------------------------------------------------------


def normalise_email(email: str, field: str = "email") -> str:
    """The address as stored (cleaning's syntax verdict), or ValidationFailed naming *field*."""
    verdict = check_syntax(email)
    if not verdict.ok:
        raise ValidationFailed(
            "'{email}' is not a valid e-mail address: {reason}",
            field=field,
            email=email,
            reason=Term(verdict.reason),
        )
    return verdict.normalized


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            "the password must have at least {minimum} characters",
            field="password",
            minimum=MIN_PASSWORD_LENGTH,
        )
    return _hasher.hash(password)


def create_user(
    session: Session, account_id: int, email: str, password: str, role: str, *, name: str = ""
) -> User:
    email = normalise_email(email)
    parse_role(role)
    if session.exec(select(User).where(User.email == email)).first() is not None:
        raise Conflict("a user with e-mail {email} already exists", field="email", email=email)
    user = User(
        account_id=account_id,
        email=email,
        name=name.strip(),
        password_hash=hash_password(password),
        role=role,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    """The active user with this e-mail and password, or AuthenticationFailed."""
    user = session.exec(select(User).where(User.email == email.strip().lower())).first()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        raise AuthenticationFailed("wrong e-mail or password") from None
    if user is None or not user.active:
        raise AuthenticationFailed("wrong e-mail or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = utcnow()
    session.add(user)
    return user


def set_password(session: Session, email: str, password: str) -> User:
    user = session.exec(select(User).where(User.email == email.strip().lower())).first()
    if user is None:
        raise NotFound("there is no user {email}", field="email", email=email)
    user.password_hash = hash_password(password)
    user.session_epoch += 1  # a new password ends every open session
    session.add(user)
    return user


def end_sessions(session: Session, user_id: int) -> None:
    """Log the user out everywhere (every portal session of theirs stops being valid)."""
    user = session.get(User, user_id)
    if user is not None:
        user.session_epoch += 1
        session.add(user)


def get_user(session: Session, user_id: int) -> User | None:
    user = session.get(User, user_id)
    return user if user is not None and user.active else None


def user_principal(user: User) -> Principal:
    assert user.id is not None
    return Principal(
        account_id=user.account_id, role=user.role, actor=f"user:{user.id}", user_id=user.id
    )


# -- API keys --------------------------------------------------------------------------


def create_api_key(
    session: Session, account_id: int, name: str, role: str, *, created_by: int | None = None
) -> tuple[ApiKey, str]:
    """A new key for the application *name*; the plaintext is returned once, never stored."""
    name = name.strip()
    if not name:
        raise ValidationFailed("name the application that will use the key", field="name")
    parse_role(role)
    existing = session.exec(
        select(ApiKey).where(ApiKey.account_id == account_id, ApiKey.name == name)
    ).first()
    if existing is not None:
        raise Conflict("an API key named '{name}' already exists", field="name", name=name)
    prefix = secrets.token_hex(4)
    plaintext = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        account_id=account_id,
        name=name,
        prefix=prefix,
        key_hash=hash_secret(plaintext),
        role=role,
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return key, plaintext


def verify_api_key(session: Session, plaintext: str) -> Principal:
    if not plaintext.startswith(API_KEY_PREFIX):
        raise AuthenticationFailed("malformed API key: it starts with 'mk_'")
    key = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_secret(plaintext))).first()
    if key is None or key.revoked_at is not None:
        raise AuthenticationFailed("unknown or revoked API key")
    now = utcnow()
    # Recording every use would make each request a write; a minute's precision is enough.
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        key.last_used_at = now
        session.add(key)
    assert key.id is not None
    return Principal(
        account_id=key.account_id,
        role=key.role,
        actor=f"apikey:{key.id} ({key.name})",
        api_key_id=key.id,
    )


def revoke_api_key(session: Session, account_id: int, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.account_id != account_id:
        raise NotFound("API key {id} does not exist", id=key_id)
    key.revoked_at = key.revoked_at or utcnow()
    session.add(key)
    return key


# -- audit -----------------------------------------------------------------------------


def audit(
    session: Session,
    principal: Principal | None,
    action: str,
    target: str = "",
    *,
    ip: str | None = None,
    account_id: int | None = None,
    **details: Any,
) -> None:
    session.add(
        AuditEntry(
            account_id=principal.account_id if principal else account_id,
            actor=principal.actor if principal else "system",
            action=action,
            target=target,
            details=details,
            ip=ip,
        )
    )
