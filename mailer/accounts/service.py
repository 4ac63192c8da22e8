"""Accounts, users, API keys, OAuth clients and the audit log: the functions the
interfaces call."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, bindparam, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from mailer.accounts.models import Account, ApiKey, AuditEntry, OAuthClient, User
from mailer.accounts.roles import parse_role
from mailer.accounts.scopes import (
    Scope,
    check_within_role,
    format_scopes,
    parse_scopes,
    role_scopes,
)
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import (
    AuthenticationFailed,
    Conflict,
    MailerError,
    NotFound,
    Term,
    ValidationFailed,
)
from mailer.core.tokens import BadToken, hash_secret, sign, unsign

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
API_KEY_PREFIX = "mk_"
# OAuth access tokens are told apart from API keys by their prefix (not secrets: S105).
ACCESS_TOKEN_PREFIX = "mat_"  # noqa: S105
CLIENT_ID_PREFIX = "mc_"
CLIENT_SECRET_PREFIX = "mcs_"  # noqa: S105
TOKEN_PURPOSE = "oauth-access"  # noqa: S105
_DUMMY_SECRET_HASH = hash_secret(secrets.token_urlsafe(32))

# The two reads of every API request, built once: a Core statement with a bound parameter
# costs a fifth of an ORM select built per call.
_keys, _clients = ApiKey.__table__.c, OAuthClient.__table__.c  # type: ignore[attr-defined]
_KEY_BY_HASH = sa_select(
    _keys.id,
    _keys.account_id,
    _keys.name,
    _keys.role,
    _keys.scopes,
    _keys.rate_per_second,
    _keys.burst,
    _keys.revoked_at,
).where(_keys.key_hash == bindparam("key_hash"))
_CLIENT_BY_ID = sa_select(
    _clients.account_id,
    _clients.name,
    _clients.role,
    _clients.rate_per_second,
    _clients.burst,
    _clients.revoked_at,
).where(_clients.id == bindparam("id"))

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong e-mail costs as much as a wrong
# password and the response time tells nothing.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: a portal user, an API key or an OAuth client, always inside one
    account.  ``scopes`` None: not restricted beyond the role."""

    account_id: int
    role: str
    actor: str  # "user:3", "apikey:7 (ERP Compras)" or "oauth:2 (ERP Compras)"
    user_id: int | None = None
    api_key_id: int | None = None
    oauth_client_id: int | None = None
    scopes: frozenset[str] | None = None
    rate_per_second: float | None = None  # this application's rate limit, if its own
    burst: int | None = None

    @property
    def application(self) -> str | None:
        """The application's short, stable name ("k7", "c2"), None for a portal user."""
        if self.api_key_id is not None:
            return f"k{self.api_key_id}"
        if self.oauth_client_id is not None:
            return f"c{self.oauth_client_id}"
        return None


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


def _limits(rate_per_second: float | None, burst: int | None) -> None:
    if rate_per_second is not None and rate_per_second < 0:
        raise ValidationFailed("the rate is requests per second, 0 or more", field="rate")
    if burst is not None and burst < 1:
        raise ValidationFailed("the burst is at least 1 request", field="burst")


def _scopes_for(role: str, scopes: str | Iterable[str] | None) -> frozenset[Scope]:
    parse_role(role)
    if scopes is None:
        return frozenset()
    parsed = parse_scopes(scopes)
    check_within_role(role, parsed)
    return parsed


def create_api_key(
    session: Session,
    account_id: int,
    name: str,
    role: str,
    *,
    created_by: int | None = None,
    scopes: str | Iterable[str] | None = None,
    rate_per_second: float | None = None,
    burst: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key for the application *name*; the plaintext is returned once, never stored.
    *scopes* restrict it further than its role (none: everything the role allows)."""
    name = name.strip()
    if not name:
        raise ValidationFailed("name the application that will use the key", field="name")
    granted = _scopes_for(role, scopes)
    _limits(rate_per_second, burst)
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
        scopes=format_scopes(granted),
        rate_per_second=rate_per_second,
        burst=burst,
        created_by=created_by,
    )
    session.add(key)
    session.flush()
    return key, plaintext


def verify_api_key(session: Session, plaintext: str) -> Principal:
    """The application holding this key; AuthenticationFailed if unknown or revoked.  One
    indexed read; ``last_used_at`` is written at most once a minute (see touch_last_used)."""
    if not plaintext.startswith(API_KEY_PREFIX):
        raise AuthenticationFailed("malformed API key: it starts with 'mk_'")
    row = session.execute(_KEY_BY_HASH, {"key_hash": hash_secret(plaintext)}).first()
    if row is None or row[7] is not None:
        raise AuthenticationFailed("unknown or revoked API key")
    key_id, account_id, name, role, scopes, rate, burst, _revoked = row
    assert key_id is not None
    touch_last_used(session, ApiKey, key_id)
    return Principal(
        account_id=account_id,
        role=role,
        actor=f"apikey:{key_id} ({name})",
        api_key_id=key_id,
        scopes=frozenset(scopes.split()) if scopes else None,
        rate_per_second=rate,
        burst=burst,
    )


def list_api_keys(session: Session, account_id: int) -> list[ApiKey]:
    return list(
        session.exec(select(ApiKey).where(ApiKey.account_id == account_id).order_by(col(ApiKey.id)))
    )


def revoke_api_key(session: Session, account_id: int, key_id: int) -> ApiKey:
    """Revoke at once: the next request with the key is refused (keys are not cached)."""
    key = session.get(ApiKey, key_id)
    if key is None or key.account_id != account_id:
        raise NotFound("API key {id} does not exist", id=key_id)
    key.revoked_at = key.revoked_at or utcnow()
    session.add(key)
    return key


TOUCH_INTERVAL = timedelta(minutes=1)
_touched: dict[tuple[int, str, int], float] = {}


def touch_last_used(session: Session, table: type[ApiKey] | type[OAuthClient], row_id: int) -> None:
    """Record that a key or client was used, at most once a minute per process, in a short
    transaction of its own: the request's transaction stays a reader (on SQLite a writer
    would lock out the sessions some routes open), and a lost touch costs nothing.  The
    UPDATE is conditional, so other processes touching the same row do not write again."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    memo = (id(engine), table.__tablename__, row_id)
    now_mono = time.monotonic()
    if now_mono - _touched.get(memo, -1e9) < TOUCH_INTERVAL.total_seconds():
        return
    _touched[memo] = now_mono
    now = utcnow()
    stale = or_(col(table.last_used_at).is_(None), col(table.last_used_at) < now - TOUCH_INTERVAL)
    statement = update(table).where(col(table.id) == row_id, stale).values(last_used_at=now)
    try:
        with engine.connect() as connection:
            connection.execute(statement)
            connection.commit()
    except SQLAlchemyError:
        log.warning("could not record the use of %s %s", table.__tablename__, row_id)


# -- OAuth 2.0 clients (client credentials, RFC 6749 §4.4) ------------------------------


class OAuthError(MailerError):
    """A token request refused, with its RFC 6749 §5.2 error code (``invalid_client``,
    ``invalid_grant``, ``invalid_scope``, ``invalid_request``, ``unsupported_grant_type``)."""

    def __init__(self, error: str, message: str, **params: Any) -> None:
        super().__init__(message, **params)
        self.code = error


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int
    scopes: frozenset[str]
    principal: Principal  # the client it was issued to


def create_oauth_client(
    session: Session,
    account_id: int,
    name: str,
    role: str,
    *,
    scopes: str | Iterable[str] | None = None,
    created_by: int | None = None,
    rate_per_second: float | None = None,
    burst: int | None = None,
) -> tuple[OAuthClient, str]:
    """A client for the application *name*; its secret is returned once, never stored.
    *scopes* are what its tokens may ask for (none: everything the role allows)."""
    name = name.strip()
    if not name:
        raise ValidationFailed("name the application that will use the client", field="name")
    allowed = _scopes_for(role, scopes) or role_scopes(role)
    _limits(rate_per_second, burst)
    existing = session.exec(
        select(OAuthClient).where(OAuthClient.account_id == account_id, OAuthClient.name == name)
    ).first()
    if existing is not None:
        raise Conflict("an OAuth client named '{name}' already exists", field="name", name=name)
    secret = f"{CLIENT_SECRET_PREFIX}{secrets.token_urlsafe(32)}"
    client = OAuthClient(
        account_id=account_id,
        name=name,
        client_id=f"{CLIENT_ID_PREFIX}{secrets.token_hex(8)}",
        secret_hash=hash_secret(secret),
        role=role,
        scopes=format_scopes(allowed),
        rate_per_second=rate_per_second,
        burst=burst,
        created_by=created_by,
    )
    session.add(client)
    session.flush()
    return client, secret


def list_oauth_clients(session: Session, account_id: int) -> list[OAuthClient]:
    return list(
        session.exec(
            select(OAuthClient)
            .where(OAuthClient.account_id == account_id)
            .order_by(col(OAuthClient.id))
        )
    )


def revoke_oauth_client(session: Session, account_id: int, client_id: str) -> OAuthClient:
    """Revoke the client: no new tokens, and the tokens it holds stop working at once
    (every request checks the client's row)."""
    client = session.exec(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    if client is None or client.account_id != account_id:
        raise NotFound("OAuth client {id} does not exist", id=client_id)
    client.revoked_at = client.revoked_at or utcnow()
    session.add(client)
    return client


def issue_access_token(
    session: Session,
    client_id: str,
    client_secret: str,
    scope: str | None,
    *,
    secret_key: str,
    lifetime: timedelta,
    now: datetime | None = None,
) -> AccessToken:
    """A bearer token for the client, signed with the install's key (self-contained: it
    names the client, its scopes and when it expires).  *scope* omitted: every scope the
    client may have."""
    client = session.exec(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    given = hash_secret(client_secret)
    # Compared even when the client does not exist, so timing tells nothing.
    matches = hmac.compare_digest(given, client.secret_hash if client else _DUMMY_SECRET_HASH)
    if client is None or not matches or client.revoked_at is not None:
        raise OAuthError("invalid_client", "unknown client, wrong secret or revoked client")
    assert client.id is not None
    account = session.get(Account, client.account_id)
    if account is None or not account.active:
        raise OAuthError("invalid_grant", "the client's account is not active")
    allowed = frozenset(client.scopes.split())
    if scope is None or not scope.strip():
        granted = allowed
    else:
        try:
            requested = parse_scopes(scope, field="scope")
        except ValidationFailed as exc:
            raise OAuthError("invalid_scope", exc.template, **exc.params) from None
        if not requested <= allowed:
            raise OAuthError(
                "invalid_scope",
                "the client may not ask for {scopes} (it may ask for: {allowed})",
                scopes=format_scopes(requested - allowed),
                allowed=client.scopes,
            )
        granted = frozenset(requested)
    now = now or utcnow()
    expires = int((now + lifetime).timestamp())
    payload = f"{client.id}|{expires}|{format_scopes(granted)}"
    token = ACCESS_TOKEN_PREFIX + sign(secret_key, TOKEN_PURPOSE, payload, mac_bytes=32)
    touch_last_used(session, OAuthClient, client.id)
    principal = Principal(
        account_id=client.account_id,
        role=client.role,
        actor=f"oauth:{client.id} ({client.name})",
        oauth_client_id=client.id,
        scopes=granted,
    )
    return AccessToken(
        token=token, expires_in=int(lifetime.total_seconds()), scopes=granted, principal=principal
    )


def verify_access_token(
    session: Session, token: str, *, secret_key: str, now: datetime | None = None
) -> Principal:
    """The client holding this token: checked by its signature and expiry, then against
    the client's row (one read by primary key), so a revoked client is refused at once."""
    try:
        payload = unsign(
            secret_key, TOKEN_PURPOSE, token.removeprefix(ACCESS_TOKEN_PREFIX), mac_bytes=32
        )
        row_text, expires_text, scopes = payload.split("|")
        row_id, expires = int(row_text), int(expires_text)
    except (BadToken, ValueError):
        raise AuthenticationFailed("invalid access token") from None
    if expires <= (now or utcnow()).timestamp():
        raise AuthenticationFailed(
            "the access token expired: ask POST /api/v1/oauth/token for a new one"
        )
    row = session.execute(_CLIENT_BY_ID, {"id": row_id}).first()
    if row is None or row[5] is not None:
        raise AuthenticationFailed("the access token's client was revoked")
    account_id, name, role, rate, burst, _revoked = row
    return Principal(
        account_id=account_id,
        role=role,
        actor=f"oauth:{row_id} ({name})",
        oauth_client_id=row_id,
        scopes=frozenset(scopes.split()),
        rate_per_second=rate,
        burst=burst,
    )


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
    # A Core INSERT, not session.add: an API send writes one of these per request, and the
    # ORM's flush of it cost as much as the send.
    session.execute(
        _AUDIT_INSERT,
        {
            "account_id": principal.account_id if principal else account_id,
            "actor": (principal.actor if principal else "system")[:200],
            "action": action,
            "target": target[:200],
            "details": details,
            "ip": ip,
            "created_at": utcnow(),
        },
    )


_AUDIT_INSERT = insert(AuditEntry.__table__)  # type: ignore[attr-defined]
