"""Rendering portal pages: the Jinja environment (gettext-ready, Spanish msgids), the
context every page gets, flash messages, and errors in the portal's language."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mailer.accounts.roles import ROLE_LABELS_ES, Permission, can
from mailer.audience.models import CHANNEL_LABELS_ES
from mailer.campaigns.models import STATE_LABELS_ES
from mailer.core.errors import MailerError
from mailer.core.i18n import localise, localise_text
from mailer.web.auth import csrf_token

HERE = Path(__file__).parent
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    extensions=["jinja2.ext.i18n"],
)
_env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
pages = Jinja2Templates(env=_env)

PORTAL_LOCALE = "es"


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    role = user.role if user else None
    zone = ZoneInfo(getattr(request.state, "timezone", None) or request.app.state.settings.timezone)
    context.setdefault("zone", zone)
    context.setdefault("local", lambda moment: moment.astimezone(zone).strftime("%d/%m/%Y %H:%M"))
    context.update(
        channel_labels=CHANNEL_LABELS_ES,
        user=user,
        role_label=ROLE_LABELS_ES.get(role) if role else None,  # type: ignore[call-overload]
        can_edit=role is not None and can(role, Permission.EDIT),
        can_send=role is not None and can(role, Permission.SEND),
        can_admin=role is not None and can(role, Permission.ADMIN),
        csrf_token=csrf_token(request),
        state_labels=STATE_LABELS_ES,
        flash=request.session.pop("flash", None),
    )
    return pages.TemplateResponse(request, name, context, status_code=status_code)


def tr(exc: MailerError) -> str:
    """An error as the portal shows it: in the portal's language (Spanish)."""
    return localise(exc, PORTAL_LOCALE)


def flash(request: Request, message: str, kind: str = "ok") -> None:
    request.session["flash"] = {"message": message, "kind": kind}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def portal_text(template: str, params: dict[str, Any]) -> str:
    """A message template in the portal's language."""
    return localise_text(template, params, PORTAL_LOCALE)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


SANDBOX_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; img-src https: data:; style-src 'unsafe-inline'"
    ),
    "X-Content-Type-Options": "nosniff",
}
"""For user-authored HTML (previews, captured mail): no script, no navigation, no origin."""
