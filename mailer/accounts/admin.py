"""Tenancy administration: sub-accounts and their allowances, the users of an account
(invitations, roles, deactivation), links to choose a password, the welcome message's
content, and the audit log's queries and retention.

An account administers itself and its *direct* sub-accounts: it sees their balances and
movements, gives them part of its allowance and takes back what they have not used
(``mailer.accounts.credits.transfer``).  A sub-account sees only itself.

What lives elsewhere: the ledger itself (``credits``), logins and API keys (``service``),
two-factor login (``totp``); the welcome is *sent* by the interface through the
transactional path (``mailer.campaigns.transactional``), which accounts may not import.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlmodel import Session, col

from mailer.accounts import credits
from mailer.accounts.models import Account, AuditEntry, CreditEntry, CreditKind, User
from mailer.accounts.roles import ROLE_LABELS_ES, parse_role
from mailer.accounts.service import Principal, audit, create_account, create_user, hash_password
from mailer.content.store import LibraryTemplate, load_library_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from mailer.core.tokens import BadToken, sign, unsign
from mailer.core.types import Channel, Role
from mailer.delivery.domains import list_domains

UNUSABLE_PASSWORD = "!unset"  # noqa: S105 (not an argon2 hash: no password matches it)
SET_PASSWORD_PURPOSE = "set-password"  # noqa: S105 (a token purpose)
WELCOME_TEMPLATE = "bienvenida"  # templates/system/bienvenida
WELCOME_SENDER_LOCALPART = "no-responder"
CSV_EXPORT_LIMIT = 100_000


# -- accounts in view ------------------------------------------------------------------


def sub_accounts(session: Session, account_id: int) -> list[Account]:
    """The direct sub-accounts of *account_id*, by name."""
    return list(
        session.execute(
            select(Account)
            .where(col(Account.parent_id) == account_id)
            .order_by(col(Account.name), col(Account.id))
        ).scalars()
    )


def get_sub_account(session: Session, parent_id: int, sub_id: int) -> Account:
    """A direct sub-account of *parent_id*; NotFound for any other account (its existence
    is nobody else's business)."""
    account = session.get(Account, sub_id)
    if account is None or account.parent_id != parent_id:
        raise NotFound("sub-account {id} does not exist", id=sub_id)
    return account


def visible_account(session: Session, viewer_id: int, account_id: int) -> Account:
    """*account_id* as seen from *viewer_id*: itself or one of its direct sub-accounts."""
    if account_id == viewer_id:
        account = session.get(Account, account_id)
        if account is None:
            raise NotFound("account {id} does not exist", id=account_id)
        return account
    return get_sub_account(session, viewer_id, account_id)


def visible_account_ids(session: Session, viewer_id: int) -> list[int]:
    return [viewer_id] + [a.id for a in sub_accounts(session, viewer_id) if a.id is not None]


@dataclass(frozen=True, slots=True)
class SubAccountSummary:
    account: Account
    balances: list[credits.Balance]
    users: int
    admins: int


def sub_account_summaries(session: Session, parent_id: int) -> list[SubAccountSummary]:
    accounts = sub_accounts(session, parent_id)
    ids = [a.id for a in accounts]
    counts: dict[int, tuple[int, int]] = {}
    for account_id, role, total in session.execute(
        select(col(User.account_id), col(User.role), func.count())
        .where(col(User.account_id).in_(ids), col(User.active).is_(True))
        .group_by(col(User.account_id), col(User.role))
    ).all():
        users, admins = counts.get(account_id, (0, 0))
        counts[account_id] = (users + total, admins + (total if role == Role.ADMIN else 0))
    return [
        SubAccountSummary(
            account,
            credits.balances(session, account.id or 0),
            *counts.get(account.id or 0, (0, 0)),
        )
        for account in accounts
    ]


# -- sub-accounts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewSubAccount:
    account: Account
    admin: User
    transfers: list[CreditEntry]  # the entries into the sub-account
    needs_password: bool  # the admin was created without one: send the link


def audit_both(
    session: Session,
    principal: Principal,
    sub_id: int,
    action: str,
    target: str,
    *,
    ip: str | None,
    **details: Any,
) -> None:
    """One entry in the parent's log and one in the sub-account's: both administrators
    see who changed the sub-account."""
    audit(session, principal, action, target, ip=ip, **details)
    audit(session, replace(principal, account_id=sub_id), action, target, ip=ip, **details)


def audit_sub_account_created(
    session: Session, principal: Principal, created: NewSubAccount, *, ip: str | None
) -> None:
    """The creation of a sub-account, its administrator and its first allowances, in the
    logs of both accounts (the portal and the API record the same entries)."""
    sub, user = created.account, created.admin
    assert sub.id is not None
    audit_both(
        session, principal, sub.id, "subaccount.create", f"account:{sub.id}", ip=ip, name=sub.name
    )
    audit_both(
        session,
        principal,
        sub.id,
        "user.create",
        f"user:{user.id}",
        ip=ip,
        email=user.email,
        role=user.role,
    )
    for entry in created.transfers:
        audit_both(
            session,
            principal,
            sub.id,
            "credits.transfer",
            f"account:{sub.id}",
            ip=ip,
            channel=entry.channel,
            quantity=entry.quantity,
            direction="give",
        )


def _quantities(allowances: Mapping[str, int]) -> dict[str, int]:
    result: dict[str, int] = {}
    for channel, quantity in allowances.items():
        try:
            name = Channel(channel).value
        except ValueError:
            raise ValidationFailed(
                "unknown channel '{channel}'; use email or sms", field="channel", channel=channel
            ) from None
        if quantity < 0:
            raise ValidationFailed(
                "the quantity must be a positive whole number, not {quantity}",
                field=f"allowance_{name}",
                quantity=quantity,
            )
        if quantity:
            result[name] = quantity
    return result


def create_sub_account(
    session: Session,
    parent_id: int,
    name: str,
    *,
    admin_email: str,
    admin_name: str = "",
    admin_password: str | None = None,
    allowances: Mapping[str, int] | None = None,
    actor: str = "",
) -> NewSubAccount:
    """A sub-account of *parent_id* with its first administrator and, for each channel of
    *allowances*, that many units transferred from the parent (all or nothing: the caller
    rolls back on an error, e.g. InsufficientCredit)."""
    parent = session.get(Account, parent_id)
    if parent is None or not parent.active:
        raise NotFound("account {id} does not exist", id=parent_id)
    quantities = _quantities(allowances or {})
    account = create_account(session, name, parent_id=parent_id, timezone=parent.timezone)
    assert account.id is not None
    user = invite_user(
        session, account.id, admin_email, Role.ADMIN, name=admin_name, password=admin_password
    )
    entries = [
        credits.transfer(
            session,
            parent_id,
            account.id,
            channel,
            quantity,
            actor=actor,
            note="asignación inicial",
        )[1]
        for channel, quantity in quantities.items()
    ]
    return NewSubAccount(account, user, entries, needs_password=not admin_password)


def move_allowance(
    session: Session,
    parent_id: int,
    sub_id: int,
    channel: str,
    quantity: int,
    *,
    take_back: bool = False,
    actor: str = "",
    note: str = "",
) -> tuple[CreditEntry, CreditEntry]:
    """Give *quantity* units of the parent's allowance to its sub-account, or take back
    units the sub-account has not used (*take_back*).  Returns (out, in) entries."""
    get_sub_account(session, parent_id, sub_id)
    source, target = (sub_id, parent_id) if take_back else (parent_id, sub_id)
    return credits.transfer(
        session, source, target, channel, quantity, actor=actor, note=note.strip()[:500]
    )


def rename_account(session: Session, account: Account, name: str) -> Account:
    name = name.strip()
    if not name:
        raise ValidationFailed("account name is empty", field="name")
    account.name = name[:200]
    session.add(account)
    return account


# -- allowance movements ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MovementFilter:
    channel: str = ""
    kind: str = ""
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _movement_conditions(account_id: int, flt: MovementFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [col(CreditEntry.account_id) == account_id]
    if flt.channel:
        conditions.append(col(CreditEntry.channel) == flt.channel)
    if flt.kind:
        conditions.append(col(CreditEntry.kind) == flt.kind)
    if flt.since is not None:
        conditions.append(col(CreditEntry.created_at) >= flt.since)
    if flt.until is not None:
        conditions.append(col(CreditEntry.created_at) < flt.until)
    return conditions


def list_movements(
    session: Session,
    account_id: int,
    flt: MovementFilter = MovementFilter(),
    *,
    offset: int = 0,
    limit: int = 50,
) -> list[CreditEntry]:
    """The movements of an account matching *flt*, newest first."""
    return list(
        session.execute(
            select(CreditEntry)
            .where(*_movement_conditions(account_id, flt))
            .order_by(col(CreditEntry.id).desc())
            .offset(offset)
            .limit(limit)
        ).scalars()
    )


def count_movements(
    session: Session,
    account_id: int,
    flt: MovementFilter = MovementFilter(),
) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(CreditEntry)
            .where(*_movement_conditions(account_id, flt))
        ).scalar_one()
    )


MOVEMENT_KINDS = tuple(kind.value for kind in CreditKind)


# -- users -----------------------------------------------------------------------------


def list_users(session: Session, account_id: int) -> list[User]:
    return list(
        session.execute(
            select(User)
            .where(col(User.account_id) == account_id)
            .order_by(col(User.active).desc(), col(User.email))
        ).scalars()
    )


def get_account_user(session: Session, account_id: int, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None or user.account_id != account_id:
        raise NotFound("user {id} does not exist", id=user_id)
    return user


def invite_user(
    session: Session,
    account_id: int,
    email: str,
    role: str,
    *,
    name: str = "",
    password: str | None = None,
) -> User:
    """A new user of *account_id*.  Without *password* the user cannot log in until they
    choose one through the link of :func:`set_password_token` (sent in the welcome)."""
    parse_role(role)
    if password:
        return create_user(session, account_id, email, password, role, name=name)
    # create_user insists on a password: give a throwaway one, then make it unusable.
    user = create_user(session, account_id, email, secrets.token_urlsafe(24), role, name=name)
    user.password_hash = UNUSABLE_PASSWORD
    session.add(user)
    return user


def has_password(user: User) -> bool:
    return user.password_hash != UNUSABLE_PASSWORD


def _active_admins(session: Session, account_id: int) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(User)
            .where(
                col(User.account_id) == account_id,
                col(User.role) == Role.ADMIN,
                col(User.active).is_(True),
            )
        ).scalar_one()
    )


def _keep_an_admin(session: Session, user: User) -> None:
    if user.role == Role.ADMIN and user.active and _active_admins(session, user.account_id) <= 1:
        raise Conflict(
            "{email} is the last administrator of the account: name another one first",
            field="role",
            email=user.email,
        )


def change_role(
    session: Session, account_id: int, user_id: int, role: str, *, acting_user_id: int | None
) -> tuple[User, str]:
    """Give a user of *account_id* another role; returns the user and the former role.
    Nobody changes their own role, and an account always keeps an active administrator."""
    new_role = parse_role(role)
    user = get_account_user(session, account_id, user_id)
    if user.id == acting_user_id:
        raise PermissionDenied("you cannot change your own role", field="role")
    former = user.role
    if former == new_role:
        return user, former
    if new_role != Role.ADMIN:
        _keep_an_admin(session, user)
    user.role = new_role.value
    user.session_epoch += 1  # open sessions pick up the new role at their next login
    session.add(user)
    return user, former


def set_active(
    session: Session, account_id: int, user_id: int, active: bool, *, acting_user_id: int | None
) -> User:
    """Deactivate a user (every open session ends at once) or activate them again."""
    user = get_account_user(session, account_id, user_id)
    if user.id == acting_user_id:
        raise PermissionDenied("you cannot deactivate yourself", field="user_id")
    if user.active == active:
        return user
    if not active:
        _keep_an_admin(session, user)
    user.active = active
    user.session_epoch += 1
    session.add(user)
    return user


# -- choosing a password through a signed link ------------------------------------------


def set_password_token(secret_key: str, user: User, *, days: int = 7) -> str:
    """A link token with which *user* chooses a password, valid *days*; good once (setting
    the password raises the user's session epoch, which the token names)."""
    expires = int(time.time()) + days * 86400
    return sign(
        secret_key,
        SET_PASSWORD_PURPOSE,
        f"{user.id}.{user.session_epoch}.{expires}",
        mac_bytes=16,
    )


def user_for_token(session: Session, secret_key: str, token: str) -> User:
    """The user a set-password token was made for, while it is still good."""
    payload = unsign(secret_key, SET_PASSWORD_PURPOSE, token, mac_bytes=16)
    try:
        user_id, epoch, expires = (int(part) for part in payload.split("."))
    except ValueError:
        raise BadToken("malformed token") from None
    user = session.get(User, user_id)
    if expires < time.time() or user is None or not user.active or user.session_epoch != epoch:
        raise BadToken("the link expired or was already used")
    return user


def set_password_with_token(session: Session, secret_key: str, token: str, password: str) -> User:
    user = user_for_token(session, secret_key, token)
    user.password_hash = hash_password(password)
    user.session_epoch += 1  # the link is spent; any open session ends
    session.add(user)
    return user


# -- welcome message -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeMessage:
    """What the interface queues as a transactional e-mail."""

    to: str
    to_name: str
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str | None
    variables: dict[str, Any] = field(default_factory=dict)


def welcome_template(settings: Settings) -> LibraryTemplate:
    return load_library_template(settings.templates_dir / "system" / WELCOME_TEMPLATE)


def welcome_sender(settings: Settings) -> str | None:
    """The welcome's sender: the configured one, or no-responder@ the first sending
    domain; None when the install has no sending domain (the welcome is skipped)."""
    if settings.welcome.from_email:
        return settings.welcome.from_email
    domains = list_domains(settings.sending_domains_dir)
    if not domains:
        return None
    return f"{WELCOME_SENDER_LOCALPART}@{domains[0].domain}"


def welcome_message(
    settings: Settings,
    user: User,
    account: Account,
    *,
    inviter: str,
    set_password_url: str | None,
) -> WelcomeMessage | None:
    """The welcome of *user*, or None when welcomes are off or there is no sender."""
    sender = welcome_sender(settings) if settings.welcome.enabled else None
    if sender is None:
        return None
    template = welcome_template(settings)
    base = settings.base_url.rstrip("/")
    return WelcomeMessage(
        to=user.email,
        to_name=user.name,
        from_email=sender,
        from_name=settings.welcome.from_name,
        subject=template.subject,
        html=template.html,
        text=template.text,
        variables={
            "user_name": user.name,
            "user_email": user.email,
            "account_name": account.name,
            "role": user.role,
            "role_label": ROLE_LABELS_ES.get(Role(user.role), user.role),
            "inviter": inviter,
            "portal_url": f"{base}/",
            "login_url": f"{base}/login",
            "set_password_url": set_password_url or "",
            "set_password_days": settings.welcome.set_password_days,
        },
    )


# -- audit log -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilter:
    account_id: int | None = None  # one of the visible accounts; None: all of them
    actor: str = ""  # "user:3", an e-mail (its user), or part of the actor text
    action: str = ""  # an action, or a family ending in "." ("login." matches login.failed)
    target: str = ""  # part of the target ("user:3", "campaign:12")
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _audit_conditions(
    session: Session, account_ids: Sequence[int], flt: AuditFilter
) -> list[ColumnElement[bool]]:
    ids = [flt.account_id] if flt.account_id in account_ids else list(account_ids)
    conditions: list[ColumnElement[bool]] = [col(AuditEntry.account_id).in_(ids)]
    actor = flt.actor.strip()
    if actor:
        user = (
            session.execute(
                select(User).where(col(User.email) == actor.lower())
            ).scalar_one_or_none()
            if "@" in actor
            else None
        )
        if user is not None:
            conditions.append(col(AuditEntry.actor) == f"user:{user.id}")
        else:
            conditions.append(col(AuditEntry.actor).contains(actor, autoescape=True))
    action = flt.action.strip()
    if action.endswith("."):  # a family: "login." is login, login.failed, login.totp_failed
        conditions.append(
            or_(
                col(AuditEntry.action) == action[:-1],
                col(AuditEntry.action).startswith(action, autoescape=True),
            )
        )
    elif action:
        conditions.append(col(AuditEntry.action) == action)
    if flt.target.strip():
        conditions.append(col(AuditEntry.target).contains(flt.target.strip(), autoescape=True))
    if flt.since is not None:
        conditions.append(col(AuditEntry.created_at) >= flt.since)
    if flt.until is not None:
        conditions.append(col(AuditEntry.created_at) < flt.until)
    return conditions


def audit_entries(
    session: Session,
    account_ids: Sequence[int],
    flt: AuditFilter = AuditFilter(),
    *,
    offset: int = 0,
    limit: int = 50,
) -> list[AuditEntry]:
    """Entries of *account_ids* (the viewer's and its sub-accounts') matching *flt*,
    newest first."""
    return list(
        session.execute(
            select(AuditEntry)
            .where(*_audit_conditions(session, account_ids, flt))
            .order_by(col(AuditEntry.id).desc())
            .offset(offset)
            .limit(limit)
        ).scalars()
    )


def count_audit_entries(
    session: Session,
    account_ids: Sequence[int],
    flt: AuditFilter = AuditFilter(),
) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(AuditEntry)
            .where(*_audit_conditions(session, account_ids, flt))
        ).scalar_one()
    )


def audit_actions(session: Session, account_ids: Sequence[int]) -> list[str]:
    """The distinct actions recorded for these accounts (the filter's choices)."""
    return list(
        session.execute(
            select(col(AuditEntry.action))
            .where(col(AuditEntry.account_id).in_(list(account_ids)))
            .distinct()
            .order_by(col(AuditEntry.action))
        ).scalars()
    )


def actor_names(session: Session, entries: Iterable[AuditEntry]) -> dict[str, str]:
    """``user:N`` actors with the user's e-mail, for display."""
    ids = {
        int(entry.actor.split(":", 1)[1])
        for entry in entries
        if entry.actor.startswith("user:") and entry.actor[5:].isdigit()
    }
    if not ids:
        return {}
    rows = session.execute(select(col(User.id), col(User.email)).where(col(User.id).in_(ids)))
    return {f"user:{user_id}": email for user_id, email in rows.all()}


def _cell(value: str) -> str:
    # Text, never a formula: an actor or target typed as "=HYPERLINK(...)" stays text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def audit_csv(
    entries: Sequence[AuditEntry],
    names: Mapping[str, str],
    accounts: Mapping[int, str],
    *,
    local: Any,
    header: Sequence[str],
) -> str:
    """The entries as CSV (one row each; *local* formats a moment for the reader)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for entry in entries:
        writer.writerow(
            [
                local(entry.created_at),
                _cell(accounts.get(entry.account_id or 0, str(entry.account_id or ""))),
                _cell(entry.actor),
                _cell(names.get(entry.actor, "")),
                _cell(entry.action),
                _cell(entry.target),
                entry.ip or "",
                _cell(json.dumps(entry.details, ensure_ascii=False, sort_keys=True, default=str)),
            ]
        )
    return out.getvalue()


def purge_audit(session: Session, retention_days: int, *, now: datetime | None = None) -> int:
    """Delete entries older than *retention_days* (at least a year is always kept);
    returns how many went."""
    if retention_days < 365:
        raise ValidationFailed(
            "the audit log is kept at least 365 days, not {days}",
            field="audit_retention_days",
            days=retention_days,
        )
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    result = session.execute(delete(AuditEntry).where(col(AuditEntry.created_at) < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


def account_of_email(session: Session, email: str) -> int | None:
    """The account of the user with this e-mail, to file a failed login under it."""
    return session.execute(
        select(col(User.account_id)).where(col(User.email) == email.strip().lower())
    ).scalar_one_or_none()
