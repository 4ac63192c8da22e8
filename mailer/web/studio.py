"""Template studio pages: gallery, library, editor with check and previews, versions,
test sends.  Every route checks the role; writes check the CSRF token."""

from __future__ import annotations

import html
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session

from mailer.accounts.service import Principal, audit
from mailer.audience import service as audience
from mailer.campaigns.proofs import send_test_message
from mailer.content import store as templates
from mailer.content.check import Finding, check_template
from mailer.content.models import Template
from mailer.content.preview import preview, sample_subject
from mailer.content.thumbnails import ThumbnailCache
from mailer.core.errors import MailerError
from mailer.delivery import service as delivery
from mailer.web.auth import CsrfChecked, Editor, Id, Reader, Sender, SessionDep
from mailer.web.pages import (
    SANDBOX_HEADERS,
    client_ip,
    flash,
    portal_text,
    redirect,
    render,
    tr,
)

router = APIRouter(include_in_schema=False)

PREVIEW_WIDTHS = (("Móvil", 375), ("Tableta", 768), ("Escritorio", 1200))
FormText = Annotated[str, Form()]


def template_findings(
    session: Session, account_id: int, subject: str, body: str, text: str | None
) -> list[dict[str, str]]:
    """The check's findings, in the portal's language (empty if the template does not compile:
    the syntax error is shown on its own)."""
    try:
        found: list[Finding] = check_template(
            subject, body, text, contact_fields=audience.attribute_names(session, account_id)
        )
    except MailerError:
        return []
    return [
        {"severity": f.severity, "code": f.code, "text": portal_text(f.message, f.params)}
        for f in found
    ]


def _editor(
    request: Request,
    session: Session,
    principal: Principal,
    template: Template | None,
    form: dict[str, Any],
    *,
    status_code: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    settings = request.app.state.settings
    context: dict[str, Any] = {
        "template": template,
        "form": form,
        "error": error,
        "widths": PREVIEW_WIDTHS,
        "findings": [],
    }
    if template is not None:
        assert template.id is not None
        context.update(
            findings=template_findings(
                session, principal.account_id, template.subject, template.html, template.text
            ),
            versions=templates.list_versions(session, principal.account_id, template.id),
            sample_subject=sample_subject(template.subject),
            domains=[d.domain for d in delivery.list_sending_domains(settings)],
        )
    return render(request, "template_edit.html", status_code=status_code, **context)


@router.get("/templates")
def gallery(request: Request, session: SessionDep, principal: Reader) -> HTMLResponse:
    settings = request.app.state.settings
    return render(
        request,
        "templates.html",
        templates=templates.list_templates(session, principal.account_id),
        library=templates.load_library(settings.templates_dir),
    )


@router.get("/library/{key}/preview")
def library_preview(request: Request, key: str, principal: Reader) -> Response:
    """A library template rendered with its own sample values."""
    item = templates.library_template(request.app.state.settings.templates_dir, key)
    return _sandboxed(lambda: preview(item.subject, item.html, item.text, item.sample or None))


@router.post("/library/{key}/use", dependencies=[CsrfChecked])
def library_use(request: Request, key: str, session: SessionDep, principal: Editor) -> Response:
    item = templates.library_template(request.app.state.settings.templates_dir, key)
    template = templates.create_from_library(
        session, principal.account_id, item, saved_by=principal.actor
    )
    audit(
        session,
        principal,
        "template.create",
        f"template:{template.id}",
        ip=client_ip(request),
        library=key,
    )
    flash(request, f"Plantilla «{template.name}» creada desde la biblioteca: personalícela.")
    return redirect(f"/templates/{template.id}")


@router.get("/templates/new")
def template_new(request: Request, session: SessionDep, principal: Editor) -> HTMLResponse:
    return _editor(request, session, principal, None, {})


@router.post("/templates/new", dependencies=[CsrfChecked])
def template_create(
    request: Request,
    session: SessionDep,
    principal: Editor,
    name: FormText = "",
    subject: FormText = "",
    html: FormText = "",
    text: FormText = "",
) -> Response:
    form = {"name": name, "subject": subject, "html": html, "text": text}
    try:
        template = templates.create_template(
            session,
            principal.account_id,
            name=name,
            subject=subject,
            html=html,
            text=text or None,
            saved_by=principal.actor,
        )
    except MailerError as exc:
        session.rollback()
        return _editor(request, session, principal, None, form, status_code=422, error=tr(exc))
    audit(session, principal, "template.create", f"template:{template.id}", ip=client_ip(request))
    flash(request, "Plantilla guardada.")
    return redirect(f"/templates/{template.id}")


@router.post("/templates/live-preview", dependencies=[CsrfChecked])
def live_preview(
    principal: Editor,
    subject: FormText = "",
    html: FormText = "",
    text: FormText = "",
) -> Response:
    """What is being typed in the editor, rendered for the sample contact (not saved)."""
    if len(html) + len(text) > templates.MAX_TEMPLATE_CHARS:
        return HTMLResponse(
            "<p>La plantilla es demasiado grande.</p>", status_code=413, headers=SANDBOX_HEADERS
        )
    return _sandboxed(lambda: preview(subject or " ", html, text or None))


@router.get("/templates/{template_id}")
def template_edit(
    request: Request, template_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    template = templates.get_template(session, principal.account_id, template_id)
    return _editor(request, session, principal, template, template.model_dump())


@router.post("/templates/{template_id}", dependencies=[CsrfChecked])
def template_save(
    request: Request,
    template_id: Id,
    session: SessionDep,
    principal: Editor,
    name: FormText = "",
    subject: FormText = "",
    html: FormText = "",
    text: FormText = "",
) -> Response:
    form = {"name": name, "subject": subject, "html": html, "text": text}
    template = templates.get_template(session, principal.account_id, template_id)
    try:
        templates.update_template(
            session,
            principal.account_id,
            template_id,
            name=name,
            subject=subject,
            html=html,
            text=text or None,
            saved_by=principal.actor,
        )
    except MailerError as exc:
        session.rollback()
        template = templates.get_template(session, principal.account_id, template_id)
        return _editor(request, session, principal, template, form, status_code=422, error=tr(exc))
    audit(session, principal, "template.update", f"template:{template_id}", ip=client_ip(request))
    flash(request, "Plantilla guardada.")
    return redirect(f"/templates/{template_id}")


@router.post("/templates/{template_id}/duplicate", dependencies=[CsrfChecked])
def template_duplicate(
    request: Request, template_id: Id, session: SessionDep, principal: Editor
) -> Response:
    copy = templates.duplicate_template(
        session, principal.account_id, template_id, saved_by=principal.actor
    )
    audit(
        session,
        principal,
        "template.duplicate",
        f"template:{copy.id}",
        ip=client_ip(request),
        source=template_id,
    )
    flash(request, f"Copia creada: «{copy.name}».")
    return redirect(f"/templates/{copy.id}")


@router.post("/templates/{template_id}/restore/{version}", dependencies=[CsrfChecked])
def template_restore(
    request: Request, template_id: Id, version: Id, session: SessionDep, principal: Editor
) -> Response:
    before = templates.get_template(session, principal.account_id, template_id).version
    restored = templates.restore_version(
        session, principal.account_id, template_id, version, saved_by=principal.actor
    )
    if restored.version == before:
        flash(request, f"La versión {version} ya es el contenido actual: nada que restaurar.")
        return redirect(f"/templates/{template_id}")
    audit(
        session,
        principal,
        "template.restore",
        f"template:{template_id}",
        ip=client_ip(request),
        version=version,
    )
    flash(request, f"Versión {version} restaurada (guardada como una versión nueva).")
    return redirect(f"/templates/{template_id}")


@router.get("/templates/{template_id}/preview")
def template_preview(
    template_id: Id,
    session: SessionDep,
    principal: Reader,
    contact: Annotated[str, Query(max_length=320)] = "",
    version: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """The template (or one of its versions) for the sample contact or a real one, by e-mail."""
    template = templates.get_template(session, principal.account_id, template_id)
    source: Any = (
        templates.get_version(session, principal.account_id, template_id, version)
        if version
        else template
    )
    fields = None
    if contact:
        found = audience.find_contact(session, principal.account_id, contact)
        if found is None:
            message = f"No hay ningún contacto con el correo {contact}."
            return HTMLResponse(
                f"<p>{html.escape(message)}</p>", status_code=404, headers=SANDBOX_HEADERS
            )
        fields = found.template_fields()
    return _sandboxed(lambda: preview(source.subject, source.html, source.text, fields))


def _sandboxed(render_message: Any) -> Response:
    try:
        rendered = render_message()
    except MailerError as exc:
        return HTMLResponse(
            f"<pre>{html.escape(tr(exc))}</pre>", status_code=422, headers=SANDBOX_HEADERS
        )
    return HTMLResponse(rendered.html, headers=SANDBOX_HEADERS)


THUMBNAIL_SIZE = (600, 800)
_thumbnail_slots = threading.BoundedSemaphore(2)  # Chromium is heavy: two at a time
_PLACEHOLDER = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="600" height="800" viewBox="0 0 600 800">'
    '<rect width="600" height="800" fill="#f2f4f7"/><text x="300" y="400" font-family="sans-serif"'
    ' font-size="28" fill="#667085" text-anchor="middle">Vista previa no disponible</text></svg>'
)


def _thumbnail(request: Request, render_message: Any) -> Response:
    """A PNG of the message as a phone-to-desktop wide mail client shows it, cached on disk."""
    try:
        rendered = render_message()
        cache = ThumbnailCache(request.app.state.settings.data_dir / "thumbnails")
        with _thumbnail_slots:
            png = cache.get(rendered.html, width=THUMBNAIL_SIZE[0], height=THUMBNAIL_SIZE[1])
    except MailerError:
        return Response(_PLACEHOLDER, media_type="image/svg+xml")
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get("/templates/{template_id}/thumbnail.png")
def template_thumbnail(
    request: Request, template_id: Id, session: SessionDep, principal: Reader
) -> Response:
    template = templates.get_template(session, principal.account_id, template_id)
    return _thumbnail(request, lambda: preview(template.subject, template.html, template.text))


@router.get("/library/{key}/thumbnail.png")
def library_thumbnail(request: Request, key: str, principal: Reader) -> Response:
    item = templates.library_template(request.app.state.settings.templates_dir, key)
    return _thumbnail(
        request, lambda: preview(item.subject, item.html, item.text, item.sample or None)
    )


@router.post("/templates/{template_id}/test", dependencies=[CsrfChecked])
def template_test(
    request: Request,
    template_id: Id,
    session: SessionDep,
    principal: Sender,
    addresses: FormText = "",
    from_email: FormText = "",
    from_name: FormText = "",
    contact: FormText = "",
) -> Response:
    """Send the template to a few addresses now, through the normal delivery path."""
    contact_id = None
    if contact.strip():
        found = audience.find_contact(session, principal.account_id, contact)
        if found is None:
            flash(request, f"No hay ningún contacto con el correo {contact}.", "error")
            return redirect(f"/templates/{template_id}")
        contact_id = found.id
    session.commit()
    try:
        results = send_test_message(
            principal.account_id,
            template_id,
            addresses.replace(";", ",").replace("\n", ",").split(","),
            from_email=from_email,
            from_name=from_name or "Prueba",
            contact_id=contact_id,
            settings=request.app.state.settings,
        )
    except MailerError as exc:
        flash(request, tr(exc), "error")
        return redirect(f"/templates/{template_id}")
    audit(
        session,
        principal,
        "template.test",
        f"template:{template_id}",
        ip=client_ip(request),
        to=[r.address for r in results],
    )
    summary = "; ".join(
        f"{r.address}: {'enviada' if r.state == 'sent' else 'no enviada'} ({r.reply})"
        for r in results
    )
    kind = "ok" if all(r.state == "sent" for r in results) else "error"
    flash(request, f"Prueba enviada. {summary}", kind)
    return redirect(f"/templates/{template_id}")
