"""Portal pages of the audience, for list managers: import with column mapping and live
progress, contacts (search, detail, consent, export and erasure), segments with a live
count, cleaning reports with typo fixes, list exports and the suppression list.

The pages call ``mailer.audience`` and hold no rules of their own.  Long work (an import, a
cleaning) is queued for the workers and followed in the browser by polling a small JSON
endpoint (``static/audience.js``); the page turns into the report once the work is done.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from sqlmodel import Session
from starlette.background import BackgroundTask

from mailer.accounts.service import Principal, audit
from mailer.audience import clean, service, tasks
from mailer.audience.importer import MODES, attribute_slug
from mailer.audience.models import (
    CHANNEL_LABELS_ES,
    CONTACT_FIELDS,
    AttributeType,
    ChannelStatus,
    CleaningRun,
    Contact,
    ContactImport,
    MailingList,
    Segment,
)
from mailer.audience.segments import (
    DATE_FIELDS,
    FIELD_LABELS_ES,
    NO_VALUE_OPS,
    OP_LABELS_ES,
    OPS,
    STATUS_FIELDS,
    TEXT_FIELDS,
    describe,
)
from mailer.audience.suppression import (
    CHANNELS,
    SUPPRESSION_LABELS_ES,
    SuppressionReason,
    count_suppressions,
    list_suppressions,
    suppress,
    unsuppress,
)
from mailer.audience.tables import write_table
from mailer.cleaning.phones import check_phone
from mailer.cleaning.service import check_syntax
from mailer.cleaning.verdicts import REASON_LABELS_ES, VERDICT_LABELS_ES
from mailer.core.config import Settings
from mailer.core.errors import MailerError, NotFound, ValidationFailed
from mailer.core.queue import enqueue
from mailer.web.auth import MAX_ID, CsrfChecked, Editor, Id, Page, Reader, Sender, SessionDep
from mailer.web.pages import client_ip, flash, portal_text, redirect, render, tr

router = APIRouter(include_in_schema=False)

FormId = Annotated[int | None, Form(ge=1, le=MAX_ID)]
FormList = Annotated[list[str] | None, Form()]

MODE_LABELS_ES = {
    "add_or_update": "Agregar y actualizar",
    "add": "Solo agregar",
    "update": "Solo actualizar",
}
TYPE_LABELS_ES = {
    AttributeType.TEXT: "Texto",
    AttributeType.NUMBER: "Número",
    AttributeType.DATE: "Fecha",
    AttributeType.BOOLEAN: "Sí / No",
}
CHANNEL_NAMES_ES = {"email": "Correo", "sms": "SMS"}
VERDICT_ORDER = ("valid", "risky", "invalid", "unknown")
NOT_CLEANED_ES = "Sin depurar"
SKIP_LABEL_ES = "No importar"
PAGE_SIZE = 50
SUPPRESSION_PAGE = 100
MAX_SUPPRESSION_LINES = 10_000
EXPORT_PAGE = 1000
NO_STORE = {"Cache-Control": "no-store"}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _optional_id(text: str) -> int | None:
    """A filter from a query string: a positive id, or None for "all" (an empty select)."""
    text = text.strip()
    return int(text) if text.isdigit() and 0 < int(text) <= MAX_ID else None


# -- import: upload, column mapping, queue, progress, report ------------------------------

UPLOAD_NAME = re.compile(r"[0-9a-f]{32}(\.[a-z0-9]{1,5})?")
UPLOAD_MAX_AGE = 24 * 3600  # a file uploaded and never confirmed is removed after a day
NO_EMAIL_COLUMN = (
    "no e-mail column found: name one column 'email' or 'correo', or map one "
    "(headers seen: {headers})"
)


def _staging(settings: Settings, account_id: int) -> Path:
    """Uploads waiting for their column mapping, one folder per account (never shared)."""
    return settings.data_dir / "uploads" / f"portal-{account_id}"


def _store_upload(settings: Settings, account_id: int, upload: UploadFile) -> tuple[str, Path]:
    """Keep an uploaded file until its mapping is confirmed (unconfirmed ones are removed
    after a day)."""
    folder = _staging(settings, account_id)
    if folder.is_dir():
        cutoff = time.time() - UPLOAD_MAX_AGE
        for old in folder.iterdir():
            if old.is_file() and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
    path = service.store_upload(folder, upload.filename or "", upload.file)
    return path.name, path


def _staged_upload(settings: Settings, account_id: int, name: str) -> Path:
    path = _staging(settings, account_id) / name
    if not UPLOAD_NAME.fullmatch(name) or not path.is_file():
        raise NotFound("the uploaded file is no longer available: upload it again")
    return path


def _base_name(filename: str) -> str:
    """The file's own name, whatever folder the browser sent with it."""
    return re.split(r"[\\/]", filename)[-1][:300]


def _target_label(target: str) -> str:
    if not target:
        return SKIP_LABEL_ES
    if target.startswith("attr:"):
        return f"Atributo: {target[5:]}"
    return FIELD_LABELS_ES.get(target, target)


def _mapping_page(
    request: Request,
    session: Session,
    principal: Principal,
    lst: MailingList,
    *,
    upload: str,
    filename: str,
    preview: dict[str, Any],
    chosen: dict[str, str],
    mode: str,
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    defined = [f"attr:{a.name}" for a in service.list_attributes(session, principal.account_id)]
    columns = []
    for index, header in enumerate(preview["headers"]):
        target = chosen.get(header, "")
        attributes = dict.fromkeys([f"attr:{attribute_slug(header)}", *defined])
        if target.startswith("attr:"):
            attributes[target] = None
        options = [(field, FIELD_LABELS_ES[field]) for field in CONTACT_FIELDS]
        options += [(name, _target_label(name)) for name in attributes]
        options.append(("", SKIP_LABEL_ES))
        samples = [row[index] for row in preview["rows"] if index < len(row) and row[index]]
        columns.append(
            {
                "index": index,
                "header": header,
                "target": target,
                "options": options,
                "samples": samples[:3],
            }
        )
    return render(
        request,
        "audience/import_mapping.html",
        status_code=status_code,
        lst=lst,
        upload=upload,
        filename=filename,
        preview=preview,
        columns=columns,
        modes=MODE_LABELS_ES,
        mode=mode if mode in MODES else "add_or_update",
        error=error,
    )


@router.post("/lists/{list_id}/import", dependencies=[CsrfChecked])
def import_upload(
    request: Request,
    list_id: Id,
    session: SessionDep,
    principal: Editor,
    file: Annotated[UploadFile, File()],
    mode: Annotated[str, Form()] = "add_or_update",
) -> Response:
    """First step of an import: keep the file and show its columns to be mapped."""
    lst = service.get_list(session, principal.account_id, list_id)
    name, path = _store_upload(_settings(request), principal.account_id, file)
    filename = _base_name(file.filename or "") or name
    try:
        preview = service.preview_file(path, filename)
    except MailerError as exc:
        path.unlink(missing_ok=True)
        flash(request, f"{filename}: {tr(exc)}", "error")
        return redirect(f"/lists/{list_id}")
    return _mapping_page(
        request,
        session,
        principal,
        lst,
        upload=name,
        filename=filename,
        preview=preview,
        chosen=preview["mapping"],
        mode=mode,
    )


@router.post("/lists/{list_id}/import/confirm", dependencies=[CsrfChecked])
def import_confirm(
    request: Request,
    list_id: Id,
    session: SessionDep,
    principal: Editor,
    upload: Annotated[str, Form(max_length=64)] = "",
    filename: Annotated[str, Form(max_length=300)] = "",
    mode: Annotated[str, Form(max_length=16)] = "add_or_update",
    column: FormList = None,
) -> Response:
    """Second step: queue the import with the chosen mapping and follow it live."""
    lst = service.get_list(session, principal.account_id, list_id)
    settings = _settings(request)
    staged = _staged_upload(settings, principal.account_id, upload)
    preview = service.preview_file(staged, filename)
    headers: list[str] = preview["headers"]
    targets = column or []
    chosen = dict(zip(headers, targets, strict=False))
    queued = settings.data_dir / "uploads" / upload
    try:
        if len(targets) != len(headers):
            raise ValidationFailed(
                "choose what to do with every column of the file", field="mapping"
            )
        if "email" not in chosen.values():
            raise ValidationFailed(NO_EMAIL_COLUMN, field="mapping", headers=", ".join(headers))
        staged.rename(queued)  # out of the staging folder, which is swept
        try:
            record = service.queue_import(
                session,
                principal.account_id,
                queued,
                filename=filename or upload,
                list_id=list_id,
                mode=mode,
                mapping=chosen,
                actor=principal.actor,
            )
        except MailerError:
            queued.rename(staged)
            raise
    except MailerError as exc:
        session.rollback()
        return _mapping_page(
            request,
            session,
            principal,
            lst,
            upload=upload,
            filename=filename,
            preview=preview,
            chosen=chosen,
            mode=mode,
            error=tr(exc),
            status_code=422,
        )
    audit(
        session,
        principal,
        "list.import",
        f"list:{list_id}",
        ip=client_ip(request),
        file=filename,
        mode=mode,
        mapping=chosen,
    )
    session.commit()  # before the worker looks for it
    assert record.id is not None
    enqueue(tasks.run_import, record.id)
    return redirect(f"/imports/{record.id}")


def _import_figures(record: ContactImport) -> dict[str, Any]:
    return {
        "rows": record.rows,
        "created": record.created,
        "updated": record.updated,
        "unchanged": record.unchanged,
        "duplicates_in_file": record.duplicates_in_file,
        "suppressed": record.suppressed,
        "skipped": record.skipped,
        "added_to_list": record.added_to_list,
        "errors": len(record.rejected),
    }


@router.get("/imports/{import_id}")
def import_page(
    request: Request, import_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    """An import: a live progress bar while it runs, then its report."""
    record = service.get_import(session, principal.account_id, import_id)
    lst = (
        service.get_list(session, principal.account_id, record.list_id)
        if record.list_id is not None
        else None
    )
    errors = service.rejected_rows(record) if record.status == "done" else []
    return render(
        request,
        "audience/import.html",
        record=record,
        lst=lst,
        finished=record.status in ("done", "failed"),
        figures=_import_figures(record),
        errors=errors[:500],
        error_count=len(errors),
        mapping=[(header, _target_label(str(t))) for header, t in record.mapping.items()],
        mode_label=MODE_LABELS_ES.get(record.mode, record.mode),
        row_reason=lambda row: row.message(portal_text),
    )


@router.get("/imports/{import_id}/progress")
def import_progress(import_id: Id, session: SessionDep, principal: Reader) -> JSONResponse:
    """Polled by the import page every half second."""
    record = service.get_import(session, principal.account_id, import_id)
    finished = record.status in ("done", "failed")
    return JSONResponse(
        {
            "status": record.status,
            "finished": finished,
            "fraction": 1.0 if record.status == "done" else record.progress,
            "figures": _import_figures(record),
        },
        headers=NO_STORE,
    )


# -- contacts ----------------------------------------------------------------------------


def _verdict_label(verdict: str) -> str:
    return VERDICT_LABELS_ES.get(verdict, verdict) if verdict else NOT_CLEANED_ES  # type: ignore[call-overload]


def _reason_labels(reasons: str) -> list[str]:
    return [REASON_LABELS_ES.get(r, r) for r in reasons.split(",") if r]  # type: ignore[call-overload]


@router.get("/contacts")
def contacts_page(
    request: Request,
    session: SessionDep,
    principal: Reader,
    q: Annotated[str, Query(max_length=200)] = "",
    list_filter: Annotated[str, Query(alias="list", max_length=12)] = "",
    segment_filter: Annotated[str, Query(alias="segment", max_length=12)] = "",
    page: Page = 1,
) -> HTMLResponse:
    list_id, segment_id = _optional_id(list_filter), _optional_id(segment_filter)
    contacts, total = service.search_contacts(
        session,
        principal.account_id,
        query=q,
        list_id=list_id,
        segment_id=segment_id,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return render(
        request,
        "audience/contacts.html",
        contacts=contacts,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        q=q,
        list_id=list_id,
        segment_id=segment_id,
        lists=service.list_lists(session, principal.account_id),
        segments=service.list_segments(session, principal.account_id),
        verdict_label=_verdict_label,
    )


def _contact_page(
    request: Request, session: Session, principal: Principal, contact: Contact
) -> HTMLResponse:
    assert contact.id is not None
    types = {a.name: a.type for a in service.list_attributes(session, principal.account_id)}
    # The export holds what the page shows and the service has no smaller call for it:
    # the names of the contact's lists and whether the address is suppressed.
    kept = service.export_contact(session, principal.account_id, contact.id)
    list_ids = {
        lst.name: lst.id for lst, _members in service.list_lists(session, principal.account_id)
    }
    return render(
        request,
        "audience/contact_detail.html",
        contact=contact,
        attributes=[
            (name, TYPE_LABELS_ES.get(types.get(name, AttributeType.TEXT), "Texto"), value)  # type: ignore[call-overload]
            for name, value in sorted(contact.attributes.items())
        ],
        defined=[name for name in sorted(types) if name not in contact.attributes],
        lists=[(list_ids.get(name), name) for name in kept["lists"]],
        suppressed=kept["suppressed"],
        messages=len(kept["messages"]),
        consents=list(reversed(service.consents_of(session, contact.id))),
        verdict_label=_verdict_label(contact.email_verdict),
        reasons=_reason_labels(contact.email_reasons),
        channel_names=CHANNEL_NAMES_ES,
    )


@router.get("/contacts/{contact_id}")
def contact_page(
    request: Request, contact_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    contact = service.get_contact(session, principal.account_id, contact_id)
    return _contact_page(request, session, principal, contact)


@router.post("/contacts/{contact_id}", dependencies=[CsrfChecked])
def contact_update(
    request: Request,
    contact_id: Id,
    session: SessionDep,
    principal: Editor,
    first_name: Annotated[str, Form(max_length=200)] = "",
    last_name: Annotated[str, Form(max_length=200)] = "",
    phone: Annotated[str, Form(max_length=32)] = "",
    company: Annotated[str, Form(max_length=300)] = "",
    position: Annotated[str, Form(max_length=200)] = "",
    document: Annotated[str, Form(max_length=32)] = "",
    attr_name: FormList = None,
    attr_value: FormList = None,
    new_attr_name: Annotated[str, Form(max_length=64)] = "",
    new_attr_value: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Change the fields and attributes (an attribute left empty is removed)."""
    attributes = dict(zip(attr_name or [], attr_value or [], strict=False))
    if new_attr_name.strip():
        attributes[attribute_slug(new_attr_name)] = new_attr_value
    try:
        service.update_contact(
            session,
            principal.account_id,
            contact_id,
            first_name=first_name,
            last_name=last_name,
            phone=phone,
            company=company,
            position=position,
            document=document,
            attributes=attributes,
        )
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/contacts/{contact_id}")
    audit(session, principal, "contact.update", f"contact:{contact_id}", ip=client_ip(request))
    flash(request, "Contacto actualizado.")
    return redirect(f"/contacts/{contact_id}")


@router.post("/contacts/{contact_id}/consents", dependencies=[CsrfChecked])
def contact_consent(
    request: Request,
    contact_id: Id,
    session: SessionDep,
    principal: Editor,
    channel: Annotated[str, Form(max_length=8)] = "email",
    granted: Annotated[str, Form(max_length=1)] = "1",
    source: Annotated[str, Form(max_length=200)] = "",
    text: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """Record a consent given or withdrawn on the person's behalf (a paper form, a call)."""
    contact = service.get_contact(session, principal.account_id, contact_id)
    given = granted == "1"
    try:
        service.record_consent(
            session,
            contact,
            channel=channel,
            granted=given,
            source=source.strip() or "portal",
            text=text,
        )
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/contacts/{contact_id}")
    audit(
        session,
        principal,
        "contact.consent",
        f"contact:{contact_id}",
        ip=client_ip(request),
        channel=channel,
        granted=given,
        source=source,
    )
    flash(
        request,
        "Consentimiento registrado."
        if given
        else "Retiro del consentimiento registrado: el canal queda dado de baja.",
    )
    return redirect(f"/contacts/{contact_id}")


@router.get("/contacts/{contact_id}/export.json")
def contact_export(
    request: Request, contact_id: Id, session: SessionDep, principal: Sender
) -> Response:
    """Everything kept about the person (access request, Ley 29733 art. 19), as a file."""
    data = service.export_contact(session, principal.account_id, contact_id)
    audit(session, principal, "contact.export", f"contact:{contact_id}", ip=client_ip(request))
    return Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        media_type="application/json; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="contacto-{contact_id}.json"',
            **NO_STORE,
        },
    )


@router.get("/contacts/{contact_id}/erase")
def contact_erase_page(
    request: Request, contact_id: Id, session: SessionDep, principal: Sender
) -> HTMLResponse:
    contact = service.get_contact(session, principal.account_id, contact_id)
    return render(request, "audience/contact_erase.html", contact=contact)


@router.post("/contacts/{contact_id}/erase", dependencies=[CsrfChecked])
def contact_erase(
    request: Request,
    contact_id: Id,
    session: SessionDep,
    principal: Sender,
    confirm: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """Erase the person's data (deletion request, Ley 29733 art. 20)."""
    service.get_contact(session, principal.account_id, contact_id)
    if confirm != "yes":
        flash(request, "Marque la casilla de confirmación para eliminar los datos.", "error")
        return redirect(f"/contacts/{contact_id}/erase")
    digest = service.erase_contact(
        session, principal.account_id, contact_id, source=f"portal:{principal.actor}"
    )
    audit(
        session,
        principal,
        "contact.erase",
        f"contact:{contact_id}",
        ip=client_ip(request),
        address_hash=digest[:16],
    )
    flash(
        request,
        "Datos personales eliminados. Solo queda una huella irreversible (hash) de la "
        "dirección en la lista de supresión, para no volver a escribirle.",
    )
    return redirect("/contacts")


# -- segments ----------------------------------------------------------------------------


def _builder_schema(session: Session, account_id: int) -> dict[str, Any]:
    """What the segment builder offers: fields with their kind, operators per kind, values
    of status fields and the account's lists, all labelled in Spanish."""
    fields = [{"value": f, "label": FIELD_LABELS_ES[f], "kind": "text"} for f in TEXT_FIELDS]
    fields += [{"value": f, "label": FIELD_LABELS_ES[f], "kind": "status"} for f in STATUS_FIELDS]
    fields += [{"value": f, "label": FIELD_LABELS_ES[f], "kind": "date"} for f in DATE_FIELDS]
    fields += [{"value": f, "label": FIELD_LABELS_ES[f], "kind": f} for f in ("list", "engagement")]
    types = {a.name: str(a.type) for a in service.list_attributes(session, account_id)}
    for name in sorted(set(types) | service.attribute_names(session, account_id)):
        kind = types.get(name, AttributeType.TEXT)
        fields.append(
            {
                "value": f"attr:{name}",
                "label": f"Atributo: {name} ({TYPE_LABELS_ES.get(kind, 'Texto')})",  # type: ignore[call-overload]
                "kind": str(kind),
            }
        )
    statuses = {name: [[s, CHANNEL_LABELS_ES[s]] for s in ChannelStatus] for name in STATUS_FIELDS}
    statuses["email_verdict"] = [[v, _verdict_label(v)] for v in STATUS_FIELDS["email_verdict"]]
    return {
        "fields": fields,
        "ops": {
            str(kind): [[op, OP_LABELS_ES.get(op, op)] for op in ops] for kind, ops in OPS.items()
        },
        "statuses": statuses,
        "lists": [[lst.id, lst.name] for lst, _members in service.list_lists(session, account_id)],
        "noValue": sorted(NO_VALUE_OPS),
        "dayOps": ["within_days", "older_than_days"],
    }


def _count_text(counts: dict[str, int], channel: str = "email") -> str:
    matching, sendable = counts["matching"], counts["sendable"]
    what = "correo" if channel == "email" else "SMS"
    return (
        f"{matching:,} {'contacto coincide' if matching == 1 else 'contactos coinciden'} · "
        f"{sendable:,} {'puede' if sendable == 1 else 'pueden'} recibir {what}"
    )


def _parse_rules(text: str) -> Any:
    if not text.strip():
        return {"match": "all", "conditions": []}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValidationFailed(
            "the rules are not valid JSON ({error})", field="rules", error=str(exc)
        ) from None


def _condition_index(exc: MailerError) -> int | None:
    """The top-level condition an error is about (``rules.conditions[2]...`` -> 2)."""
    match = re.match(r"rules\.conditions\[(\d+)\]", str(exc.params.get("where", "")))
    return int(match.group(1)) if match else None


def _rules_error(exc: MailerError) -> str:
    """A rules error in Spanish, naming the condition as the builder shows it."""
    where = exc.params.get("where")
    if not isinstance(where, str):
        return tr(exc)
    numbers = [str(int(n) + 1) for n in re.findall(r"\[(\d+)\]", where)]
    shown = f"Condición {' › '.join(numbers)}" if numbers else "Reglas"
    return portal_text(exc.template, {**exc.params, "where": shown})


def _segment_page(
    request: Request,
    session: Session,
    principal: Principal,
    segment: Segment | None,
    form: dict[str, Any],
    *,
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    try:
        counts = service.count_matching(session, principal.account_id, _parse_rules(form["rules"]))
        count_text = _count_text(counts)
    except MailerError as exc:
        count_text = _rules_error(exc)
    runs = (
        [r for r in clean.latest_runs(session, principal.account_id) if r.segment_id == segment.id]
        if segment is not None
        else []
    )
    return render(
        request,
        "audience/segment_edit.html",
        status_code=status_code,
        segment=segment,
        form=form,
        error=error,
        count_text=count_text,
        schema=_builder_schema(session, principal.account_id),
        runs=runs[:3],
    )


def _rules_text(rules: Any) -> str:
    return json.dumps(rules, ensure_ascii=False, indent=1)


@router.get("/segments")
def segments_page(request: Request, session: SessionDep, principal: Reader) -> HTMLResponse:
    rows = []
    for segment in service.list_segments(session, principal.account_id):
        try:
            counts = service.audience_counts(session, principal.account_id, segment_id=segment.id)
        except MailerError:  # a rule naming a list deleted since: the page still shows it
            counts = {"matching": 0, "sendable": 0}
        rows.append((segment, describe(segment.rules), counts))
    return render(request, "audience/segments.html", rows=rows)


@router.get("/segments/new")
def segment_new(request: Request, session: SessionDep, principal: Editor) -> HTMLResponse:
    form = {"name": "", "description": "", "rules": _rules_text({"match": "all", "conditions": []})}
    return _segment_page(request, session, principal, None, form)


@router.post("/segments/new", dependencies=[CsrfChecked])
def segment_create(
    request: Request,
    session: SessionDep,
    principal: Editor,
    name: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=1000)] = "",
    rules: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    form = {"name": name, "description": description, "rules": rules}
    try:
        segment = service.create_segment(
            session, principal.account_id, name, _parse_rules(rules), description
        )
    except MailerError as exc:
        session.rollback()
        return _segment_page(
            request, session, principal, None, form, error=_rules_error(exc), status_code=422
        )
    audit(session, principal, "segment.create", f"segment:{segment.id}", ip=client_ip(request))
    flash(request, f"Segmento «{segment.name}» guardado.")
    return redirect(f"/segments/{segment.id}")


@router.post("/segments/count", dependencies=[CsrfChecked])
def segment_count(
    session: SessionDep,
    principal: Reader,
    rules: Annotated[str, Form(max_length=100_000)] = "",
    channel: Annotated[str, Form(max_length=8)] = "email",
) -> JSONResponse:
    """The builder's live count of the rules being edited (nothing is saved)."""
    channel = channel if channel in CHANNELS else "email"
    try:
        counts = service.count_matching(session, principal.account_id, _parse_rules(rules), channel)
    except MailerError as exc:
        return JSONResponse(
            {"error": _rules_error(exc), "condition": _condition_index(exc)},
            status_code=422,
            headers=NO_STORE,
        )
    return JSONResponse({**counts, "text": _count_text(counts, channel)}, headers=NO_STORE)


@router.get("/segments/{segment_id}")
def segment_page(
    request: Request, segment_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    segment = service.get_segment(session, principal.account_id, segment_id)
    form = {
        "name": segment.name,
        "description": segment.description,
        "rules": _rules_text(segment.rules),
    }
    return _segment_page(request, session, principal, segment, form)


@router.post("/segments/{segment_id}", dependencies=[CsrfChecked])
def segment_update(
    request: Request,
    segment_id: Id,
    session: SessionDep,
    principal: Editor,
    name: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=1000)] = "",
    rules: Annotated[str, Form(max_length=100_000)] = "",
) -> Response:
    segment = service.get_segment(session, principal.account_id, segment_id)
    form = {"name": name, "description": description, "rules": rules}
    try:
        if not name.strip():
            raise ValidationFailed("the segment needs a name", field="name")
        service.update_segment(
            session,
            principal.account_id,
            segment_id,
            name=name,
            rules=_parse_rules(rules),
            description=description,
        )
    except MailerError as exc:
        session.rollback()
        return _segment_page(
            request, session, principal, segment, form, error=_rules_error(exc), status_code=422
        )
    audit(session, principal, "segment.update", f"segment:{segment_id}", ip=client_ip(request))
    flash(request, f"Segmento «{name.strip()}» guardado.")
    return redirect(f"/segments/{segment_id}")


@router.post("/segments/{segment_id}/delete", dependencies=[CsrfChecked])
def segment_delete(
    request: Request, segment_id: Id, session: SessionDep, principal: Editor
) -> Response:
    segment = service.get_segment(session, principal.account_id, segment_id)
    try:
        service.delete_segment(session, principal.account_id, segment_id)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/segments/{segment_id}")
    audit(session, principal, "segment.delete", f"segment:{segment_id}", ip=client_ip(request))
    flash(request, f"Segmento «{segment.name}» eliminado.")
    return redirect("/segments")


# -- cleaning ----------------------------------------------------------------------------


@router.post("/cleanings", dependencies=[CsrfChecked])
def cleaning_start(
    request: Request,
    session: SessionDep,
    principal: Editor,
    list_id: FormId = None,
    segment_id: FormId = None,
) -> Response:
    """The "Depurar" button of a list or segment: queue a cleaning and follow it live."""
    run = clean.start_cleaning(
        session,
        principal.account_id,
        list_id=list_id,
        segment_id=segment_id,
        actor=principal.actor,
    )
    audit(session, principal, "cleaning.start", f"cleaning:{run.id}", ip=client_ip(request))
    session.commit()  # before the worker looks for it
    assert run.id is not None
    enqueue(tasks.run_cleaning, run.id)
    return redirect(f"/cleanings/{run.id}")


def _cleaning_target(session: Session, account_id: int, run: CleaningRun) -> tuple[str, str, str]:
    """(kind, name, page) of what a cleaning cleaned."""
    try:
        if run.segment_id is not None:
            segment = service.get_segment(session, account_id, run.segment_id)
            return "segment", segment.name, f"/segments/{segment.id}"
        if run.list_id is not None:
            lst = service.get_list(session, account_id, run.list_id)
            return "list", lst.name, f"/lists/{lst.id}"
    except NotFound:
        pass
    return "", "(eliminado)", ""


@router.get("/cleanings/{run_id}")
def cleaning_page(
    request: Request, run_id: Id, session: SessionDep, principal: Reader
) -> HTMLResponse:
    """A cleaning: a live progress bar while it runs, then its report."""
    run = clean.get_run(session, principal.account_id, run_id)
    kind, name, target_url = _cleaning_target(session, principal.account_id, run)
    report: dict[str, Any] = run.counts or {}
    suggestions = []
    for item in report.get("suggestions", [])[:100]:
        pending = item["count"]
        if run.status == "done" and kind:
            # Contacts of the target still at the wrong domain: 0 once the fix was applied.
            _found, pending = service.search_contacts(
                session,
                principal.account_id,
                query=f"@{item['from']}",
                list_id=run.list_id if kind == "list" else None,
                segment_id=run.segment_id if kind == "segment" else None,
                limit=0,
            )
        suggestions.append({**item, "pending": pending})
    reasons = sorted(report.get("reasons", {}).items(), key=lambda pair: -pair[1])
    verdicts = report.get("verdicts", {})
    return render(
        request,
        "audience/cleaning.html",
        run=run,
        finished=run.status in ("done", "failed"),
        fraction=(run.done / run.total) if run.total else (1.0 if run.status == "done" else 0.0),
        target_kind=kind,
        target_name=name,
        target_url=target_url,
        report=report,
        verdicts=[(v, VERDICT_LABELS_ES[v], verdicts.get(v, 0)) for v in VERDICT_ORDER],  # type: ignore[index]
        reasons=[(r, REASON_LABELS_ES.get(r, r), n) for r, n in reasons],  # type: ignore[call-overload]
        domains=[
            {**d, "label": _verdict_label(d.get("verdict", ""))}
            for d in report.get("top_domains", [])
        ],
        suggestions=suggestions,
    )


@router.get("/cleanings/{run_id}/progress")
def cleaning_progress(run_id: Id, session: SessionDep, principal: Reader) -> JSONResponse:
    """Polled by the cleaning page every half second."""
    run = clean.get_run(session, principal.account_id, run_id)
    fraction = (run.done / run.total) if run.total else 0.0
    return JSONResponse(
        {
            "status": run.status,
            "finished": run.status in ("done", "failed"),
            "fraction": 1.0 if run.status == "done" else round(fraction, 4),
            "figures": {"done": run.done, "total": run.total},
        },
        headers=NO_STORE,
    )


@router.post("/cleanings/{run_id}/fixes", dependencies=[CsrfChecked])
def cleaning_fixes(
    request: Request,
    run_id: Id,
    session: SessionDep,
    principal: Editor,
    fix: FormList = None,
) -> Response:
    """Accept the typo fixes ticked in the report (only ones the report offered)."""
    run = clean.get_run(session, principal.account_id, run_id)
    offered = {(s["from"], s["to"]) for s in (run.counts or {}).get("suggestions", [])}
    chosen = []
    for value in fix or []:
        wrong, _space, right = value.partition(" ")
        if (wrong, right) in offered:
            chosen.append((wrong, right))
    if not chosen:
        flash(request, "Seleccione al menos una corrección.", "error")
        return redirect(f"/cleanings/{run_id}")
    checker = clean.get_checker(_settings(request))
    result = clean.accept_suggestions(session, principal.account_id, chosen, checker)
    audit(
        session,
        principal,
        "cleaning.fix",
        f"cleaning:{run_id}",
        ip=client_ip(request),
        fixes=chosen,
        **result,
    )
    flash(
        request,
        f"Correcciones aplicadas: {result['fixed']} direcciones corregidas"
        + (
            f", {result['merged']} unidas a un contacto que ya tenía la dirección correcta."
            if result["merged"]
            else "."
        ),
    )
    return redirect(f"/cleanings/{run_id}")


# -- exports of a list or a segment -------------------------------------------------------

EXPORT_FIELDS = ("email", "first_name", "last_name", "phone", "company", "position", "document")
EXPORT_HEADERS_ES = ("correo", "nombre", "apellido", "celular", "empresa", "cargo", "documento")
EXPORT_TAIL_ES = (
    "estado_correo",
    "estado_sms",
    "resultado",
    "motivos",
    "sugerencia",
    "depurado_el",
)


def _export(
    request: Request,
    session: Session,
    principal: Principal,
    *,
    list_id: int | None,
    segment_id: int | None,
    suffix: str,
    basename: str,
) -> Response:
    """The contacts of a list or segment with their cleaning verdict, as CSV or XLSX."""
    account_id = principal.account_id
    names = sorted(
        {a.name for a in service.list_attributes(session, account_id)}
        | service.attribute_names(session, account_id)
    )
    zone = ZoneInfo(getattr(request.state, "timezone", None) or _settings(request).timezone)

    def rows() -> Iterator[list[Any]]:
        offset = 0
        while True:
            contacts, _total = service.search_contacts(
                session,
                account_id,
                list_id=list_id,
                segment_id=segment_id,
                offset=offset,
                limit=EXPORT_PAGE,
            )
            for c in contacts:
                yield [
                    *(getattr(c, name) for name in EXPORT_FIELDS),
                    *(c.attributes.get(name, "") for name in names),
                    CHANNEL_LABELS_ES.get(c.email_status, c.email_status),
                    CHANNEL_LABELS_ES.get(c.sms_status, c.sms_status),
                    _verdict_label(c.email_verdict) if c.email_verdict else "",
                    "; ".join(_reason_labels(c.email_reasons)),
                    c.email_suggestion,
                    c.cleaned_at.astimezone(zone).strftime("%d/%m/%Y %H:%M")
                    if c.cleaned_at
                    else "",
                ]
            if len(contacts) < EXPORT_PAGE:
                return
            offset += EXPORT_PAGE

    folder = _settings(request).data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder))
    path = scratch / f"{basename}{suffix}"
    try:
        write_table(path, [*EXPORT_HEADERS_ES, *names, *EXPORT_TAIL_ES], rows())
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    target = f"list:{list_id}" if list_id is not None else f"segment:{segment_id}"
    audit(session, principal, "audience.export", target, ip=client_ip(request), format=suffix)
    media = (
        "text/csv; charset=utf-8"
        if suffix == ".csv"
        else "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    return FileResponse(
        path,
        media_type=media,
        filename=path.name,
        headers=NO_STORE,
        background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True),
    )


def _list_export(
    request: Request, session: Session, principal: Principal, list_id: int, suffix: str
) -> Response:
    lst = service.get_list(session, principal.account_id, list_id)
    name = f"lista-{list_id}-{attribute_slug(lst.name)}"
    return _export(
        request, session, principal, list_id=list_id, segment_id=None, suffix=suffix, basename=name
    )


def _segment_export(
    request: Request, session: Session, principal: Principal, segment_id: int, suffix: str
) -> Response:
    segment = service.get_segment(session, principal.account_id, segment_id)
    name = f"segmento-{segment_id}-{attribute_slug(segment.name)}"
    return _export(
        request,
        session,
        principal,
        list_id=None,
        segment_id=segment_id,
        suffix=suffix,
        basename=name,
    )


@router.get("/lists/{list_id}/export.csv")
def list_export_csv(
    request: Request, list_id: Id, session: SessionDep, principal: Sender
) -> Response:
    return _list_export(request, session, principal, list_id, ".csv")


@router.get("/lists/{list_id}/export.xlsx")
def list_export_xlsx(
    request: Request, list_id: Id, session: SessionDep, principal: Sender
) -> Response:
    return _list_export(request, session, principal, list_id, ".xlsx")


@router.get("/segments/{segment_id}/export.csv")
def segment_export_csv(
    request: Request, segment_id: Id, session: SessionDep, principal: Sender
) -> Response:
    return _segment_export(request, session, principal, segment_id, ".csv")


@router.get("/segments/{segment_id}/export.xlsx")
def segment_export_xlsx(
    request: Request, segment_id: Id, session: SessionDep, principal: Sender
) -> Response:
    return _segment_export(request, session, principal, segment_id, ".xlsx")


# -- suppression list --------------------------------------------------------------------


@router.get("/suppressions")
def suppressions_page(
    request: Request,
    session: SessionDep,
    principal: Reader,
    q: Annotated[str, Query(max_length=320)] = "",
    channel: Annotated[str, Query(max_length=8)] = "",
    page: Page = 1,
) -> HTMLResponse:
    chosen = channel if channel in CHANNELS else None
    entries = list_suppressions(
        session,
        principal.account_id,
        channel=chosen,
        search=q,
        offset=(page - 1) * SUPPRESSION_PAGE,
        limit=SUPPRESSION_PAGE,
    )
    return render(
        request,
        "audience/suppressions.html",
        entries=entries,
        total=count_suppressions(session, principal.account_id, chosen),
        q=q,
        channel=chosen or "",
        page=page,
        page_size=SUPPRESSION_PAGE,
        reason_labels=SUPPRESSION_LABELS_ES,
        channel_names=CHANNEL_NAMES_ES,
        erased=SuppressionReason.ERASED,
    )


def _suppression_values(channel: str, text: str) -> tuple[list[str], list[str]]:
    """The addresses (or phones, in E.164) of the pasted text, and the lines that are not."""
    good: list[str] = []
    bad: list[str] = []
    for item in re.split(r"[\s,;]+", text):
        if not item:
            continue
        if channel == "email":
            verdict = check_syntax(item)
            (good if verdict.ok else bad).append(verdict.normalized if verdict.ok else item)
        else:
            phone = check_phone(item)
            (good if phone.ok else bad).append(phone.e164 if phone.ok else item)
    return good, bad


@router.post("/suppressions", dependencies=[CsrfChecked])
def suppressions_add(
    request: Request,
    session: SessionDep,
    principal: Editor,
    channel: Annotated[str, Form(max_length=8)] = "email",
    values: Annotated[str, Form(max_length=2_000_000)] = "",
) -> Response:
    """Add addresses (or phones) pasted one per line; existing entries are kept."""
    if channel not in CHANNELS:
        channel = "email"
    good, bad = _suppression_values(channel, values)
    if len(good) + len(bad) > MAX_SUPPRESSION_LINES:
        flash(request, f"Agregue como máximo {MAX_SUPPRESSION_LINES:,} valores a la vez.", "error")
        return redirect("/suppressions")
    added = suppress(
        session,
        principal.account_id,
        channel,
        good,
        SuppressionReason.MANUAL,
        f"portal:{principal.actor}",
    )
    audit(session, principal, "suppression.add", channel, ip=client_ip(request), count=added)
    message = f"{added} {'entrada agregada' if added == 1 else 'entradas agregadas'}"
    if len(good) > added:
        message += f" ({len(good) - added} ya estaban en la lista)"
    message += "."
    if bad:
        shown = ", ".join(bad[:10]) + (" …" if len(bad) > 10 else "")
        message += f" No se agregaron {len(bad)} valores no válidos: {shown}"
    flash(request, message, "error" if bad else "ok")
    return redirect(f"/suppressions?channel={channel}")


@router.post("/suppressions/remove", dependencies=[CsrfChecked])
def suppressions_remove(
    request: Request,
    session: SessionDep,
    principal: Sender,
    channel: Annotated[str, Form(max_length=8)] = "email",
    value: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    """Take an entry off the list (the person opted in again); erased entries stay."""
    removed = unsuppress(session, principal.account_id, channel, value)
    if removed:
        audit(session, principal, "suppression.remove", channel, ip=client_ip(request))
        flash(request, f"«{value}» ya no está en la lista de supresión.")
    else:
        flash(request, f"«{value}» no estaba en la lista de supresión.", "error")
    return redirect(f"/suppressions?channel={channel}")
