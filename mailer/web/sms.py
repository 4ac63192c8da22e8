"""Portal pages of the SMS channel: the overview (SMS campaigns, the latest single SMS, the
allowance), the composer with its live counter, an SMS campaign's page (the figures of the
delivery receipts, replies, live while it sends) and the replies of the account.

The pages call ``mailer.campaigns.sms`` for the SMS rules and ``mailer.campaigns.service``
for the campaign states (the same functions as e-mail).  The counter's GSM 03.38 tables
come from ``mailer.sms.encoding`` into the page as JSON (:func:`counter_tables`), so the
JavaScript twin (``static/sms-counter.js``) and the Python count cannot drift apart; the
accent normalisation and the estimate of a personalised text are asked of
``POST /sms/count``, which calls the Python functions themselves.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlmodel import Session

from mailer.accounts import credits
from mailer.accounts.roles import Permission, can
from mailer.accounts.service import Principal, audit, get_account
from mailer.audience import service as audience_service
from mailer.campaigns import service as campaigns
from mailer.campaigns import sms
from mailer.campaigns.models import Campaign, CampaignState
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import MailerError, NotFound, Term, ValidationFailed
from mailer.sms.encoding import (
    GSM7_BASIC,
    GSM7_EXTENDED,
    GSM7_MULTI,
    GSM7_SINGLE,
    UCS2_MULTI,
    UCS2_SINGLE,
    analyse,
    saving,
)
from mailer.web.auth import (
    MAX_ID,
    CsrfChecked,
    Editor,
    Id,
    Page,
    PageForbidden,
    Reader,
    Sender,
    SessionDep,
)
from mailer.web.pages import client_ip, flash, portal_text, redirect, render, tr

router = APIRouter(include_in_schema=False)

CAMPAIGNS_PER_PAGE = 25
RECENT_SINGLE_SMS = 50
CAMPAIGN_REPLIES = 100
ACCOUNT_REPLIES = 200
MAX_NUMBERS = 10_000  # more than this belongs in a list (an import), not in a text box
MAX_TEXT = 5_000
NONCES_KEPT = 20
TARGETS = ("list", "segment", "numbers")
SUBMIT_ACTIONS = ("draft", "send", "schedule")
NO_STORE = {"Cache-Control": "no-store"}
# A text the send path changes before counting: templates render per recipient, and
# links become short tracked links.
_PERSONALISED = re.compile(r"\{\{|\{%")
_LINK = re.compile(r"https?://", re.IGNORECASE)
_NUMBER_SEPARATORS = re.compile(r"[\n,;]+")
_NOT_MOBILE = re.compile(r"^not a mobile number \((?P<kind>[a-z_]+)\)$")
PHONE_KIND_LABELS_ES = {
    "fixed_line": "teléfono fijo",
    "fixed_line_or_mobile": "fijo o celular",
    "voip": "número VoIP",
    "toll_free": "línea gratuita",
    "other": "otro tipo de número",
    "unknown": "tipo de número desconocido",
}
CAMPAIGN_ACTIONS = {
    "send": "Envío iniciado.",
    "pause": "Campaña en pausa.",
    "resume": "Envío reanudado.",
    "cancel": "Campaña cancelada.",
    "unschedule": "Programación retirada: la campaña vuelve a borrador.",
}


def counter_tables() -> dict[str, Any]:
    """The GSM 03.38 tables and the part budgets, for the JavaScript counter.

    Position 0x1B of the basic table is the escape to the extension table, never a
    character, so it is left out (as :func:`mailer.sms.encoding.analyse` does)."""
    return {
        "basic": GSM7_BASIC.replace("\x1b", ""),
        "extended": "".join(GSM7_EXTENDED),
        "gsm7": [GSM7_SINGLE, GSM7_MULTI],
        "ucs2": [UCS2_SINGLE, UCS2_MULTI],
    }


# -- the form ------------------------------------------------------------------------------


@dataclass
class SmsForm:
    """What the composer's user typed, kept as typed to show it again with an error."""

    name: str = ""
    text: str = ""
    sender: str = ""
    target: str = "list"
    list_id: int | None = None
    segment_id: int | None = None
    numbers: str = ""
    scheduled_at: str = ""
    nonce: str = ""


def _as_id(value: str) -> int | None:
    value = value.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        return None
    return int(value)


def _line_feeds(text: str) -> str:
    """Browsers send a textarea's line breaks as CRLF; the counter (and the SMS) count LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_numbers(numbers: str) -> list[str]:
    """The numbers of the composer's box: one a line, or separated by commas or
    semicolons (a space is part of a number: "+51 912 345 678")."""
    return [n.strip() for n in _NUMBER_SEPARATORS.split(numbers) if n.strip()]


def reason_es(reason: str) -> str:
    """Why a number was not queued, in Spanish."""
    mobile = _NOT_MOBILE.match(reason)
    if mobile:
        kind = PHONE_KIND_LABELS_ES.get(mobile.group("kind"), mobile.group("kind"))
        return portal_text("not a mobile number ({kind})", {"kind": kind})
    return portal_text(reason, {})


def error_es(exc: MailerError) -> str:
    """An error of the SMS pages in Spanish (with a rejected number's reason translated)."""
    reason = exc.params.get("reason")
    if not isinstance(reason, str) or isinstance(reason, Term):
        return tr(exc)
    index = exc.params.get("index")
    if (exc.field or "").startswith("to[") and isinstance(index, int):
        # No number was left: said as the composer's user sees the box, not as the API's.
        return portal_text(
            "no number can receive this SMS: '{value}' (number {position} of the list): {reason}",
            {
                "value": exc.params.get("value", ""),
                "position": index + 1,
                "reason": reason_es(reason),
            },
        )
    return portal_text(exc.template, {**exc.params, "reason": reason_es(reason)})


def _error_field(exc: MailerError) -> str:
    """The composer's field an error is about."""
    field = exc.field or ""
    if field.startswith("to"):
        return "numbers"
    if field in ("list_id", "segment_id"):
        return "target"
    return field


def _new_nonce() -> str:
    return secrets.token_urlsafe(12)


def _already_sent(request: Request, nonce: str) -> bool:
    return bool(nonce) and nonce in request.session.get("sms_nonces", [])


def _mark_sent(request: Request, nonce: str) -> None:
    """Remember a submitted form: sending it again (a reload, a double click) sends nothing."""
    if nonce:
        kept = [*request.session.get("sms_nonces", []), nonce][-NONCES_KEPT:]
        request.session["sms_nonces"] = kept


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _local_time(value: str, zone: str) -> datetime:
    """A ``datetime-local`` value (wall-clock time of the account's zone), naive."""
    try:
        local = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(
            "give the date and time of the send ({zone} time)", field="scheduled_at", zone=zone
        ) from None
    return local.replace(tzinfo=None)


def _scheduled_utc(value: str, zone: str) -> datetime:
    when = _local_time(value, zone).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    if when <= utcnow():
        raise ValidationFailed("the scheduled time is in the past", field="scheduled_at")
    return when


# -- overview ------------------------------------------------------------------------------


def _sms_campaigns(session: Session, account_id: int) -> list[Campaign]:
    return [c for c in campaigns.list_campaigns(session, account_id) if c.channel == sms.CHANNEL]


@router.get("/sms")
def sms_page(
    request: Request, session: SessionDep, principal: Reader, page: Page = 1
) -> HTMLResponse:
    listed = _sms_campaigns(session, principal.account_id)
    shown = listed[(page - 1) * CAMPAIGNS_PER_PAGE : page * CAMPAIGNS_PER_PAGE]
    return render(
        request,
        "sms/index.html",
        campaigns=[(c, sms.sms_campaign_stats(session, c)) for c in shown],
        total_campaigns=len(listed),
        page=page,
        per_page=CAMPAIGNS_PER_PAGE,
        recent=[
            (row, sms.sms_state(row))
            for row in sms.recent_single_sms(session, principal.account_id, RECENT_SINGLE_SMS)
        ],
        balance=credits.balance(session, principal.account_id, sms.CHANNEL),
    )


# -- composer ------------------------------------------------------------------------------


def _composer(
    request: Request,
    session: Session,
    principal: Principal,
    form: SmsForm,
    *,
    campaign: Campaign | None = None,
    error: str = "",
    error_field: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    settings = _settings(request)
    account = get_account(session, principal.account_id)
    return render(
        request,
        "sms/compose.html",
        status_code=status_code,
        form=form,
        campaign=campaign,
        error=error,
        error_field=error_field,
        lists=audience_service.list_lists(session, principal.account_id),
        segments=audience_service.list_segments(session, principal.account_id),
        default_sender=account.sms_sender or settings.sms.default_sender,
        balance=credits.balance(session, principal.account_id, sms.CHANNEL),
        counter=analyse(form.text),
        personalised=bool(_PERSONALISED.search(form.text)),
        tables=counter_tables(),
    )


@router.get("/sms/new")
def composer_page(request: Request, session: SessionDep, principal: Editor) -> HTMLResponse:
    return _composer(request, session, principal, SmsForm(nonce=_new_nonce()))


@router.post("/sms/new", dependencies=[CsrfChecked])
def composer_submit(
    request: Request,
    session: SessionDep,
    principal: Editor,
    name: Annotated[str, Form(max_length=200)] = "",
    text: Annotated[str, Form(max_length=MAX_TEXT)] = "",
    sender: Annotated[str, Form(max_length=16)] = "",
    target: Annotated[str, Form()] = "list",
    list_id: Annotated[str, Form()] = "",
    segment_id: Annotated[str, Form()] = "",
    numbers: Annotated[str, Form(max_length=400_000)] = "",
    scheduled_at: Annotated[str, Form(max_length=40)] = "",
    nonce: Annotated[str, Form(max_length=40)] = "",
    action: Annotated[str, Form()] = "draft",
) -> Response:
    """Save a draft campaign, send now or schedule: to a list or segment (an SMS campaign)
    or to numbers (single SMS).  Composing needs EDIT; sending and scheduling need SEND."""
    form = SmsForm(
        name=name.strip(),
        text=_line_feeds(text),
        sender=sender.strip(),
        target=target if target in TARGETS else "list",
        list_id=_as_id(list_id),
        segment_id=_as_id(segment_id),
        numbers=numbers,
        scheduled_at=scheduled_at.strip(),
        nonce=nonce,
    )
    if action not in SUBMIT_ACTIONS:
        action = "draft"
    if action != "draft" and not can(principal.role, Permission.SEND):
        raise PageForbidden("your role does not allow this page or action")
    if _already_sent(request, nonce):
        flash(
            request, portal_text("the form was already sent: nothing was sent again", {}), "error"
        )
        return redirect("/sms")
    try:
        if form.target == "numbers":
            return _send_to_numbers(request, session, principal, form, action)
        return _campaign_from_form(request, session, principal, form, action)
    except MailerError as exc:
        session.rollback()
        return _composer(
            request,
            session,
            principal,
            form,
            error=error_es(exc),
            error_field=_error_field(exc),
            status_code=422,
        )


def _send_to_numbers(
    request: Request, session: Session, principal: Principal, form: SmsForm, action: str
) -> Response:
    if action == "draft":
        raise ValidationFailed(
            "a draft needs a list or a segment: SMS to numbers are sent now or scheduled",
            field="target",
        )
    numbers = split_numbers(form.numbers)
    if len(numbers) > MAX_NUMBERS:
        raise ValidationFailed(
            "give at most {limit} numbers at once; for more, import them into a list",
            field="to",
            limit=MAX_NUMBERS,
        )
    settings = _settings(request)
    account = get_account(session, principal.account_id)
    when = _scheduled_utc(form.scheduled_at, account.timezone) if action == "schedule" else None
    queued = sms.queue_sms(
        session,
        principal.account_id,
        numbers,
        form.text,
        sender=form.sender or None,
        origin=principal.actor,
        scheduled_at=when,
        settings=settings,
    )
    rows = [(m.id, m.to_address, m.parts) for m in queued.messages]
    rejected = [(r.index + 1, r.value, reason_es(r.reason)) for r in queued.rejected]
    audit(
        session,
        principal,
        "sms.schedule" if when else "sms.send",
        f"sms:{len(rows)}",
        ip=client_ip(request),
    )
    session.commit()  # the workers must see the rows
    if when is None:
        sms.enqueue_sms([i for i, _, _ in rows if i is not None], settings=settings)
    _mark_sent(request, form.nonce)
    return render(
        request,
        "sms/sent.html",
        queued=rows,
        rejected=rejected,
        parts=sum(p for _, _, p in rows),
        scheduled_at=when,
        text=form.text,
        balance=credits.balance(session, principal.account_id, sms.CHANNEL),
    )


def _campaign_from_form(
    request: Request, session: Session, principal: Principal, form: SmsForm, action: str
) -> Response:
    campaign = sms.create_sms_campaign(
        session,
        principal.account_id,
        name=form.name,
        text=form.text,
        sender=form.sender or None,
        list_id=form.list_id if form.target == "list" else None,
        segment_id=form.segment_id if form.target == "segment" else None,
        created_by=principal.actor,
        settings=_settings(request),
    )
    assert campaign.id is not None
    campaign_id = campaign.id
    audit(session, principal, "campaign.create", f"campaign:{campaign_id}", ip=client_ip(request))
    if action == "schedule":
        account = get_account(session, principal.account_id)
        local = _local_time(form.scheduled_at, account.timezone)
        campaigns.schedule_campaign_local(session, principal.account_id, campaign_id, local)
        audit(
            session,
            principal,
            "campaign.schedule",
            f"campaign:{campaign_id}",
            ip=client_ip(request),
        )
        _mark_sent(request, form.nonce)
        flash(request, f"SMS programado para el {local:%d/%m/%Y a las %H:%M} ({account.timezone}).")
        return redirect(f"/sms/campaigns/{campaign_id}")
    if action == "draft":
        _mark_sent(request, form.nonce)
        flash(request, "Borrador guardado. Revíselo y envíelo cuando esté listo.")
        return redirect(f"/sms/campaigns/{campaign_id}")
    session.commit()  # send_now works in a session of its own
    _mark_sent(request, form.nonce)
    return _start(request, session, principal, campaign_id)


def _start(request: Request, session: Session, principal: Principal, campaign_id: int) -> Response:
    try:
        campaigns.send_now(principal.account_id, campaign_id, actor=principal.actor)
    except MailerError as exc:
        flash(
            request,
            portal_text(
                "the campaign is saved but could not start: {error}", {"error": error_es(exc)}
            ),
            "error",
        )
        return redirect(f"/sms/campaigns/{campaign_id}")
    audit(session, principal, "campaign.send", f"campaign:{campaign_id}", ip=client_ip(request))
    flash(request, CAMPAIGN_ACTIONS["send"])
    return redirect(f"/sms/campaigns/{campaign_id}")


@router.post("/sms/count", dependencies=[CsrfChecked])
def count(
    request: Request, principal: Editor, text: Annotated[str, Form(max_length=MAX_TEXT)] = ""
) -> JSONResponse:
    """The composer's authoritative figures: the count, the accent normalisation with its
    saving, and for a personalised text or one with links, the parts of a sample recipient
    with the links shortened (or the template's error)."""
    text = _line_feeds(text)
    found = saving(text)
    estimate: int | None = None
    problem = ""
    if _PERSONALISED.search(text) or _LINK.search(text):
        try:
            estimate = sms.estimate_parts(text, _settings(request))
        except MailerError as exc:
            problem = error_es(exc)

    def figures(info: Any) -> dict[str, Any]:
        return {
            "encoding": info.encoding,
            "characters": info.characters,
            "units": info.units,
            "parts": info.parts,
            "per_part": info.per_part,
            "remaining": info.remaining,
            "ucs2_chars": list(info.ucs2_chars),
        }

    return JSONResponse(
        {
            **figures(found.before),
            "normalised": found.text,
            "after": figures(found.after),
            "replaced": list(found.replaced),
            "estimate_parts": estimate,
            "template_error": problem,
        },
        headers=NO_STORE,
    )


@router.get("/sms/audience")
def audience_reach(
    session: SessionDep,
    principal: Editor,
    list_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    segment_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> JSONResponse:
    """How many contacts of a list or segment can receive SMS now (for the cost line)."""
    if list_id is None and segment_id is None:
        return JSONResponse({"matching": 0, "sendable": 0}, headers=NO_STORE)
    counts = audience_service.audience_counts(
        session, principal.account_id, list_id=list_id, segment_id=segment_id, channel=sms.CHANNEL
    )
    return JSONResponse(counts, headers=NO_STORE)


# -- an SMS campaign -----------------------------------------------------------------------


def _sms_campaign(session: Session, account_id: int, campaign_id: int) -> Campaign:
    campaign = campaigns.get_campaign(session, account_id, campaign_id)
    if campaign.channel != sms.CHANNEL:
        raise NotFound("campaign {id} does not exist", id=campaign_id)
    return campaign


def _is_live(campaign: Campaign, stats: dict[str, Any]) -> bool:
    """Whether the figures still move: sending, or messages waiting for their receipts."""
    if campaign.state == CampaignState.SENDING:
        return True
    if campaign.state in (CampaignState.COMPLETED, CampaignState.PAUSED, CampaignState.CANCELLED):
        return bool(stats["pending"])
    return False


def stat_figures(stats: dict[str, Any]) -> dict[str, str]:
    """The figures as the page shows them (the delivery rate as a percentage)."""
    shown = {name: str(value) for name, value in stats.items() if isinstance(value, int)}
    shown["delivery_rate"] = f"{stats['delivery_rate'] * 100:.1f} %"
    return shown


@router.get("/sms/campaigns/{campaign_id}")
def campaign_page(
    request: Request, campaign_id: Id, session: SessionDep, principal: Reader
) -> Response:
    campaign = campaigns.get_campaign(session, principal.account_id, campaign_id)
    if campaign.channel != sms.CHANNEL:
        return redirect(f"/campaigns/{campaign_id}")
    content = campaign.content or {}
    text = str(content.get("text", ""))
    stats = sms.sms_campaign_stats(session, campaign)
    draft = campaign.state in (CampaignState.DRAFT, CampaignState.SCHEDULED)
    estimate: int | None = None
    template_error = ""
    try:
        estimate = sms.estimate_parts(text, _settings(request))
    except MailerError as exc:
        template_error = error_es(exc)
    return render(
        request,
        "sms/campaign.html",
        campaign=campaign,
        text=text,
        sender=str(content.get("sender", "")) or campaign.from_name,
        stats=stats,
        figures=stat_figures(stats),
        live=_is_live(campaign, stats),
        counter=analyse(text),
        estimate=estimate,
        template_error=template_error,
        lst=(
            audience_service.get_list(session, principal.account_id, campaign.list_id)
            if campaign.list_id is not None
            else None
        ),
        segment=(
            audience_service.get_segment(session, principal.account_id, campaign.segment_id)
            if campaign.segment_id is not None
            else None
        ),
        reach=(
            audience_service.audience_counts(
                session,
                principal.account_id,
                list_id=campaign.list_id,
                segment_id=campaign.segment_id,
                channel=sms.CHANNEL,
            )
            if draft
            else None
        ),
        replies=sms.replies_of(
            session, principal.account_id, campaign_id=campaign_id, limit=CAMPAIGN_REPLIES
        ),
    )


@router.get("/sms/campaigns/{campaign_id}/stats")
def campaign_stats(campaign_id: Id, session: SessionDep, principal: Reader) -> JSONResponse:
    """The figures of the campaign page, for its live refresh."""
    campaign = _sms_campaign(session, principal.account_id, campaign_id)
    stats = sms.sms_campaign_stats(session, campaign)
    return JSONResponse(
        {
            "state": campaign.state,
            "live": _is_live(campaign, stats),
            "stats": stats,
            "figures": stat_figures(stats),
        },
        headers=NO_STORE,
    )


@router.get("/sms/campaigns/{campaign_id}/edit")
def campaign_edit_page(
    request: Request, campaign_id: Id, session: SessionDep, principal: Editor
) -> Response:
    campaign = _sms_campaign(session, principal.account_id, campaign_id)
    if campaign.state not in (CampaignState.DRAFT, CampaignState.SCHEDULED):
        flash(request, "Solo se puede editar una campaña en borrador o programada.", "error")
        return redirect(f"/sms/campaigns/{campaign_id}")
    content = campaign.content or {}
    form = SmsForm(
        name=campaign.name,
        text=str(content.get("text", "")),
        sender=str(content.get("sender", "")),
        target="segment" if campaign.list_id is None else "list",
        list_id=campaign.list_id,
        segment_id=campaign.segment_id,
    )
    return _composer(request, session, principal, form, campaign=campaign)


@router.post("/sms/campaigns/{campaign_id}/edit", dependencies=[CsrfChecked])
def campaign_edit(
    request: Request,
    campaign_id: Id,
    session: SessionDep,
    principal: Editor,
    text: Annotated[str, Form(max_length=MAX_TEXT)] = "",
    sender: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    campaign = _sms_campaign(session, principal.account_id, campaign_id)
    form = SmsForm(
        name=campaign.name,
        text=_line_feeds(text),
        sender=sender.strip(),
        target="segment" if campaign.list_id is None else "list",
        list_id=campaign.list_id,
        segment_id=campaign.segment_id,
    )
    try:
        sms.update_sms_campaign(session, campaign, text=form.text, sender=form.sender or None)
    except MailerError as exc:
        session.rollback()
        return _composer(
            request,
            session,
            principal,
            form,
            campaign=_sms_campaign(session, principal.account_id, campaign_id),
            error=error_es(exc),
            error_field=_error_field(exc),
            status_code=422,
        )
    audit(session, principal, "campaign.update", f"campaign:{campaign_id}", ip=client_ip(request))
    flash(request, "Cambios guardados.")
    return redirect(f"/sms/campaigns/{campaign_id}")


@router.post("/sms/campaigns/{campaign_id}/schedule", dependencies=[CsrfChecked])
def campaign_schedule(
    request: Request,
    campaign_id: Id,
    session: SessionDep,
    principal: Sender,
    scheduled_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Schedule for a wall-clock time of the account's time zone."""
    _sms_campaign(session, principal.account_id, campaign_id)
    account = get_account(session, principal.account_id)
    try:
        local = _local_time(scheduled_at, account.timezone)
        campaigns.schedule_campaign_local(session, principal.account_id, campaign_id, local)
    except MailerError as exc:
        session.rollback()
        flash(request, error_es(exc), "error")
        return redirect(f"/sms/campaigns/{campaign_id}")
    audit(session, principal, "campaign.schedule", f"campaign:{campaign_id}", ip=client_ip(request))
    flash(request, f"SMS programado para el {local:%d/%m/%Y a las %H:%M} ({account.timezone}).")
    return redirect(f"/sms/campaigns/{campaign_id}")


@router.post("/sms/campaigns/{campaign_id}/{action}", dependencies=[CsrfChecked])
def campaign_action(
    request: Request, campaign_id: Id, action: str, session: SessionDep, principal: Sender
) -> Response:
    _sms_campaign(session, principal.account_id, campaign_id)
    if action not in CAMPAIGN_ACTIONS:
        flash(request, portal_text("unknown action '{action}'", {"action": action}), "error")
        return redirect(f"/sms/campaigns/{campaign_id}")
    if action == "send":
        return _start(request, session, principal, campaign_id)
    try:
        campaigns.change_state(session, principal.account_id, campaign_id, action)
    except MailerError as exc:
        session.rollback()
        flash(request, error_es(exc), "error")
        return redirect(f"/sms/campaigns/{campaign_id}")
    audit(
        session, principal, f"campaign.{action}", f"campaign:{campaign_id}", ip=client_ip(request)
    )
    flash(request, CAMPAIGN_ACTIONS[action])
    return redirect(f"/sms/campaigns/{campaign_id}")


# -- replies -------------------------------------------------------------------------------


@router.get("/sms/replies")
def replies_page(
    request: Request,
    session: SessionDep,
    principal: Reader,
    campaign_id: Annotated[str, Query(max_length=12)] = "",
) -> HTMLResponse:
    """The replies of the account, newest first; a campaign's only when one is chosen."""
    chosen = _as_id(campaign_id)
    sms_campaigns = _sms_campaigns(session, principal.account_id)
    return render(
        request,
        "sms/replies.html",
        replies=sms.replies_of(
            session, principal.account_id, campaign_id=chosen, limit=ACCOUNT_REPLIES
        ),
        campaigns=sms_campaigns,
        campaign_names={c.id: c.name for c in sms_campaigns},
        chosen=chosen,
        limit=ACCOUNT_REPLIES,
    )
