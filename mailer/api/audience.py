"""The ``/api/v1`` routes of the audience: contacts, consent, attributes, segments,
suppression, imports and cleaning."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from pydantic import BaseModel, Field

from mailer.accounts.service import audit
from mailer.api.deps import Editor, Id, Limit, Locale, Offset, Reader, Sender, SessionDep
from mailer.api.schemas import RowErrorOut
from mailer.audience import clean, service
from mailer.audience import tasks as audience_tasks
from mailer.audience.models import CleaningRun, Contact, ContactImport, Segment
from mailer.audience.segments import describe
from mailer.audience.suppression import (
    count_suppressions,
    list_suppressions,
    suppress,
    unsuppress,
)
from mailer.cleaning.dns import clean_addresses
from mailer.core.errors import ValidationFailed
from mailer.core.i18n import localise_text
from mailer.core.queue import enqueue

router = APIRouter(prefix="/api/v1")

Channel = Literal["email", "sms"]


class ConsentIn(BaseModel):
    channel: Channel = "email"
    granted: bool = True
    source: str = Field("api", max_length=200)
    ip: str = Field("", max_length=64)
    text: str = Field("", max_length=4000, description="The wording the person agreed to.")


class ContactIn(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "email": "ana.quispe@proveedor.pe",
                    "first_name": "Ana",
                    "last_name": "Quispe",
                    "phone": "987 654 321",
                    "company": "Proveedor S.A.C.",
                    "position": "Gerente",
                    "document": "20123456789",
                    "attributes": {"monto": 1500, "vence": "2026-12-31"},
                    "list_id": 1,
                    "consent": {"channel": "email", "source": "formulario web"},
                }
            ]
        }
    }
    email: str = Field(min_length=3, max_length=320)
    first_name: str = Field("", max_length=200)
    last_name: str = Field("", max_length=200)
    phone: str = Field("", max_length=32)
    company: str = Field("", max_length=300)
    position: str = Field("", max_length=200)
    document: str = Field("", max_length=32)
    attributes: dict[str, Any] = Field(default_factory=dict)
    list_id: int | None = None
    consent: ConsentIn | None = None


class ContactPatch(BaseModel):
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=32)
    company: str | None = Field(None, max_length=300)
    position: str | None = Field(None, max_length=200)
    document: str | None = Field(None, max_length=32)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ContactDetailOut(BaseModel):
    id: int
    email: str
    first_name: str
    last_name: str
    phone: str
    phone_kind: str
    company: str
    position: str
    document: str
    attributes: dict[str, Any]
    email_status: str
    sms_status: str
    email_verdict: str
    email_reasons: str
    email_suggestion: str
    cleaned_at: datetime | None
    created_at: datetime


class ContactPageOut(BaseModel):
    total: int
    contacts: list[ContactDetailOut]


class AttributeIn(BaseModel):
    type: Literal["text", "number", "date", "boolean"] = "text"
    label: str = Field("", max_length=200)


class AttributeOut(BaseModel):
    name: str
    type: str
    label: str


class SegmentIn(BaseModel):
    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "Proveedores de Lima activos",
                    "rules": {
                        "match": "all",
                        "conditions": [
                            {"field": "attr:ciudad", "op": "eq", "value": "Lima"},
                            {"field": "engagement", "op": "opened_within", "value": 90},
                        ],
                    },
                }
            ]
        }
    }
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=1000)
    rules: dict[str, Any] = Field(default_factory=lambda: {"match": "all", "conditions": []})


class SegmentPatch(BaseModel):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=1000)
    rules: dict[str, Any] | None = None


class RulesIn(BaseModel):
    rules: dict[str, Any]
    channel: Channel = "email"


class CountOut(BaseModel):
    matching: int
    sendable: int


class SegmentOut(BaseModel):
    id: int
    name: str
    description: str
    rules: dict[str, Any]
    summary: str
    matching: int
    sendable: int


class SuppressionIn(BaseModel):
    channel: Channel = "email"
    values: list[str] = Field(min_length=1, max_length=10_000)
    reason: Literal["unsubscribed", "bounced", "complained", "invalid", "manual"] = "manual"
    source: str = Field("api", max_length=200)


class SuppressionOut(BaseModel):
    channel: str
    value: str
    reason: str
    source: str
    created_at: datetime


class SuppressionPageOut(BaseModel):
    total: int
    entries: list[SuppressionOut]


class AddedOut(BaseModel):
    added: int


class ImportStatusOut(BaseModel):
    id: int
    status: str
    progress: float
    filename: str
    format: str
    list_id: int | None
    rows: int
    created: int
    updated: int
    unchanged: int
    duplicates_in_file: int
    suppressed: int
    skipped: int
    added_to_list: int
    mapping: dict[str, str]
    error: str
    errors: list[RowErrorOut]


class CleaningIn(BaseModel):
    list_id: int | None = None
    segment_id: int | None = None


class CleaningOut(BaseModel):
    id: int
    status: str
    list_id: int | None
    segment_id: int | None
    total: int
    done: int
    report: dict[str, Any]
    error: str


class FixIn(BaseModel):
    fixes: list[tuple[str, str]] = Field(
        min_length=1,
        description='Pairs of [wrong domain, right domain], e.g. ["gmial.com", "gmail.com"].',
    )


class FixOut(BaseModel):
    fixed: int
    merged: int


class VerifyIn(BaseModel):
    addresses: list[str] = Field(min_length=1, max_length=100)


class VerdictOut(BaseModel):
    address: str
    verdict: str
    reasons: list[str]
    suggestion: str | None


def _contact_out(contact: Contact) -> ContactDetailOut:
    return ContactDetailOut.model_validate(contact, from_attributes=True)


# -- contacts ------------------------------------------------------------------------------


@router.get("/contacts", response_model=ContactPageOut, tags=["contacts"])
def get_contacts(
    session: SessionDep,
    principal: Reader,
    q: str = Query("", max_length=200, description="Text in the address, name, company, RUC."),
    list_id: int | None = Query(None, ge=1),
    segment_id: int | None = Query(None, ge=1),
    offset: Offset = 0,
    limit: Limit = 100,
) -> ContactPageOut:
    contacts, total = service.search_contacts(
        session,
        principal.account_id,
        query=q,
        list_id=list_id,
        segment_id=segment_id,
        offset=offset,
        limit=limit,
    )
    return ContactPageOut(total=total, contacts=[_contact_out(c) for c in contacts])


@router.post(
    "/contacts",
    response_model=ContactDetailOut,
    status_code=status.HTTP_201_CREATED,
    tags=["contacts"],
)
def post_contact(body: ContactIn, session: SessionDep, principal: Editor) -> ContactDetailOut:
    """Add a contact (or find the existing one with that address), optionally to a list and
    with the consent the person gave (kept as proof, Ley 29733)."""
    fields = body.model_dump(exclude={"email", "list_id", "consent", "attributes"})
    contact = service.add_contact(
        session,
        principal.account_id,
        body.email,
        list_id=body.list_id,
        consent=body.consent.model_dump() if body.consent else None,
        attributes=body.attributes,
        **fields,
    )
    audit(session, principal, "contact.create", f"contact:{contact.id}")
    session.commit()
    return _contact_out(contact)


@router.get("/contacts/{contact_id}", response_model=ContactDetailOut, tags=["contacts"])
def get_contact(contact_id: Id, session: SessionDep, principal: Reader) -> ContactDetailOut:
    return _contact_out(service.get_contact(session, principal.account_id, contact_id))


@router.patch("/contacts/{contact_id}", response_model=ContactDetailOut, tags=["contacts"])
def patch_contact(
    contact_id: Id, body: ContactPatch, session: SessionDep, principal: Editor
) -> ContactDetailOut:
    fields = {k: v for k, v in body.model_dump(exclude={"attributes"}).items() if v is not None}
    contact = service.update_contact(
        session, principal.account_id, contact_id, attributes=body.attributes, **fields
    )
    audit(session, principal, "contact.update", f"contact:{contact_id}", fields=sorted(fields))
    session.commit()
    return _contact_out(contact)


@router.post("/contacts/{contact_id}/consents", response_model=ContactDetailOut, tags=["contacts"])
def post_consent(
    contact_id: Id, body: ConsentIn, session: SessionDep, principal: Editor
) -> ContactDetailOut:
    """Record a consent given or withdrawn; a withdrawal unsubscribes the channel at once."""
    contact = service.get_contact(session, principal.account_id, contact_id)
    service.record_consent(session, contact, **body.model_dump())
    audit(session, principal, "contact.consent", f"contact:{contact_id}", **body.model_dump())
    session.commit()
    return _contact_out(contact)


@router.get("/contacts/{contact_id}/export", tags=["contacts"])
def export_contact(contact_id: Id, session: SessionDep, principal: Sender) -> dict[str, Any]:
    """Everything kept about the person (access request, Ley 29733)."""
    data = service.export_contact(session, principal.account_id, contact_id)
    audit(session, principal, "contact.export", f"contact:{contact_id}")
    session.commit()
    return data


@router.delete("/contacts/{contact_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["contacts"])
def erase_contact(contact_id: Id, session: SessionDep, principal: Sender) -> None:
    """Erase the person's data (deletion request); a hashed suppression entry remains so
    the address is never mailed again."""
    digest = service.erase_contact(
        session, principal.account_id, contact_id, source=f"api:{principal.actor}"
    )
    audit(session, principal, "contact.erase", f"contact:{contact_id}", address_hash=digest[:16])
    session.commit()


# -- attributes ----------------------------------------------------------------------------


@router.get("/attributes", response_model=list[AttributeOut], tags=["contacts"])
def get_attributes(session: SessionDep, principal: Reader) -> list[AttributeOut]:
    return [
        AttributeOut(name=a.name, type=a.type, label=a.label)
        for a in service.list_attributes(session, principal.account_id)
    ]


@router.put("/attributes/{name}", response_model=AttributeOut, tags=["contacts"])
def put_attribute(
    name: str, body: AttributeIn, session: SessionDep, principal: Editor
) -> AttributeOut:
    """Declare the type of a custom attribute (text, number, date, boolean)."""
    definition = service.define_attribute(
        session, principal.account_id, name, body.type, body.label
    )
    audit(session, principal, "attribute.define", f"attribute:{definition.name}", type=body.type)
    session.commit()
    return AttributeOut(name=definition.name, type=definition.type, label=definition.label)


# -- segments ------------------------------------------------------------------------------


def _segment_out(session: SessionDep, segment: Segment) -> SegmentOut:
    assert segment.id is not None
    counts = service.audience_counts(session, segment.account_id, segment_id=segment.id)
    return SegmentOut(
        id=segment.id,
        name=segment.name,
        description=segment.description,
        rules=segment.rules,
        summary=describe(segment.rules),
        **counts,
    )


@router.get("/segments", response_model=list[SegmentOut], tags=["segments"])
def get_segments(session: SessionDep, principal: Reader) -> list[SegmentOut]:
    return [_segment_out(session, s) for s in service.list_segments(session, principal.account_id)]


@router.post(
    "/segments", response_model=SegmentOut, status_code=status.HTTP_201_CREATED, tags=["segments"]
)
def post_segment(body: SegmentIn, session: SessionDep, principal: Editor) -> SegmentOut:
    segment = service.create_segment(
        session, principal.account_id, body.name, body.rules, body.description
    )
    audit(session, principal, "segment.create", f"segment:{segment.id}", name=segment.name)
    session.commit()
    return _segment_out(session, segment)


@router.post("/segments/count", response_model=CountOut, tags=["segments"])
def count_rules(body: RulesIn, session: SessionDep, principal: Reader) -> CountOut:
    """Live count of rules before they are saved: contacts matching, and how many of them
    can receive the channel now."""
    return CountOut(
        **service.count_matching(session, principal.account_id, body.rules, body.channel)
    )


@router.get("/segments/{segment_id}", response_model=SegmentOut, tags=["segments"])
def get_segment(segment_id: Id, session: SessionDep, principal: Reader) -> SegmentOut:
    return _segment_out(session, service.get_segment(session, principal.account_id, segment_id))


@router.patch("/segments/{segment_id}", response_model=SegmentOut, tags=["segments"])
def patch_segment(
    segment_id: Id, body: SegmentPatch, session: SessionDep, principal: Editor
) -> SegmentOut:
    segment = service.update_segment(
        session,
        principal.account_id,
        segment_id,
        name=body.name,
        rules=body.rules,
        description=body.description,
    )
    audit(session, principal, "segment.update", f"segment:{segment_id}")
    session.commit()
    return _segment_out(session, segment)


@router.delete("/segments/{segment_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["segments"])
def delete_segment(segment_id: Id, session: SessionDep, principal: Editor) -> None:
    service.delete_segment(session, principal.account_id, segment_id)
    audit(session, principal, "segment.delete", f"segment:{segment_id}")
    session.commit()


# -- suppression ---------------------------------------------------------------------------


@router.get("/suppressions", response_model=SuppressionPageOut, tags=["suppression"])
def get_suppressions(
    session: SessionDep,
    principal: Reader,
    channel: Channel | None = None,
    q: str = Query("", max_length=320),
    offset: Offset = 0,
    limit: Limit = 100,
) -> SuppressionPageOut:
    entries = list_suppressions(
        session, principal.account_id, channel=channel, search=q, offset=offset, limit=limit
    )
    return SuppressionPageOut(
        total=count_suppressions(session, principal.account_id, channel),
        entries=[SuppressionOut.model_validate(e, from_attributes=True) for e in entries],
    )


@router.post("/suppressions", response_model=AddedOut, tags=["suppression"])
def post_suppressions(body: SuppressionIn, session: SessionDep, principal: Editor) -> AddedOut:
    """Add addresses or phones that must never be messaged (existing entries are kept)."""
    added = suppress(
        session, principal.account_id, body.channel, body.values, body.reason, body.source
    )
    audit(session, principal, "suppression.add", body.channel, count=added)
    session.commit()
    return AddedOut(added=added)


@router.delete(
    "/suppressions/{channel}/{value}", status_code=status.HTTP_204_NO_CONTENT, tags=["suppression"]
)
def delete_suppression(
    channel: Channel, value: str, session: SessionDep, principal: Sender
) -> None:
    """Take an entry off the list (the person opted in again); erased entries stay."""
    unsuppress(session, principal.account_id, channel, value)
    audit(session, principal, "suppression.remove", channel)
    session.commit()


# -- imports -------------------------------------------------------------------------------


def _import_out(record: ContactImport, locale: str, with_errors: bool = True) -> ImportStatusOut:
    assert record.id is not None
    errors = [
        RowErrorOut(
            line=e.line,
            column=e.column,
            value=e.value,
            reason=localise_text(e.reason, e.params, locale),
        )
        for e in service.rejected_rows(record)
    ]
    return ImportStatusOut(
        id=record.id,
        status=record.status,
        progress=record.progress,
        filename=record.filename,
        format=record.format,
        list_id=record.list_id,
        rows=record.rows,
        created=record.created,
        updated=record.updated,
        unchanged=record.unchanged,
        duplicates_in_file=record.duplicates_in_file,
        suppressed=record.suppressed,
        skipped=record.skipped,
        added_to_list=record.added_to_list,
        mapping=record.mapping,
        error=record.error,
        errors=errors if with_errors else [],
    )


@router.post(
    "/lists/{list_id}/imports",
    response_model=ImportStatusOut,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["lists"],
)
def queue_list_import(
    list_id: Id,
    request: Request,
    session: SessionDep,
    principal: Editor,
    locale: Locale,
    file: UploadFile = File(..., description="CSV (UTF-8 or Windows-1252) or XLSX file"),
    mode: str = Form("add_or_update"),
    mapping: str = Form("", description='JSON object {"header": "field"}; empty = automatic'),
) -> ImportStatusOut:
    """Queue an import of any size and answer at once; follow it at ``/imports/{id}``."""
    import json

    try:
        columns = json.loads(mapping) if mapping.strip() else None
    except ValueError:
        raise ValidationFailed("mapping is not valid JSON", field="mapping") from None
    if columns is not None and not isinstance(columns, dict):
        raise ValidationFailed(
            "mapping must be a JSON object of header: field pairs", field="mapping"
        )
    settings = request.app.state.settings
    path = service.store_upload(settings.data_dir / "uploads", file.filename or "", file.file)
    try:
        record = service.queue_import(
            session,
            principal.account_id,
            path,
            filename=file.filename or path.name,
            list_id=list_id,
            mode=mode,
            mapping=columns,
            actor=principal.actor,
        )
    except Exception:
        path.unlink(missing_ok=True)
        raise
    audit(session, principal, "list.import", f"list:{list_id}", file=file.filename)
    session.commit()
    assert record.id is not None
    enqueue(audience_tasks.run_import, record.id)
    return _import_out(record, locale)


@router.get("/imports/{import_id}", response_model=ImportStatusOut, tags=["lists"])
def get_import(
    import_id: Id, session: SessionDep, principal: Reader, locale: Locale
) -> ImportStatusOut:
    """Status, progress and figures of an import; the rejected rows once it is done."""
    record = service.get_import(session, principal.account_id, import_id)
    return _import_out(record, locale)


# -- cleaning ------------------------------------------------------------------------------


def _cleaning_out(run: CleaningRun) -> CleaningOut:
    assert run.id is not None
    return CleaningOut(
        id=run.id,
        status=run.status,
        list_id=run.list_id,
        segment_id=run.segment_id,
        total=run.total,
        done=run.done,
        report=run.counts,
        error=run.error,
    )


@router.post(
    "/cleanings",
    response_model=CleaningOut,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["cleaning"],
)
def post_cleaning(body: CleaningIn, session: SessionDep, principal: Editor) -> CleaningOut:
    """Clean a list or segment (MX, null MX, disposable, role, typos) in the background."""
    run = clean.start_cleaning(
        session,
        principal.account_id,
        list_id=body.list_id,
        segment_id=body.segment_id,
        actor=principal.actor,
    )
    audit(session, principal, "cleaning.start", f"cleaning:{run.id}")
    session.commit()
    assert run.id is not None
    enqueue(audience_tasks.run_cleaning, run.id)
    return _cleaning_out(run)


@router.get("/cleanings/{run_id}", response_model=CleaningOut, tags=["cleaning"])
def get_cleaning(run_id: Id, session: SessionDep, principal: Reader) -> CleaningOut:
    """Progress, then the report: counts by verdict and reason, top domains, typo fixes."""
    return _cleaning_out(clean.get_run(session, principal.account_id, run_id))


@router.post("/cleanings/fixes", response_model=FixOut, tags=["cleaning"])
def accept_fixes(body: FixIn, request: Request, session: SessionDep, principal: Editor) -> FixOut:
    """Accept suggested typo fixes in bulk (every address at the wrong domain is corrected)."""
    checker = clean.get_checker(request.app.state.settings)
    result = clean.accept_suggestions(session, principal.account_id, body.fixes, checker)
    audit(
        session,
        principal,
        "cleaning.fix",
        "contacts",
        fixes=body.fixes,
        fixed=result["fixed"],
        merged=result["merged"],
    )
    session.commit()
    return FixOut(**result)


@router.post("/verify", response_model=list[VerdictOut], tags=["cleaning"])
def verify_addresses(body: VerifyIn, request: Request, principal: Reader) -> list[VerdictOut]:
    """Judge up to 100 addresses now (syntax, DNS, disposable, role, typo); nothing stored."""
    checker = clean.get_checker(request.app.state.settings)
    return [
        VerdictOut(
            address=v.address,
            verdict=v.verdict.value,
            reasons=[r.value for r in v.reasons],
            suggestion=v.suggestion,
        )
        for v in clean_addresses(body.addresses, checker)
    ]
