"""Portal pages."""

from __future__ import annotations

from datetime import datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response

from mailer.accounts import totp
from mailer.accounts.admin import account_of_email
from mailer.accounts.service import (
    Principal,
    audit,
    authenticate,
    end_sessions,
    get_account,
    get_user,
    user_principal,
)
from mailer.analytics.service import campaign_stats, ledger_totals
from mailer.audience import service as audience
from mailer.audience.importer import ImportReport
from mailer.campaigns import service as campaigns
from mailer.content import store as templates
from mailer.content.preview import sample_subject
from mailer.core.clock import utcnow
from mailer.core.config import get_settings
from mailer.core.errors import AuthenticationFailed, MailerError
from mailer.delivery import service as delivery
from mailer.web.auth import (
    CsrfChecked,
    Editor,
    Id,
    Page,
    Reader,
    Sender,
    SessionDep,
    await_second_factor,
    login,
    second_factor_user,
)
from mailer.web.pages import (
    SANDBOX_HEADERS,
    client_ip,
    flash,
    portal_text,
    redirect,
    render,
    tr,
)
from mailer.web.studio import template_findings

router = APIRouter(include_in_schema=False)


# -- login -----------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html")


@router.post("/login", dependencies=[CsrfChecked])
def login_submit(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    try:
        user = authenticate(session, email, password)
    except AuthenticationFailed:
        # Filed under the account of the address when it is a user's, so its
        # administrators see attempts on their users.
        audit(
            session,
            None,
            "login.failed",
            email[:200],
            ip=client_ip(request),
            account_id=account_of_email(session, email),
        )
        session.commit()
        return render(
            request,
            "login.html",
            status_code=401,
            error="Correo o contraseña incorrectos.",
            email=email,
        )
    if totp.is_enabled(user):
        await_second_factor(request, user)
        return redirect("/login/totp")
    principal = user_principal(user)
    login(request, principal, user.session_epoch)
    audit(session, principal, "login", ip=client_ip(request))
    return redirect("/")


@router.get("/login/totp")
def login_totp_page(request: Request, session: SessionDep) -> Response:
    if second_factor_user(request, session) is None:
        return redirect("/login")
    return render(request, "login_totp.html")


@router.post("/login/totp", dependencies=[CsrfChecked])
def login_totp_submit(
    request: Request,
    session: SessionDep,
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The second step of a login with two-factor authentication: a code of the app, or
    one of the recovery codes."""
    user = second_factor_user(request, session)
    if user is None:
        flash(request, "El tiempo para el código venció: ingrese de nuevo.", "error")
        return redirect("/login")
    principal = user_principal(user)
    try:
        method = totp.check_code(session, user, code, get_settings().secret_key)
    except AuthenticationFailed as exc:
        if not isinstance(exc, totp.TotpLocked):
            audit(session, principal, totp.FAILED_ACTION, f"user:{user.id}", ip=client_ip(request))
        session.commit()
        return render(request, "login_totp.html", status_code=401, error=tr(exc))
    user.last_login_at = utcnow()
    session.add(user)
    login(request, principal, user.session_epoch)
    audit(session, principal, "login", ip=client_ip(request), second_factor=method)
    if method == "recovery":
        left = totp.recovery_codes_left(user)
        flash(
            request,
            f"Ingresó con un código de recuperación; le quedan {left}. "
            "Genere códigos nuevos en «Seguridad» si le quedan pocos.",
        )
    return redirect("/")


@router.post("/logout", dependencies=[CsrfChecked])
def logout(request: Request, session: SessionDep) -> Response:
    """Log out, here and everywhere: a copy of the cookie is worthless afterwards."""
    user_id = request.session.get("user_id")
    if user_id:
        user = get_user(session, int(user_id))
        end_sessions(session, int(user_id))
        if user is not None:
            audit(session, user_principal(user), "logout", ip=client_ip(request))
    request.session.clear()
    return redirect("/login")


# -- dashboard -------------------------------------------------------------------------


@router.get("/")
def dashboard(request: Request, session: SessionDep, principal: Reader) -> HTMLResponse:
    lists = audience.list_lists(session, principal.account_id)
    rows = campaigns.campaigns_with_counts(session, principal.account_id)
    return render(
        request,
        "dashboard.html",
        account=get_account(session, principal.account_id),
        campaigns=rows,
        totals=ledger_totals(session, principal.account_id),
        lists=lists,
        list_sizes={lst.id: members for lst, members in lists},
    )


# -- lists -----------------------------------------------------------------------------


@router.get("/lists")
def lists_page(request: Request, session: SessionDep, principal: Reader) -> HTMLResponse:
    return render(request, "lists.html", lists=audience.list_lists(session, principal.account_id))


@router.post("/lists", dependencies=[CsrfChecked])
def lists_create(
    request: Request,
    session: SessionDep,
    principal: Editor,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
) -> Response:
    try:
        lst = audience.create_list(session, principal.account_id, name, description)
    except MailerError as exc:
        flash(request, tr(exc), "error")
        return redirect("/lists")
    audit(session, principal, "list.create", f"list:{lst.id}", ip=client_ip(request))
    flash(request, f"Lista «{lst.name}» creada.")
    return redirect(f"/lists/{lst.id}")


@router.get("/lists/{list_id}")
def list_detail(
    request: Request, list_id: Id, session: SessionDep, principal: Reader, page: Page = 1
) -> HTMLResponse:
    lst = audience.get_list(session, principal.account_id, list_id)
    contacts = audience.list_contacts(
        session, principal.account_id, list_id, offset=(page - 1) * 100, limit=100
    )
    return render(
        request,
        "list_detail.html",
        lst=lst,
        contacts=contacts,
        page=page,
        members=audience.list_size(session, list_id),
    )


# The import itself (upload, column mapping, live progress, report) is in web/audience.py.


@router.get("/imports/{import_id}/errors.csv")
def import_errors(import_id: Id, session: SessionDep, principal: Reader) -> Response:
    """The rejected rows of an import, in Spanish, for Excel (UTF-8 with BOM)."""
    record = audience.get_import(session, principal.account_id, import_id)
    report = ImportReport(errors=audience.rejected_rows(record))
    data = report.errors_csv(portal_text, header=("línea", "columna", "valor", "motivo"))
    return Response(
        data.encode("utf-8-sig"),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="errores-importacion-{import_id}.csv"'
        },
    )


# -- campaigns -------------------------------------------------------------------------


@router.get("/campaigns/new")
def campaign_new(request: Request, session: SessionDep, principal: Editor) -> HTMLResponse:
    return render(
        request,
        "campaign_new.html",
        **_campaign_form_context(session, principal.account_id),
        form={},
    )


def _campaign_form_context(session: Any, account_id: int) -> dict[str, Any]:
    settings = get_settings()
    return {
        "lists": audience.list_lists(session, account_id),
        "templates": templates.list_templates(session, account_id),
        "domains": [d.domain for d in delivery.list_sending_domains(settings)],
    }


@router.post("/campaigns/new", dependencies=[CsrfChecked])
def campaign_create(
    request: Request,
    session: SessionDep,
    principal: Editor,
    name: Annotated[str, Form()] = "",
    template_id: Annotated[int, Form()] = 0,
    list_id: Annotated[int, Form()] = 0,
    from_name: Annotated[str, Form()] = "",
    from_email: Annotated[str, Form()] = "",
    subject: Annotated[str, Form()] = "",
) -> Response:
    form = {
        "name": name,
        "template_id": template_id,
        "list_id": list_id,
        "from_name": from_name,
        "from_email": from_email,
        "subject": subject,
    }
    try:
        campaign = campaigns.create_campaign(
            session,
            principal.account_id,
            name=name,
            template_id=template_id,
            list_id=list_id,
            from_email=from_email,
            from_name=from_name,
            subject=subject or None,
            created_by=principal.actor,
        )
    except MailerError as exc:
        session.rollback()
        return render(
            request,
            "campaign_new.html",
            status_code=422,
            form=form,
            error=tr(exc),
            **_campaign_form_context(session, principal.account_id),
        )
    audit(session, principal, "campaign.create", f"campaign:{campaign.id}", ip=client_ip(request))
    flash(request, "Campaña creada. Revísela y envíela cuando esté lista.")
    return redirect(f"/campaigns/{campaign.id}")


@router.get("/campaigns/{campaign_id}")
def campaign_detail(
    request: Request, campaign_id: Id, session: SessionDep, principal: Reader
) -> Response:
    campaign = campaigns.get_campaign(session, principal.account_id, campaign_id)
    counts = campaigns.campaign_counts(session, campaign)
    if campaign.template_id is None:  # an SMS campaign has its own page
        return redirect(f"/sms/campaigns/{campaign.id}")
    template = templates.get_template(session, principal.account_id, campaign.template_id)
    return render(
        request,
        "campaign_detail.html",
        campaign=campaign,
        counts=counts,
        live=campaigns.campaign_progress(session, campaign) if campaign.started_at else None,
        template=template,
        lst=(
            audience.get_list(session, principal.account_id, campaign.list_id)
            if campaign.list_id is not None
            else None
        ),
        segment=(
            audience.get_segment(session, principal.account_id, campaign.segment_id)
            if campaign.segment_id is not None
            else None
        ),
        audience_counts=audience.audience_counts(
            session,
            principal.account_id,
            list_id=campaign.list_id,
            segment_id=campaign.segment_id,
        ),
        sample_subject=sample_subject(campaign.subject or template.subject),
        stats=(
            campaign_stats(session, principal.account_id, campaign_id)
            if campaign.started_at is not None
            else None
        ),
        findings=template_findings(
            session,
            principal.account_id,
            campaign.subject or template.subject,
            template.html,
            template.text,
        )
        if campaign.state in ("draft", "scheduled")
        else [],
    )


@router.post("/campaigns/{campaign_id}/schedule", dependencies=[CsrfChecked])
def campaign_schedule(
    request: Request,
    campaign_id: Id,
    session: SessionDep,
    principal: Sender,
    scheduled_at: Annotated[str, Form()] = "",
) -> Response:
    """Schedule for a local date and time of the account's time zone."""
    account = get_account(session, principal.account_id)
    try:
        local = datetime.fromisoformat(scheduled_at)
    except ValueError:
        flash(request, "Indique la fecha y hora del envío (día/mes/año hora:minutos).", "error")
        return redirect(f"/campaigns/{campaign_id}")
    try:
        campaigns.schedule_campaign_local(session, principal.account_id, campaign_id, local)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/campaigns/{campaign_id}")
    audit(session, principal, "campaign.schedule", f"campaign:{campaign_id}", ip=client_ip(request))
    flash(request, f"Envío programado para el {local:%d/%m/%Y a las %H:%M} ({account.timezone}).")
    return redirect(f"/campaigns/{campaign_id}")


@router.post("/campaigns/{campaign_id}/{action}", dependencies=[CsrfChecked])
def campaign_action(
    request: Request, campaign_id: Id, action: str, session: SessionDep, principal: Sender
) -> Response:
    if action == "resend-failed":
        try:
            child = campaigns.resend_failed(
                session, principal.account_id, campaign_id, created_by=principal.actor
            )
        except MailerError as exc:
            session.rollback()
            flash(request, tr(exc), "error")
            return redirect(f"/campaigns/{campaign_id}")
        audit(
            session,
            principal,
            "campaign.resend_failed",
            f"campaign:{campaign_id}",
            ip=client_ip(request),
        )
        flash(request, "Se creó una campaña en borrador con los destinatarios fallidos.")
        return redirect(f"/campaigns/{child.id}")
    messages = {
        "send": "Envío iniciado.",
        "pause": "Campaña en pausa.",
        "resume": "Envío reanudado.",
        "cancel": "Campaña cancelada.",
        "unschedule": "Programación retirada: la campaña vuelve a borrador.",
    }
    if action not in messages:
        flash(request, f"Acción desconocida: {action}", "error")
        return redirect(f"/campaigns/{campaign_id}")
    try:
        if action == "send":
            campaigns.send_now(principal.account_id, campaign_id, actor=principal.actor)
        else:
            campaigns.change_state(session, principal.account_id, campaign_id, action)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/campaigns/{campaign_id}")
    audit(
        session, principal, f"campaign.{action}", f"campaign:{campaign_id}", ip=client_ip(request)
    )
    flash(request, messages[action])
    return redirect(f"/campaigns/{campaign_id}")


# -- captured mail ---------------------------------------------------------------------


@router.get("/captured")
def captured_page(
    request: Request, session: SessionDep, principal: Reader, page: Page = 1
) -> HTMLResponse:
    scope = _captured_scope(principal)
    return render(
        request,
        "captured.html",
        messages=delivery.list_captured(session, scope, offset=(page - 1) * 50, limit=50),
        total=delivery.count_captured(session, scope),
        page=page,
    )


def _captured_scope(principal: Principal) -> delivery.CaptureScope:
    """An account sees the mail it sent."""
    return delivery.CaptureScope(principal.account_id)


def _parts(data: bytes) -> tuple[EmailMessage, str | None, str | None]:
    parsed = message_from_bytes(data, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    html_part = parsed.get_body(preferencelist=("html",))
    text_part = parsed.get_body(preferencelist=("plain",))
    html_body = html_part.get_content() if html_part is not None else None  # type: ignore[attr-defined]
    text = text_part.get_content() if text_part is not None else None  # type: ignore[attr-defined]
    return parsed, html_body, text


@router.get("/captured/{captured_id}")
def captured_detail(
    request: Request, captured_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    message = delivery.get_captured(session, _captured_scope(principal), captured_id)
    parsed, html_body, text = _parts(message.data)
    return render(
        request,
        "captured_detail.html",
        message=message,
        headers=list(parsed.items()),
        has_html=html_body is not None,
        text=text,
        raw=message.data.decode("utf-8", "replace"),
    )


@router.get("/captured/{captured_id}/html")
def captured_html(captured_id: Id, session: SessionDep, principal: Reader) -> Response:
    captured = delivery.get_captured(session, _captured_scope(principal), captured_id)
    _parsed, html_body, _text = _parts(captured.data)
    return HTMLResponse(html_body or "", headers=SANDBOX_HEADERS)


def error_page(request: Request, exc: MailerError) -> Response:
    """A MailerError on a portal page: log-in redirect, or a page that says what went wrong."""
    from mailer.web.auth import LoginRequired, PageForbidden

    if isinstance(exc, LoginRequired):
        return redirect("/login")
    status = 403 if isinstance(exc, PageForbidden) else 404 if exc.code == "not_found" else 400
    return render(request, "error.html", status_code=status, message=tr(exc), status=status)


def invalid_form(request: Request, exc: RequestValidationError) -> Response:
    """A form or address the portal cannot read (a letter where a number goes, say)."""
    first = exc.errors()[0] if exc.errors() else {}
    field = str(first.get("loc", ("", "?"))[-1])
    return render(
        request,
        "error.html",
        status_code=400,
        status=400,
        message=f"El dato «{field}» no es válido: revise el formulario y vuelva a intentarlo.",
    )
