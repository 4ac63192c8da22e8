"""The account-management routes of ``/api/v1``: API keys, the allowance movements,
sub-accounts and their allowances, and the audit log: what the portal's administration
pages and ``mailer apikey ...`` do, for the integrators' administrators.

Every rule lives in :mod:`mailer.accounts` (``service`` for keys and the audit entries,
``admin`` for sub-accounts, movements and the audit queries, ``credits`` for transfers);
this module checks who is calling, calls them, and audits what changed the way the portal
does.  Two guards are the API's own, because they are about the credential calling: a key
never gets a role or scopes beyond those of the credential creating it, and a key does not
revoke itself.

``POST /keys`` does not honour ``Idempotency-Key``: a stored response would keep the new
key's secret in the database; a retry finds the name taken (409) instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailer.accounts import admin, credits
from mailer.accounts.models import ApiKey, AuditEntry, CreditEntry, CreditKind
from mailer.accounts.roles import GRANTS, Permission, require
from mailer.accounts.scopes import PERMISSION_OF, Scope, format_scopes, require_scope, role_scopes
from mailer.accounts.service import (
    API_KEY_PREFIX,
    Principal,
    audit,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from mailer.api.deps import MAX_ID, Admin, Id, Limit, Offset, Reader, SessionDep, api_principal
from mailer.api.openapi import NO_IDEMPOTENCY_KEY
from mailer.api.sms import BalanceOut
from mailer.core.errors import PermissionDenied, ValidationFailed
from mailer.core.types import Channel, Role

router = APIRouter(prefix="/api/v1", tags=["account"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_QUANTITY = 10**12  # allowance units in one request
AccountId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="A direct sub-account.")]
Since = Annotated[AwareDatetime | None, Query(description="From this moment (included).")]
Until = Annotated[AwareDatetime | None, Query(description="Until this moment (excluded).")]


def key_admin(
    principal: Annotated[Principal, Depends(api_principal)],
) -> Principal:
    """An administrator's credential with the ``admin`` scope, like ``deps.Admin``, but
    without claiming an ``Idempotency-Key`` (see the module)."""
    require(principal.role, Permission.ADMIN)
    require_scope(principal.scopes, Permission.ADMIN)
    return principal


KeyAdmin = Annotated[Principal, Depends(key_admin)]


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _utc(moment: datetime | None, field: str) -> datetime | None:
    """*moment* in UTC (as stored), or a clear refusal for a moment that has no UTC form
    (year 1 at +05:00)."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            "{moment} is out of the range of dates", field=field, moment=moment.isoformat()
        ) from None


# -- API keys --------------------------------------------------------------------------


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "ERP Compras", "role": "manager", "scopes": ["read", "sms:send"]},
                {"name": "Tablero de consumo", "role": "viewer"},
            ]
        }
    )
    name: str = Field(
        min_length=1, max_length=200, description="The application that will use the key."
    )
    role: Role = Field(Role.MANAGER, description="admin, manager, editor or viewer.")
    scopes: list[Scope] | None = Field(
        None,
        max_length=20,
        description="Restrict the key further than its role: read, edit, send, admin, "
        "email:send, sms:send (none: everything the role allows).  Never more than the "
        "calling credential holds.",
    )
    rate_per_second: float | None = Field(
        None, ge=0, le=1e6, description="Its own rate limit (0: none; absent: the install's)."
    )
    burst: int | None = Field(None, ge=1, le=MAX_ID, description="Its own burst.")


KEY_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "name": "ERP Compras",
    "prefix": "mk_3f9a1c0b",
    "role": "manager",
    "scopes": ["read", "sms:send"],
    "rate_per_second": None,
    "burst": None,
    "created_at": "2026-11-02T14:05:00Z",
    "last_used_at": "2026-11-20T08:12:44Z",
    "revoked_at": None,
}


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [KEY_EXAMPLE]})
    id: int
    name: str = Field(description="The application using the key.")
    prefix: str = Field(description="The key's first characters (mk_<prefix>_...).")
    role: str
    scopes: list[str] = Field(description="Empty: everything the role allows.")
    rate_per_second: float | None
    burst: int | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None


class ApiKeySecretOut(ApiKeyOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **KEY_EXAMPLE,
                    "last_used_at": None,
                    "key": "mk_3f9a1c0b_q5V0b8mYw1d3JcTtF9kzG6nXW2rLhEa4sUoPiCvDyZ0",
                }
            ]
        }
    )
    key: str = Field(description="The secret: shown this once; only its hash is kept.")


def _key_out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id or 0,
        "name": key.name,
        "prefix": f"{API_KEY_PREFIX}{key.prefix}",
        "role": key.role,
        "scopes": key.scopes.split(),
        "rate_per_second": key.rate_per_second,
        "burst": key.burst,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


def check_within_creator(principal: Principal, role: Role, scopes: list[Scope] | None) -> None:
    """Refuse a key that could do more than the credential creating it: a role with a
    permission the creator's role lacks, or (for a creator restricted to scopes) a scope
    it does not hold.  A key without scopes has every scope of its role."""
    if not GRANTS[role] <= GRANTS[Role(principal.role)]:
        raise PermissionDenied(
            "a key cannot have a role above its creator's ({role})",
            field="role",
            role=principal.role,
        )
    if principal.scopes is None:
        return
    wanted = set(scopes or role_scopes(role))
    held = principal.scopes
    beyond = {s for s in wanted if s not in held and PERMISSION_OF[s].value not in held}
    if beyond:
        raise PermissionDenied(
            "a key cannot have scopes its creator lacks: {scopes} (yours: {granted})",
            field="scopes",
            scopes=format_scopes(beyond),
            granted=format_scopes(held) or "-",
        )


@router.get("/keys", response_model=list[ApiKeyOut], summary="API keys")
def get_keys(session: SessionDep, principal: Admin) -> list[ApiKeyOut]:
    """The account's API keys, revoked ones included, with their first characters to
    recognise them; their secrets are never shown again."""
    return [ApiKeyOut(**_key_out(key)) for key in list_api_keys(session, principal.account_id)]


@router.post(
    "/keys",
    response_model=ApiKeySecretOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key",
    openapi_extra={NO_IDEMPOTENCY_KEY: True},
)
def post_key(
    body: ApiKeyIn,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: KeyAdmin,
) -> ApiKeySecretOut:
    """A key for one application, with a role and optionally scopes, never beyond the
    calling credential's.  The answer carries the secret (``key``) this once.

    ``Idempotency-Key`` is not honoured here (the secret is never stored, not even for a
    replay): a retry after a lost answer gets 409 (the name is taken); revoke that key and
    create another."""
    check_within_creator(principal, body.role, body.scopes)
    key, plaintext = create_api_key(
        session,
        principal.account_id,
        body.name,
        body.role.value,
        created_by=principal.user_id,
        scopes=body.scopes,
        rate_per_second=body.rate_per_second,
        burst=body.burst,
    )
    audit(
        session,
        principal,
        "apikey.create",
        f"apikey:{key.id}",
        ip=_ip(request),
        name=key.name,
        role=key.role,
        scopes=key.scopes,
    )
    session.commit()
    response.headers.update(NO_STORE)
    return ApiKeySecretOut(**_key_out(key), key=plaintext)


@router.delete(
    "/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key"
)
def delete_key(key_id: Id, request: Request, session: SessionDep, principal: Admin) -> Response:
    """Revoke the key: the next request made with it is refused (401).  Revoking a key
    already revoked changes nothing.  A key cannot revoke itself: use another key or
    ``mailer apikey revoke``."""
    if principal.api_key_id == key_id:
        raise PermissionDenied(
            "a key cannot revoke itself: use another key or `mailer apikey revoke`",
            field="key_id",
        )
    key = revoke_api_key(session, principal.account_id, key_id)
    audit(session, principal, "apikey.revoke", f"apikey:{key.id}", ip=_ip(request), name=key.name)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- allowance movements ---------------------------------------------------------------


class MovementOut(BaseModel):
    id: int
    channel: str
    kind: str = Field(description=", ".join(admin.MOVEMENT_KINDS))
    quantity: int = Field(description="Units moved (always positive; kind tells the way).")
    available_after: int = Field(description="The balance available right after it.")
    held_after: int = Field(description="Units held for unsettled messages right after it.")
    ref: str = Field(description='What caused it: "campaign:12", "api:sms", "account:4"...')
    counterpart_id: int | None = Field(description="The other account of a transfer.")
    actor: str
    note: str
    valid_until: datetime | None = Field(description="The validity of a grant.")
    created_at: datetime


class MovementPageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": 1,
                    "total": 214,
                    "movements": [
                        {
                            "id": 9031,
                            "channel": "sms",
                            "kind": "transfer_out",
                            "quantity": 5000,
                            "available_after": 74200,
                            "held_after": 300,
                            "ref": "account:4",
                            "counterpart_id": 4,
                            "actor": "apikey:7 (ERP Compras)",
                            "note": "campaña de diciembre",
                            "valid_until": None,
                            "created_at": "2026-11-20T15:04:05Z",
                        }
                    ],
                }
            ]
        }
    )
    account_id: int
    total: int = Field(description="Movements matching the filters, on every page.")
    movements: list[MovementOut] = Field(description="Newest first.")


def _movement_out(entry: CreditEntry) -> MovementOut:
    return MovementOut(
        id=entry.id or 0,
        channel=entry.channel,
        kind=entry.kind,
        quantity=entry.quantity,
        available_after=entry.available_after,
        held_after=entry.held_after,
        ref=entry.ref,
        counterpart_id=entry.counterpart_id,
        actor=entry.actor,
        note=entry.note,
        valid_until=entry.valid_until,
        created_at=entry.created_at,
    )


def _viewed_account(session: Session, principal: Principal, account_id: int | None) -> int:
    """The caller's account, or one of its direct sub-accounts for an administrator."""
    if account_id is None or account_id == principal.account_id:
        return principal.account_id
    require(principal.role, Permission.ADMIN)
    require_scope(principal.scopes, Permission.ADMIN)
    admin.visible_account(session, principal.account_id, account_id)
    return account_id


@router.get("/credits/movements", response_model=MovementPageOut, summary="Allowance movements")
def get_movements(
    session: SessionDep,
    principal: Reader,
    channel: Channel | None = None,
    kind: CreditKind | None = None,
    since: Since = None,
    until: Until = None,
    account_id: AccountId = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> MovementPageOut:
    """The movements of the account's allowances (grants, reservations, charges,
    releases, transfers, expiries), newest first, with the balance after each, and the
    total.  ``account_id``: one of its direct sub-accounts (administrators only)."""
    viewed = _viewed_account(session, principal, account_id)
    flt = admin.MovementFilter(
        channel=channel.value if channel else "",
        kind=kind.value if kind else "",
        since=_utc(since, "since"),
        until=_utc(until, "until"),
    )
    return MovementPageOut(
        account_id=viewed,
        total=admin.count_movements(session, viewed, flt),
        movements=[
            _movement_out(entry)
            for entry in admin.list_movements(session, viewed, flt, offset=offset, limit=limit)
        ],
    )


# -- sub-accounts ----------------------------------------------------------------------


def _balance_out(balance: credits.Balance) -> BalanceOut:
    return BalanceOut(
        channel=balance.channel,
        available=balance.available,
        held=balance.held,
        valid_until=balance.valid_until,
    )


BALANCE_EXAMPLE: dict[str, Any] = {
    "channel": "sms",
    "available": 5000,
    "held": 0,
    "valid_until": None,
}


class SubAccountOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4,
                    "name": "Oficina Regional Cusco",
                    "active": True,
                    "timezone": "America/Lima",
                    "users": 3,
                    "admins": 1,
                    "balances": [BALANCE_EXAMPLE],
                    "created_at": "2026-11-02T14:05:00Z",
                }
            ]
        }
    )
    id: int
    name: str
    active: bool
    timezone: str
    users: int = Field(description="Active users.")
    admins: int = Field(description="Active administrators.")
    balances: list[BalanceOut] = Field(description="Its allowance per metered channel.")
    created_at: datetime


class AllowancesIn(BaseModel):
    email: int = Field(0, ge=0, le=MAX_QUANTITY)
    sms: int = Field(0, ge=0, le=MAX_QUANTITY)


class SubAccountIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Oficina Regional Cusco",
                    "admin_email": "jefe.cusco@entidad.gob.pe",
                    "admin_name": "Rosa Huamán",
                    "admin_password": "una clave larga y propia",
                    "allowances": {"email": 20000, "sms": 5000},
                }
            ]
        }
    )
    name: str = Field(min_length=1, max_length=200)
    admin_email: str = Field(
        min_length=3, max_length=320, description="Its first administrator (a new user)."
    )
    admin_name: str = Field("", max_length=200)
    admin_password: str | None = Field(
        None,
        max_length=200,
        description="At least 10 characters.  Absent: the administrator cannot log in until "
        "they choose one (send them the welcome from the portal).",
    )
    allowances: AllowancesIn = Field(
        default_factory=AllowancesIn,
        description="Units per channel transferred now from this account's allowance.",
    )


class SubAccountAdminOut(BaseModel):
    id: int
    email: str
    role: str
    needs_password: bool = Field(description="Created without a password.")


class SubAccountCreatedOut(SubAccountOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4,
                    "name": "Oficina Regional Cusco",
                    "active": True,
                    "timezone": "America/Lima",
                    "users": 1,
                    "admins": 1,
                    "balances": [
                        {"channel": "email", "available": 20000, "held": 0, "valid_until": None},
                        BALANCE_EXAMPLE,
                    ],
                    "created_at": "2026-11-02T14:05:00Z",
                    "admin": {
                        "id": 12,
                        "email": "jefe.cusco@entidad.gob.pe",
                        "role": "admin",
                        "needs_password": False,
                    },
                }
            ]
        }
    )
    admin: SubAccountAdminOut


class AllowanceMoveIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"channel": "sms", "quantity": 500, "direction": "give"},
                {"channel": "email", "quantity": 1000, "direction": "take", "note": "no usado"},
            ]
        }
    )
    channel: Channel
    quantity: int = Field(ge=1, le=MAX_QUANTITY)
    direction: Literal["give", "take"] = Field(
        "give", description="give: from this account; take: back from the sub-account."
    )
    note: str = Field("", max_length=500)


class AllowanceMoveOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subaccount_id": 4,
                    "channel": "sms",
                    "quantity": 500,
                    "direction": "give",
                    "available": 74200,
                    "subaccount_available": 5500,
                }
            ]
        }
    )
    subaccount_id: int
    channel: str
    quantity: int
    direction: str
    available: int = Field(description="This account's balance after the move.")
    subaccount_available: int = Field(description="The sub-account's balance after it.")


@router.get("/subaccounts", response_model=list[SubAccountOut], summary="Sub-accounts")
def get_subaccounts(session: SessionDep, principal: Admin) -> list[SubAccountOut]:
    """The account's direct sub-accounts, by name, with their users and balances."""
    return [
        SubAccountOut(
            id=summary.account.id or 0,
            name=summary.account.name,
            active=summary.account.active,
            timezone=summary.account.timezone,
            users=summary.users,
            admins=summary.admins,
            balances=[_balance_out(b) for b in summary.balances],
            created_at=summary.account.created_at,
        )
        for summary in admin.sub_account_summaries(session, principal.account_id)
    ]


@router.post(
    "/subaccounts",
    response_model=SubAccountCreatedOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a sub-account",
)
def post_subaccount(
    body: SubAccountIn, request: Request, session: SessionDep, principal: Admin
) -> SubAccountCreatedOut:
    """A sub-account with its first administrator and, per channel of ``allowances``,
    that many units transferred from this account, all or nothing: an allowance this
    account does not have refuses the whole request (409 ``insufficient_credit``)."""
    created = admin.create_sub_account(
        session,
        principal.account_id,
        body.name,
        admin_email=body.admin_email,
        admin_name=body.admin_name,
        admin_password=body.admin_password or None,
        allowances=body.allowances.model_dump(),
        actor=principal.actor,
    )
    sub, user = created.account, created.admin
    assert sub.id is not None and user.id is not None
    ip = _ip(request)
    admin.audit_sub_account_created(session, principal, created, ip=ip)
    session.commit()
    return SubAccountCreatedOut(
        id=sub.id,
        name=sub.name,
        active=sub.active,
        timezone=sub.timezone,
        users=1,
        admins=1,
        balances=[_balance_out(b) for b in credits.balances(session, sub.id)],
        created_at=sub.created_at,
        admin=SubAccountAdminOut(
            id=user.id, email=user.email, role=user.role, needs_password=created.needs_password
        ),
    )


@router.post(
    "/subaccounts/{subaccount_id}/allowance",
    response_model=AllowanceMoveOut,
    summary="Give allowance to a sub-account, or take it back",
)
def post_allowance(
    subaccount_id: Id,
    body: AllowanceMoveIn,
    request: Request,
    session: SessionDep,
    principal: Admin,
) -> AllowanceMoveOut:
    """Move units of one channel's available allowance to a direct sub-account
    (``give``), or back from it (``take``: only what it has not used or reserved).  More
    than the giving side has is refused (409 ``insufficient_credit``, field ``quantity``)
    and nothing moves."""
    take_back = body.direction == "take"
    out, into = admin.move_allowance(
        session,
        principal.account_id,
        subaccount_id,
        body.channel.value,
        body.quantity,
        take_back=take_back,
        actor=principal.actor,
        note=body.note,
    )
    parent_entry, sub_entry = (into, out) if take_back else (out, into)
    admin.audit_both(
        session,
        principal,
        subaccount_id,
        "credits.take_back" if take_back else "credits.transfer",
        f"account:{subaccount_id}",
        ip=_ip(request),
        channel=body.channel.value,
        quantity=body.quantity,
        note=body.note.strip(),
    )
    session.commit()
    return AllowanceMoveOut(
        subaccount_id=subaccount_id,
        channel=body.channel.value,
        quantity=body.quantity,
        direction=body.direction,
        available=parent_entry.available_after,
        subaccount_available=sub_entry.available_after,
    )


# -- audit log -------------------------------------------------------------------------


class AuditEntryOut(BaseModel):
    id: int
    account_id: int | None
    actor: str = Field(description='"user:3", "apikey:7 (ERP Compras)", "system"...')
    actor_email: str | None = Field(description="The e-mail of a user:N actor.")
    action: str
    target: str
    details: dict[str, Any]
    ip: str | None
    created_at: datetime


class AuditPageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 1,
                    "entries": [
                        {
                            "id": 812,
                            "account_id": 1,
                            "actor": "user:3",
                            "actor_email": "admin@entidad.gob.pe",
                            "action": "apikey.revoke",
                            "target": "apikey:7",
                            "details": {"name": "ERP Compras"},
                            "ip": "203.0.113.9",
                            "created_at": "2026-11-20T15:04:05Z",
                        }
                    ],
                }
            ]
        }
    )
    total: int = Field(description="Entries matching the filters, on every page.")
    entries: list[AuditEntryOut] = Field(description="Newest first.")


def _audit_out(entry: AuditEntry, names: dict[str, str]) -> AuditEntryOut:
    return AuditEntryOut(
        id=entry.id or 0,
        account_id=entry.account_id,
        actor=entry.actor,
        actor_email=names.get(entry.actor),
        action=entry.action,
        target=entry.target,
        details=entry.details,
        ip=entry.ip,
        created_at=entry.created_at,
    )


@router.get("/audit", response_model=AuditPageOut, summary="The audit log")
def get_audit(
    session: SessionDep,
    principal: Admin,
    account_id: AccountId = None,
    actor: Annotated[
        str, Query(max_length=200, description='"user:3", a user\'s e-mail, or part of it.')
    ] = "",
    action: Annotated[
        str, Query(max_length=100, description='An action, or a family ending in "." (login.).')
    ] = "",
    target: Annotated[str, Query(max_length=200, description='Part of it: "apikey:7".')] = "",
    since: Since = None,
    until: Until = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> AuditPageOut:
    """Who did what, when and from where, in this account and its direct sub-accounts
    (``account_id``: one of them only), newest first, with the total."""
    ids = admin.visible_account_ids(session, principal.account_id)
    if account_id is not None:
        admin.visible_account(session, principal.account_id, account_id)
    flt = admin.AuditFilter(
        account_id=account_id,
        actor=actor,
        action=action,
        target=target,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
    )
    entries = admin.audit_entries(session, ids, flt, offset=offset, limit=limit)
    names = admin.actor_names(session, entries)
    return AuditPageOut(
        total=admin.count_audit_entries(session, ids, flt),
        entries=[_audit_out(entry, names) for entry in entries],
    )
