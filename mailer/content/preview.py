"""Previews: a template rendered for a sample contact (or a chosen one), without sending."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailer.content.sandbox import RenderBudget
from mailer.content.service import RenderedMessage, compile_template
from mailer.core.errors import MailerError

SAMPLE_CONTACT: dict[str, Any] = {
    "email": "maria.quispe@example.pe",
    "first_name": "María",
    "last_name": "Quispe",
    "company": "Servicios Andinos S.A.C.",
    "phone": "+51987654321",
    "ruc": "20123456789",
}


def preview(
    subject: str, html: str, text: str | None, contact: Mapping[str, Any] | None = None
) -> RenderedMessage:
    """Render for *contact* (the sample contact by default); links are left untracked.

    Raises TemplateError like a send would.
    """
    compiled = compile_template(subject, html, text)
    with RenderBudget():
        return compiled.render(
            {
                "contact": dict(contact or SAMPLE_CONTACT),
                "campaign": {"name": "Vista previa"},
                "unsubscribe_url": "#",
            }
        )


def sample_subject(subject: str) -> str:
    """The subject as the sample contact reads it; the source itself if it does not render."""
    try:
        compiled = compile_template(subject, "<p></p>", "", inline_css=False)
        with RenderBudget():
            return compiled.render({"contact": SAMPLE_CONTACT, "campaign": {"name": ""}}).subject
    except MailerError:
        return subject
