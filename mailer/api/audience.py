"""The ``/api/v1`` routes of the audience: contacts, consent, attributes, segments,
suppression, imports and cleaning."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from mailer.accounts.service import audit
from mailer.api.deps import (
    MAX_ID,
    Editor,
    Id,
    Limit,
    Locale,
    Offset,
    Reader,
    Sender,
    SessionDep,
)
from mailer.api.schemas import RecordId, RowErrorOut
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "granted": True,
                    "source": "formulario web",
                    "ip": "190.12.34.56",
                    "text": "Acepto recibir comunicaciones de la Entidad.",
                }
            ]
        }
    )
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
    list_id: RecordId | None = None
    consent: ConsentIn | None = None


class ContactPatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "company": "Proveedor S.A.C.",
                    "position": "Gerente general",
                    "attributes": {"ciudad": "Arequipa"},
                }
            ]
        }
    )
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    phone: str | None = Field(None, max_length=32)
    company: str | None = Field(None, max_length=300)
    position: str | None = Field(None, max_length=200)
    document: str | None = Field(None, max_length=32)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ContactDetailOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "email": "ana.quispe@proveedor.pe",
                    "first_name": "Ana",
                    "last_name": "Quispe",
                    "phone": "+51987654321",
                    "phone_kind": "mobile",
                    "company": "Proveedor S.A.C.",
                    "position": "Gerente",
                    "document": "20123456789",
                    "attributes": {"ciudad": "Lima", "monto": 1500},
                    "email_status": "active",
                    "sms_status": "active",
                    "email_verdict": "valid",
                    "email_reasons": "",
                    "email_suggestion": "",
                    "cleaned_at": None,
                    "created_at": "2026-11-02T14:30:00Z",
                }
            ]
        }
    )
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 1,
                    "contacts": [
                        {
                            "id": 42,
                            "email": "ana.quispe@proveedor.pe",
                            "first_name": "Ana",
                            "last_name": "Quispe",
                            "phone": "+51987654321",
                            "phone_kind": "mobile",
                            "company": "Proveedor S.A.C.",
                            "position": "Gerente",
                            "document": "20123456789",
                            "attributes": {"ciudad": "Lima"},
                            "email_status": "active",
                            "sms_status": "active",
                            "email_verdict": "valid",
                            "email_reasons": "",
                            "email_suggestion": "",
                            "cleaned_at": None,
                            "created_at": "2026-11-02T14:30:00Z",
                        }
                    ],
                }
            ]
        }
    )
    total: int
    contacts: list[ContactDetailOut]


class AttributeIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"type": "number", "label": "Monto adjudicado"}]}
    )
    type: Literal["text", "number", "date", "boolean"] = "text"
    label: str = Field("", max_length=200)


class AttributeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "monto", "type": "number", "label": "Monto adjudicado"}]
        }
    )
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Proveedores de Lima",
                    "rules": {
                        "match": "all",
                        "conditions": [{"field": "attr:ciudad", "op": "eq", "value": "Lima"}],
                    },
                }
            ]
        }
    )
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=1000)
    rules: dict[str, Any] | None = None


class RulesIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "rules": {
                        "match": "any",
                        "conditions": [
                            {"field": "attr:ciudad", "op": "eq", "value": "Lima"},
                            {"field": "attr:ciudad", "op": "eq", "value": "Callao"},
                        ],
                    },
                    "channel": "email",
                }
            ]
        }
    )
    rules: dict[str, Any]
    channel: Channel = "email"


class CountOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"matching": 1520, "sendable": 1488}]}
    )
    matching: int
    sendable: int


class SegmentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 3,
                    "name": "Proveedores de Lima activos",
                    "description": "",
                    "rules": {
                        "match": "all",
                        "conditions": [{"field": "attr:ciudad", "op": "eq", "value": "Lima"}],
                    },
                    "summary": "ciudad es Lima",
                    "matching": 1520,
                    "sendable": 1488,
                }
            ]
        }
    )
    id: int
    name: str
    description: str
    rules: dict[str, Any]
    summary: str
    matching: int
    sendable: int


class SuppressionIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "email",
                    "values": ["no-enviar@empresa.pe", "baja@proveedor.pe"],
                    "reason": "manual",
                    "source": "pedido por correo",
                }
            ]
        }
    )
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 1,
                    "entries": [
                        {
                            "channel": "email",
                            "value": "baja@proveedor.pe",
                            "reason": "unsubscribed",
                            "source": "link",
                            "created_at": "2026-11-05T08:12:00Z",
                        }
                    ],
                }
            ]
        }
    )
    total: int
    entries: list[SuppressionOut]


class AddedOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"added": 2}]})
    added: int


class ImportStatusOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "status": "done",
                    "progress": 1.0,
                    "filename": "proveedores.csv",
                    "format": "csv",
                    "list_id": 1,
                    "rows": 3,
                    "created": 2,
                    "updated": 0,
                    "unchanged": 0,
                    "duplicates_in_file": 0,
                    "suppressed": 0,
                    "skipped": 1,
                    "added_to_list": 2,
                    "mapping": {"email": "email", "nombre": "first_name"},
                    "error": "",
                    "errors": [
                        {
                            "line": 4,
                            "column": "email",
                            "value": "ana@",
                            "reason": "not a valid e-mail address",
                        }
                    ],
                }
            ]
        }
    )
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
    model_config = ConfigDict(json_schema_extra={"examples": [{"list_id": 1}]})
    list_id: RecordId | None = None
    segment_id: RecordId | None = None


class CleaningOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 5,
                    "status": "running",
                    "list_id": 1,
                    "segment_id": None,
                    "total": 1520,
                    "done": 600,
                    "report": {},
                    "error": "",
                }
            ]
        }
    )
    id: int
    status: str
    list_id: int | None
    segment_id: int | None
    total: int
    done: int
    report: dict[str, Any]
    error: str


class FixIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"fixes": [["gmial.com", "gmail.com"], ["hotmial.com", "hotmail.com"]]}]
        }
    )
    fixes: list[tuple[str, str]] = Field(
        min_length=1,
        description='Pairs of [wrong domain, right domain], e.g. ["gmial.com", "gmail.com"].',
    )


class FixOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"fixed": 14, "merged": 1}]})
    fixed: int
    merged: int


class VerifyIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"addresses": ["ana.quispe@proveedor.pe", "juan@gmial.com"]}]
        }
    )
    addresses: list[str] = Field(min_length=1, max_length=100)


class VerdictOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "address": "juan@gmial.com",
                    "verdict": "risky",
                    "reasons": ["typo"],
                    "suggestion": "juan@gmail.com",
                }
            ]
        }
    )
    address: str
    verdict: str
    reasons: list[str]
    suggestion: str | None


EXPORT_EXAMPLE = {
    "contact": {"id": 42, "email": "ana.quispe@proveedor.pe", "first_name": "Ana"},
    "lists": ["Proveedores 2026"],
    "consents": [{"channel": "email", "granted": True, "source": "formulario web"}],
    "messages": [
        {
            "id": 5012,
            "campaign_id": 7,
            "channel": "email",
            "to": "ana.quispe@proveedor.pe",
            "state": "sent",
            "queued_at": "2026-11-20T15:04:05+00:00",
            "sent_at": "2026-11-20T15:04:07+00:00",
        }
    ],
    "events": [{"kind": "opened", "occurred_at": "2026-11-20T15:30:00+00:00", "data": {}}],
    "suppressed": False,
    "exported_at": "2026-11-21T09:00:00+00:00",
}
IMPORT_EXAMPLE = {"file": "proveedores.csv", "mode": "add_or_update", "mapping": ""}


def _contact_out(contact: Contact) -> ContactDetailOut:
    return ContactDetailOut.model_validate(contact, from_attributes=True)


# -- contacts ------------------------------------------------------------------------------


@router.get(
    "/contacts", response_model=ContactPageOut, tags=["contacts"], summary="Search the contacts"
)
def get_contacts(
    session: SessionDep,
    principal: Reader,
    q: str = Query("", max_length=200, description="Text in the address, name, company, RUC."),
    list_id: int | None = Query(None, ge=1, le=MAX_ID),
    segment_id: int | None = Query(None, ge=1, le=MAX_ID),
    offset: Offset = 0,
    limit: Limit = 100,
) -> ContactPageOut:
    """Contacts matching ``q`` (address, name, company, RUC), optionally in a list or a
    segment, with the total."""
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
    summary="Create or update a contact",
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


@router.get(
    "/contacts/{contact_id}",
    response_model=ContactDetailOut,
    tags=["contacts"],
    summary="One contact",
)
def get_contact(contact_id: Id, session: SessionDep, principal: Reader) -> ContactDetailOut:
    """The contact with its attributes, channel statuses and cleaning verdict."""
    return _contact_out(service.get_contact(session, principal.account_id, contact_id))


@router.patch(
    "/contacts/{contact_id}",
    response_model=ContactDetailOut,
    tags=["contacts"],
    summary="Change a contact",
)
def patch_contact(
    contact_id: Id, body: ContactPatch, session: SessionDep, principal: Editor
) -> ContactDetailOut:
    """Change the fields given; ``attributes`` are merged into the existing ones."""
    fields = {k: v for k, v in body.model_dump(exclude={"attributes"}).items() if v is not None}
    contact = service.update_contact(
        session, principal.account_id, contact_id, attributes=body.attributes, **fields
    )
    audit(session, principal, "contact.update", f"contact:{contact_id}", fields=sorted(fields))
    session.commit()
    return _contact_out(contact)


@router.post(
    "/contacts/{contact_id}/consents",
    response_model=ContactDetailOut,
    tags=["contacts"],
    summary="Record consent (or its withdrawal)",
)
def post_consent(
    contact_id: Id, body: ConsentIn, session: SessionDep, principal: Editor
) -> ContactDetailOut:
    """Record a consent given or withdrawn; a withdrawal unsubscribes the channel at once."""
    contact = service.get_contact(session, principal.account_id, contact_id)
    service.record_consent(session, contact, **body.model_dump())
    audit(session, principal, "contact.consent", f"contact:{contact_id}", **body.model_dump())
    session.commit()
    return _contact_out(contact)


@router.get(
    "/contacts/{contact_id}/export",
    tags=["contacts"],
    summary="Export everything about a contact",
    responses={200: {"content": {"application/json": {"example": EXPORT_EXAMPLE}}}},
)
def export_contact(contact_id: Id, session: SessionDep, principal: Sender) -> dict[str, Any]:
    """Everything kept about the person (access request, Ley 29733)."""
    data = service.export_contact(session, principal.account_id, contact_id)
    audit(session, principal, "contact.export", f"contact:{contact_id}")
    session.commit()
    return data


@router.delete(
    "/contacts/{contact_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["contacts"],
    summary="Erase a contact",
)
def erase_contact(contact_id: Id, session: SessionDep, principal: Sender) -> None:
    """Erase the person's data (deletion request); a hashed suppression entry remains so
    the address is never mailed again."""
    digest = service.erase_contact(
        session, principal.account_id, contact_id, source=f"api:{principal.actor}"
    )
    audit(session, principal, "contact.erase", f"contact:{contact_id}", address_hash=digest[:16])
    session.commit()


# -- attributes ----------------------------------------------------------------------------


@router.get(
    "/attributes", response_model=list[AttributeOut], tags=["contacts"], summary="Custom attributes"
)
def get_attributes(session: SessionDep, principal: Reader) -> list[AttributeOut]:
    """The custom attributes defined for the account's contacts."""
    return [
        AttributeOut(name=a.name, type=a.type, label=a.label)
        for a in service.list_attributes(session, principal.account_id)
    ]


@router.put(
    "/attributes/{name}",
    response_model=AttributeOut,
    tags=["contacts"],
    summary="Define a custom attribute",
)
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


@router.get(
    "/segments", response_model=list[SegmentOut], tags=["segments"], summary="List the segments"
)
def get_segments(session: SessionDep, principal: Reader) -> list[SegmentOut]:
    """The account's segments with their current counts."""
    return [_segment_out(session, s) for s in service.list_segments(session, principal.account_id)]


@router.post(
    "/segments",
    response_model=SegmentOut,
    status_code=status.HTTP_201_CREATED,
    tags=["segments"],
    summary="Create a segment",
)
def post_segment(body: SegmentIn, session: SessionDep, principal: Editor) -> SegmentOut:
    """Save rules that select contacts (see the example for their shape)."""
    segment = service.create_segment(
        session, principal.account_id, body.name, body.rules, body.description
    )
    audit(session, principal, "segment.create", f"segment:{segment.id}", name=segment.name)
    session.commit()
    return _segment_out(session, segment)


@router.post(
    "/segments/count",
    response_model=CountOut,
    tags=["segments"],
    summary="Count the contacts that rules select",
)
def count_rules(body: RulesIn, session: SessionDep, principal: Reader) -> CountOut:
    """Live count of rules before they are saved: contacts matching, and how many of them
    can receive the channel now."""
    return CountOut(
        **service.count_matching(session, principal.account_id, body.rules, body.channel)
    )


@router.get(
    "/segments/{segment_id}", response_model=SegmentOut, tags=["segments"], summary="One segment"
)
def get_segment(segment_id: Id, session: SessionDep, principal: Reader) -> SegmentOut:
    """The segment with its rules, a readable summary and its counts."""
    return _segment_out(session, service.get_segment(session, principal.account_id, segment_id))


@router.patch(
    "/segments/{segment_id}",
    response_model=SegmentOut,
    tags=["segments"],
    summary="Change a segment",
)
def patch_segment(
    segment_id: Id, body: SegmentPatch, session: SessionDep, principal: Editor
) -> SegmentOut:
    """Change the name, description or rules given."""
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


@router.delete(
    "/segments/{segment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["segments"],
    summary="Delete a segment",
)
def delete_segment(segment_id: Id, session: SessionDep, principal: Editor) -> None:
    """Delete the segment (its contacts stay)."""
    service.delete_segment(session, principal.account_id, segment_id)
    audit(session, principal, "segment.delete", f"segment:{segment_id}")
    session.commit()


# -- suppression ---------------------------------------------------------------------------


@router.get(
    "/suppressions",
    response_model=SuppressionPageOut,
    tags=["suppression"],
    summary="The suppression list",
)
def get_suppressions(
    session: SessionDep,
    principal: Reader,
    channel: Channel | None = None,
    q: str = Query("", max_length=320),
    offset: Offset = 0,
    limit: Limit = 100,
) -> SuppressionPageOut:
    """Entries of the suppression list, optionally by channel and text, with the total."""
    entries = list_suppressions(
        session, principal.account_id, channel=channel, search=q, offset=offset, limit=limit
    )
    return SuppressionPageOut(
        total=count_suppressions(session, principal.account_id, channel),
        entries=[SuppressionOut.model_validate(e, from_attributes=True) for e in entries],
    )


@router.post(
    "/suppressions",
    response_model=AddedOut,
    tags=["suppression"],
    summary="Add to the suppression list",
)
def post_suppressions(body: SuppressionIn, session: SessionDep, principal: Editor) -> AddedOut:
    """Add addresses or phones that must never be messaged (existing entries are kept)."""
    added = suppress(
        session, principal.account_id, body.channel, body.values, body.reason, body.source
    )
    audit(session, principal, "suppression.add", body.channel, count=added)
    session.commit()
    return AddedOut(added=added)


@router.delete(
    "/suppressions/{channel}/{value}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["suppression"],
    summary="Take an entry off the suppression list",
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
    openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"example": IMPORT_EXAMPLE}}}
    },
    summary="Import a file into a list (in the background)",
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


@router.get(
    "/imports/{import_id}",
    response_model=ImportStatusOut,
    tags=["lists"],
    summary="An import's status",
)
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
    summary="Clean a list or segment",
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


@router.get(
    "/cleanings/{run_id}",
    response_model=CleaningOut,
    tags=["cleaning"],
    summary="A cleaning's progress and report",
)
def get_cleaning(run_id: Id, session: SessionDep, principal: Reader) -> CleaningOut:
    """Progress, then the report: counts by verdict and reason, top domains, typo fixes."""
    return _cleaning_out(clean.get_run(session, principal.account_id, run_id))


@router.post(
    "/cleanings/fixes", response_model=FixOut, tags=["cleaning"], summary="Accept typo fixes"
)
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


@router.post(
    "/verify", response_model=list[VerdictOut], tags=["cleaning"], summary="Verify addresses now"
)
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
