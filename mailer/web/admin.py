"""Portal pages of tenancy administration: the account's allowance ("Cuenta"), its
sub-accounts and their allowances ("Subcuentas"), its users ("Usuarios"), the audit log
("Auditoría"), each user's two-factor login ("Seguridad") and the public page where a new
user chooses a password.  The pages call ``mailer.accounts.admin`` and
``mailer.accounts.totp``; the welcome e-mail goes out as a transactional message.

Who sees what: every role sees its own account's balance and movements; administrators
manage users, sub-accounts and read the audit log; a parent's administrator also sees its
sub-accounts' balances, movements and audit entries, and may act in one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import segno
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlmodel import Session

from mailer.accounts import admin, credits, totp
from mailer.accounts.models import Account, User
from mailer.accounts.roles import ROLE_LABELS_ES
from mailer.accounts.service import Principal, audit, get_account
from mailer.campaigns import transactional
from mailer.core.config import Settings
from mailer.core.errors import AuthenticationFailed, MailerError
from mailer.core.tokens import BadToken
from mailer.core.types import Channel, Role
from mailer.web.auth import (
    Admin,
    CsrfChecked,
    Id,
    Page,
    Reader,
    SessionDep,
    act_in,
)
from mailer.web.pages import client_ip, flash, redirect, render, tr

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
NO_STORE = {"Cache-Control": "no-store"}
SECRET_PAGE = {**NO_STORE, "Referrer-Policy": "no-referrer"}
MAX_QUANTITY = 10**12
Quantity = Annotated[int, Form(ge=0, le=MAX_QUANTITY)]
Text = Annotated[str, Query(max_length=200)]
DateText = Annotated[str, Query(max_length=10)]

CHANNEL_LABELS = {Channel.EMAIL.value: "Correo", Channel.SMS.value: "SMS"}
KIND_LABELS_ES = {
    "grant": "Asignación",
    "reserve": "Reserva",
    "charge": "Consumo",
    "release": "Liberación",
    "transfer_out": "Transferencia enviada",
    "transfer_in": "Transferencia recibida",
    "expire": "Vencimiento",
}
ROLES = [(role.value, ROLE_LABELS_ES[role]) for role in Role]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(getattr(request.state, "timezone", None) or _settings(request).timezone)


def _day(text: str, zone: ZoneInfo) -> datetime | None:
    """The start of a local day given as YYYY-MM-DD; None when empty or not a date."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def _range(since: str, until: str, zone: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """[since, until] as local days, both included."""
    start, end = _day(since, zone), _day(until, zone)
    return start, (end + timedelta(days=1) if end is not None else None)


def _query(**values: Any) -> str:
    return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _acting(request: Request) -> bool:
    user = getattr(request.state, "user", None)
    return bool(user and user.acting_in)


def _context(nav: str) -> dict[str, Any]:
    return {
        "nav": nav,
        "channel_names": CHANNEL_LABELS,
        "kind_labels": KIND_LABELS_ES,
        "roles": ROLES,
        "role_labels": {role.value: label for role, label in ROLE_LABELS_ES.items()},
    }


# -- "Cuenta": balances and movements --------------------------------------------------


def _ledger_context(
    request: Request,
    session: Session,
    account: Account,
    *,
    channel: str,
    kind: str,
    since: str,
    until: str,
    page: int,
) -> dict[str, Any]:
    assert account.id is not None
    zone = _zone(request)
    start, end = _range(since, until, zone)
    flt = admin.MovementFilter(
        channel=channel if channel in CHANNEL_LABELS else "",
        kind=kind if kind in KIND_LABELS_ES else "",
        since=start,
        until=end,
    )
    movements = admin.list_movements(
        session, account.id, flt, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    counterparts = {m.counterpart_id for m in movements if m.counterpart_id}
    names = {a.id: a.name for a in (session.get(Account, i) for i in counterparts) if a is not None}
    parent = session.get(Account, account.parent_id) if account.parent_id else None
    return {
        "account": account,
        "parent": parent,
        "balances": credits.balances(session, account.id),
        "movements": movements,
        "total": admin.count_movements(session, account.id, flt),
        "counterparts": names,
        "filters": {"channel": flt.channel, "kind": flt.kind, "since": since, "until": until},
        "query": _query(channel=flt.channel, kind=flt.kind, since=since, until=until),
        "page": page,
        "page_size": PAGE_SIZE,
    }


@router.get("/account")
def account_page(
    request: Request,
    session: SessionDep,
    principal: Reader,
    channel: Text = "",
    kind: Text = "",
    since: DateText = "",
    until: DateText = "",
    page: Page = 1,
) -> HTMLResponse:
    account = get_account(session, principal.account_id)
    return render(
        request,
        "admin/account.html",
        **_ledger_context(
            request,
            session,
            account,
            channel=channel,
            kind=kind,
            since=since,
            until=until,
            page=page,
        ),
        **_context("account"),
    )


# -- "Subcuentas" ----------------------------------------------------------------------


@router.get("/subaccounts")
def subaccounts_page(request: Request, session: SessionDep, principal: Admin) -> HTMLResponse:
    return _subaccounts_page(request, session, principal)


def _subaccounts_page(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    error: str = "",
    form: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "admin/subaccounts.html",
        status_code=status_code,
        account=get_account(session, principal.account_id),
        balances=credits.balances(session, principal.account_id),
        summaries=admin.sub_account_summaries(session, principal.account_id),
        error=error,
        form=form or {},
        acting=_acting(request),
        **_context("subaccounts"),
    )


@router.post("/subaccounts", dependencies=[CsrfChecked])
def subaccounts_create(
    request: Request,
    session: SessionDep,
    principal: Admin,
    name: Annotated[str, Form(max_length=200)] = "",
    admin_email: Annotated[str, Form(max_length=320)] = "",
    admin_name: Annotated[str, Form(max_length=200)] = "",
    admin_password: Annotated[str, Form(max_length=200)] = "",
    email_allowance: Quantity = 0,
    sms_allowance: Quantity = 0,
    send_welcome: Annotated[bool, Form()] = False,
) -> Response:
    form = {
        "name": name,
        "admin_email": admin_email,
        "admin_name": admin_name,
        "email_allowance": email_allowance,
        "sms_allowance": sms_allowance,
        "send_welcome": send_welcome,
    }
    try:
        created = admin.create_sub_account(
            session,
            principal.account_id,
            name,
            admin_email=admin_email,
            admin_name=admin_name,
            admin_password=admin_password or None,
            allowances={"email": email_allowance, "sms": sms_allowance},
            actor=principal.actor,
        )
    except MailerError as exc:
        session.rollback()
        return _subaccounts_page(
            request, session, principal, error=tr(exc), form=form, status_code=422
        )
    sub, user = created.account, created.admin
    assert sub.id is not None
    ip = client_ip(request)
    admin.audit_sub_account_created(session, principal, created, ip=ip)
    outcome = _welcome(request, session, principal, user, sub, send=send_welcome)
    return _created_page(request, session, user, sub, outcome, nav="subaccounts")


@router.get("/subaccounts/{sub_id}")
def subaccount_page(
    request: Request,
    sub_id: Id,
    session: SessionDep,
    principal: Admin,
    channel: Text = "",
    kind: Text = "",
    since: DateText = "",
    until: DateText = "",
    page: Page = 1,
) -> HTMLResponse:
    sub = admin.get_sub_account(session, principal.account_id, sub_id)
    return render(
        request,
        "admin/subaccount.html",
        **_ledger_context(
            request, session, sub, channel=channel, kind=kind, since=since, until=until, page=page
        ),
        parent_balances=credits.balances(session, principal.account_id),
        users=admin.list_users(session, sub_id),
        acting=_acting(request),
        **_context("subaccounts"),
    )


@router.post("/subaccounts/{sub_id}/transfer", dependencies=[CsrfChecked])
def subaccount_transfer(
    request: Request,
    sub_id: Id,
    session: SessionDep,
    principal: Admin,
    channel: Annotated[str, Form(max_length=8)] = "",
    quantity: Quantity = 0,
    direction: Annotated[str, Form(max_length=8)] = "give",
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    take_back = direction == "take"
    try:
        admin.move_allowance(
            session,
            principal.account_id,
            sub_id,
            channel,
            quantity,
            take_back=take_back,
            actor=principal.actor,
            note=note,
        )
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/subaccounts/{sub_id}")
    admin.audit_both(
        session,
        principal,
        sub_id,
        "credits.take_back" if take_back else "credits.transfer",
        f"account:{sub_id}",
        ip=client_ip(request),
        channel=channel,
        quantity=quantity,
        note=note.strip(),
    )
    label = CHANNEL_LABELS.get(channel, channel)
    flash(
        request,
        f"Se retiraron {quantity:,} de {label} de la subcuenta."
        if take_back
        else f"Se transfirieron {quantity:,} de {label} a la subcuenta.",
    )
    return redirect(f"/subaccounts/{sub_id}")


@router.post("/subaccounts/{sub_id}/switch", dependencies=[CsrfChecked])
def subaccount_switch(
    request: Request, sub_id: Id, session: SessionDep, principal: Admin
) -> Response:
    """Act in a sub-account (as its administrator) until "volver"."""
    if _acting(request):
        flash(request, "Vuelva a su cuenta antes de entrar en otra subcuenta.", "error")
        return redirect("/subaccounts")
    sub = admin.get_sub_account(session, principal.account_id, sub_id)
    admin.audit_both(
        session, principal, sub_id, "subaccount.switch", f"account:{sub_id}", ip=client_ip(request)
    )
    act_in(request, sub_id)
    flash(request, f"Está administrando la subcuenta «{sub.name}».")
    return redirect("/")


@router.post("/subaccounts/leave", dependencies=[CsrfChecked])
def subaccount_leave(request: Request, principal: Reader) -> Response:
    act_in(request, None)
    flash(request, "Volvió a su cuenta.")
    return redirect("/subaccounts")


# -- "Usuarios" ------------------------------------------------------------------------


@router.get("/users")
def users_page(request: Request, session: SessionDep, principal: Admin) -> HTMLResponse:
    return _users_page(request, session, principal)


def _users_page(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    error: str = "",
    form: Mapping[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "admin/users.html",
        status_code=status_code,
        account=get_account(session, principal.account_id),
        users=admin.list_users(session, principal.account_id),
        has_password=admin.has_password,
        totp_enabled=totp.is_enabled,
        error=error,
        form=form or {"role": Role.EDITOR.value, "send_welcome": True},
        **_context("users"),
    )


@router.post("/users", dependencies=[CsrfChecked])
def users_create(
    request: Request,
    session: SessionDep,
    principal: Admin,
    email: Annotated[str, Form(max_length=320)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    send_welcome: Annotated[bool, Form()] = False,
) -> Response:
    form = {"email": email, "name": name, "role": role, "send_welcome": send_welcome}
    try:
        user = admin.invite_user(
            session, principal.account_id, email, role, name=name, password=password or None
        )
    except MailerError as exc:
        session.rollback()
        return _users_page(request, session, principal, error=tr(exc), form=form, status_code=422)
    audit(
        session,
        principal,
        "user.create",
        f"user:{user.id}",
        ip=client_ip(request),
        email=user.email,
        role=user.role,
    )
    account = get_account(session, principal.account_id)
    outcome = _welcome(request, session, principal, user, account, send=send_welcome)
    return _created_page(request, session, user, account, outcome, nav="users")


@router.post("/users/{user_id}/role", dependencies=[CsrfChecked])
def users_role(
    request: Request,
    user_id: Id,
    session: SessionDep,
    principal: Admin,
    role: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    try:
        user, former = admin.change_role(
            session, principal.account_id, user_id, role, acting_user_id=principal.user_id
        )
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect("/users")
    if former != user.role:
        audit(
            session,
            principal,
            "user.role",
            f"user:{user_id}",
            ip=client_ip(request),
            email=user.email,
            before=former,
            after=user.role,
        )
        flash(request, f"{user.email} ahora es {ROLE_LABELS_ES[Role(user.role)]}.")
    return redirect("/users")


@router.post("/users/{user_id}/{action}", dependencies=[CsrfChecked])
def users_action(
    request: Request, user_id: Id, action: str, session: SessionDep, principal: Admin
) -> Response:
    """Deactivate or activate a user, reset their two-factor login (a lost phone), or send
    the welcome again (with a new link to choose a password)."""
    if action not in ("deactivate", "activate", "totp-reset", "welcome"):
        flash(request, f"Acción desconocida: {action}", "error")
        return redirect("/users")
    ip = client_ip(request)
    try:
        if action in ("deactivate", "activate"):
            user = admin.set_active(
                session,
                principal.account_id,
                user_id,
                action == "activate",
                acting_user_id=principal.user_id,
            )
        else:
            user = admin.get_account_user(session, principal.account_id, user_id)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect("/users")
    if action == "totp-reset":
        totp.reset(session, user)
        user.session_epoch += 1
    audit(
        session,
        principal,
        f"user.{action.replace('-', '_')}",
        f"user:{user_id}",
        ip=ip,
        email=user.email,
    )
    if action == "welcome":
        account = get_account(session, principal.account_id)
        outcome = _welcome(request, session, principal, user, account, send=True)
        return _created_page(request, session, user, account, outcome, nav="users", again=True)
    flash(
        request,
        {
            "deactivate": f"{user.email} fue desactivado: sus sesiones terminaron.",
            "activate": f"{user.email} fue activado de nuevo.",
            "totp-reset": f"Se quitó la verificación en dos pasos de {user.email}.",
        }[action],
    )
    return redirect("/users")


# -- the welcome e-mail ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeOutcome:
    sent: bool
    notice: str
    link: str | None  # the set-password link, shown when the e-mail did not carry it
    message_id: int | None = None


def _welcome(
    request: Request,
    session: Session,
    principal: Principal,
    user: User,
    account: Account,
    *,
    send: bool,
) -> WelcomeOutcome:
    """Queue the welcome of *user* as a transactional e-mail of the acting account (which
    pays one unit of its allowance, when metered); commit; enqueue.  Whatever stops it is
    told on the page, never raised: the user exists already."""
    settings = _settings(request)
    link = None
    if not admin.has_password(user):
        token = admin.set_password_token(
            settings.secret_key, user, days=settings.welcome.set_password_days
        )
        link = f"{settings.base_url.rstrip('/')}/set-password/{token}"
    inviter = getattr(request.state, "user", None)
    message = (
        admin.welcome_message(
            settings,
            user,
            account,
            inviter=inviter.email if inviter else "",
            set_password_url=link,
        )
        if send
        else None
    )
    if message is None:
        notice = (
            "No se envió correo de bienvenida."
            if not send
            else "No se envió el correo de bienvenida: la instalación no tiene un dominio de "
            "envío configurado (o la bienvenida está desactivada)."
        )
        session.commit()
        return WelcomeOutcome(False, notice, link)
    try:
        with session.begin_nested():
            row = transactional.queue_message(
                session,
                principal.account_id,
                to=message.to,
                to_name=message.to_name,
                subject=message.subject,
                html=message.html,
                text=message.text,
                variables=message.variables,
                from_email=message.from_email,
                from_name=message.from_name,
                origin=f"welcome:user:{user.id}",
                settings=settings,
            )
    except MailerError as exc:
        session.commit()
        return WelcomeOutcome(False, f"No se pudo enviar el correo de bienvenida: {tr(exc)}", link)
    audit(
        session,
        principal,
        "user.welcome_sent",
        f"user:{user.id}",
        ip=client_ip(request),
        message_id=row.id,
        with_link=link is not None,
    )
    session.commit()
    assert row.id is not None
    transactional.enqueue_messages([row.id])
    return WelcomeOutcome(True, f"Se envió el correo de bienvenida a {user.email}.", None, row.id)


def _created_page(
    request: Request,
    session: Session,
    user: User,
    account: Account,
    outcome: WelcomeOutcome,
    *,
    nav: str,
    again: bool = False,
) -> HTMLResponse:
    response = render(
        request,
        "admin/user_created.html",
        created_user=user,
        account=account,
        outcome=outcome,
        again=again,
        **_context(nav),
    )
    response.headers.update(SECRET_PAGE)  # it may show the set-password link
    return response


# -- choosing a password (public: the link of the welcome) -----------------------------


@router.get("/set-password/{token}")
def set_password_page(request: Request, token: str, session: SessionDep) -> HTMLResponse:
    try:
        user = admin.user_for_token(session, _settings(request).secret_key, token)
    except BadToken:
        return _bad_link(request)
    response = render(request, "admin/set_password.html", email=user.email, token=token)
    response.headers.update(SECRET_PAGE)
    return response


def _bad_link(request: Request) -> HTMLResponse:
    response = render(
        request,
        "error.html",
        status_code=400,
        status=400,
        message="El enlace venció o ya se usó. Pida a su administrador que le envíe otro.",
    )
    response.headers.update(SECRET_PAGE)
    return response


@router.post("/set-password/{token}", dependencies=[CsrfChecked])
def set_password_submit(
    request: Request,
    token: str,
    session: SessionDep,
    password: Annotated[str, Form(max_length=200)] = "",
    confirm: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    settings = _settings(request)
    try:
        user = admin.user_for_token(session, settings.secret_key, token)
    except BadToken:
        return _bad_link(request)
    error = ""
    if password != confirm:
        error = "Las dos contraseñas no coinciden."
    else:
        try:
            admin.set_password_with_token(session, settings.secret_key, token, password)
        except MailerError as exc:
            session.rollback()
            error = tr(exc)
    if error:
        response = render(
            request,
            "admin/set_password.html",
            status_code=422,
            email=user.email,
            token=token,
            error=error,
        )
        response.headers.update(SECRET_PAGE)
        return response
    audit(
        session,
        None,
        "user.password_set",
        f"user:{user.id}",
        ip=client_ip(request),
        account_id=user.account_id,
        via="link",
    )
    flash(request, "Contraseña guardada. Ya puede ingresar.")
    return redirect("/login")


# -- "Seguridad": two-factor login -----------------------------------------------------


def _own_user(session: Session, principal: Principal) -> User:
    user = session.get(User, principal.user_id) if principal.user_id else None
    assert user is not None  # a portal principal is a user
    return user


def _qr_svg(uri: str) -> Markup:
    # segno writes the SVG itself from the URI: nothing of the user's is interpolated.
    return Markup(segno.make(uri, error="m").svg_inline(scale=4, border=2))  # noqa: S704


@router.get("/security")
def security_page(request: Request, session: SessionDep, principal: Reader) -> HTMLResponse:
    return _security_page(request, session, principal)


def _security_page(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    user = _own_user(session, principal)
    try:
        pending = totp.pending_enrolment(user, _settings(request).secret_key)
    except AuthenticationFailed:
        pending = None
    response = render(
        request,
        "admin/security.html",
        status_code=status_code,
        enabled=totp.is_enabled(user),
        enabled_at=user.totp_enabled_at,
        recovery_left=totp.recovery_codes_left(user),
        pending=pending,
        qr=_qr_svg(pending.uri) if pending else None,
        error=error,
        **_context("security"),
    )
    response.headers.update(SECRET_PAGE)  # the pending secret must not stay in a cache
    return response


@router.post("/security/totp/start", dependencies=[CsrfChecked])
def totp_start(request: Request, session: SessionDep, principal: Reader) -> Response:
    user = _own_user(session, principal)
    try:
        totp.begin_enrolment(session, user, _settings(request).secret_key)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
    return redirect("/security")


@router.post("/security/totp/cancel", dependencies=[CsrfChecked])
def totp_cancel(request: Request, session: SessionDep, principal: Reader) -> Response:
    user = _own_user(session, principal)
    if not totp.is_enabled(user):
        totp.reset(session, user)
    return redirect("/security")


@router.post("/security/totp/confirm", dependencies=[CsrfChecked])
def totp_confirm(
    request: Request,
    session: SessionDep,
    principal: Reader,
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    user = _own_user(session, principal)
    try:
        codes = totp.confirm_enrolment(session, user, code, _settings(request).secret_key)
    except MailerError as exc:
        session.rollback()
        return _security_page(request, session, principal, error=tr(exc), status_code=422)
    audit(session, principal, "totp.enable", f"user:{user.id}", ip=client_ip(request))
    return _recovery_page(request, codes, enabled=True)


def _recovery_page(request: Request, codes: list[str], *, enabled: bool) -> HTMLResponse:
    response = render(
        request, "admin/recovery_codes.html", codes=codes, enabled=enabled, **_context("security")
    )
    response.headers.update(SECRET_PAGE)
    return response


def _second_factor_failed(
    request: Request, session: Session, principal: Principal, user: User, exc: MailerError
) -> HTMLResponse:
    """A wrong password or code on this page counts like one at login (throttled)."""
    session.rollback()
    counted = isinstance(exc, AuthenticationFailed) and not isinstance(exc, totp.TotpLocked)
    if counted and totp.is_enabled(user):
        audit(session, principal, totp.FAILED_ACTION, f"user:{user.id}", ip=client_ip(request))
        session.commit()
    return _security_page(request, session, principal, error=tr(exc), status_code=422)


@router.post("/security/totp/disable", dependencies=[CsrfChecked])
def totp_disable(
    request: Request,
    session: SessionDep,
    principal: Reader,
    password: Annotated[str, Form(max_length=200)] = "",
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    user = _own_user(session, principal)
    try:
        totp.disable(session, user, password, code, _settings(request).secret_key)
    except MailerError as exc:
        return _second_factor_failed(request, session, principal, user, exc)
    audit(session, principal, "totp.disable", f"user:{user.id}", ip=client_ip(request))
    flash(request, "Verificación en dos pasos desactivada.")
    return redirect("/security")


@router.post("/security/recovery-codes", dependencies=[CsrfChecked])
def totp_recovery_codes(
    request: Request,
    session: SessionDep,
    principal: Reader,
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    user = _own_user(session, principal)
    try:
        codes = totp.regenerate_recovery_codes(session, user, code, _settings(request).secret_key)
    except MailerError as exc:
        return _second_factor_failed(request, session, principal, user, exc)
    audit(session, principal, "totp.recovery_codes", f"user:{user.id}", ip=client_ip(request))
    return _recovery_page(request, codes, enabled=False)


# -- "Auditoría" -----------------------------------------------------------------------


def _audit_filter(
    request: Request,
    account_ids: list[int],
    *,
    account: int,
    actor: str,
    action: str,
    target: str,
    since: str,
    until: str,
) -> admin.AuditFilter:
    start, end = _range(since, until, _zone(request))
    return admin.AuditFilter(
        account_id=account if account in account_ids else None,
        actor=actor,
        action=action,
        target=target,
        since=start,
        until=end,
    )


AccountChoice = Annotated[int, Query(ge=0, le=2**31 - 1)]


@router.get("/audit")
def audit_page(
    request: Request,
    session: SessionDep,
    principal: Admin,
    account: AccountChoice = 0,
    actor: Text = "",
    action: Text = "",
    target: Text = "",
    since: DateText = "",
    until: DateText = "",
    page: Page = 1,
) -> HTMLResponse:
    ids = admin.visible_account_ids(session, principal.account_id)
    flt = _audit_filter(
        request,
        ids,
        account=account,
        actor=actor,
        action=action,
        target=target,
        since=since,
        until=until,
    )
    entries = admin.audit_entries(session, ids, flt, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    query = _query(
        account=flt.account_id,
        actor=actor,
        action=action,
        target=target,
        since=since,
        until=until,
    )
    return render(
        request,
        "admin/audit.html",
        entries=entries,
        total=admin.count_audit_entries(session, ids, flt),
        names=admin.actor_names(session, entries),
        accounts=_account_names(session, ids),
        actions=admin.audit_actions(session, ids),
        filters={
            "account": flt.account_id or 0,
            "actor": actor,
            "action": action,
            "target": target,
            "since": since,
            "until": until,
        },
        query=query,
        page=page,
        page_size=PAGE_SIZE,
        retention_days=_settings(request).audit_retention_days,
        **_context("audit"),
    )


def _account_names(session: Session, ids: list[int]) -> dict[int, str]:
    return {
        account.id: account.name
        for account in (session.get(Account, i) for i in ids)
        if account is not None and account.id is not None
    }


@router.get("/audit.csv")
def audit_export(
    request: Request,
    session: SessionDep,
    principal: Admin,
    account: AccountChoice = 0,
    actor: Text = "",
    action: Text = "",
    target: Text = "",
    since: DateText = "",
    until: DateText = "",
) -> Response:
    """The filtered audit log as CSV (UTF-8 with BOM, for Excel); the export is audited."""
    ids = admin.visible_account_ids(session, principal.account_id)
    flt = _audit_filter(
        request,
        ids,
        account=account,
        actor=actor,
        action=action,
        target=target,
        since=since,
        until=until,
    )
    entries = admin.audit_entries(session, ids, flt, limit=admin.CSV_EXPORT_LIMIT)
    zone = _zone(request)
    data = admin.audit_csv(
        entries,
        admin.actor_names(session, entries),
        _account_names(session, ids),
        local=lambda moment: moment.astimezone(zone).strftime("%d/%m/%Y %H:%M:%S"),
        header=("fecha", "cuenta", "actor", "usuario", "acción", "objetivo", "ip", "detalles"),
    )
    audit(
        session,
        principal,
        "audit.export",
        "audit_log",
        ip=client_ip(request),
        rows=len(entries),
        filters=_query(
            account=flt.account_id,
            actor=actor,
            action=action,
            target=target,
            since=since,
            until=until,
        ),
    )
    return Response(
        data.encode("utf-8-sig"),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="auditoria.csv"',
            **NO_STORE,
        },
    )
