"""Request and response bodies of the API (with examples for the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from mailer.api.deps import MAX_ID

# An id in a request body: beyond 32 bits it can only be refused (found by fuzzing: the
# databases raise on such integers instead of finding nothing).
RecordId = Annotated[int, Field(ge=1, le=MAX_ID)]


class ListIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"name": "Proveedores 2026"}})
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=1000)


class ListOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "name": "Proveedores 2026",
                    "description": "Registro de proveedores",
                    "members": 1520,
                }
            ]
        }
    )
    id: int
    name: str
    description: str
    members: int


class ContactOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "email": "ana.quispe@proveedor.pe",
                    "first_name": "Ana",
                    "last_name": "Quispe",
                    "company": "Proveedor S.A.C.",
                    "email_status": "active",
                    "attributes": {"ciudad": "Lima", "monto": 1500},
                }
            ]
        }
    )
    id: int
    email: str
    first_name: str
    last_name: str
    company: str
    email_status: str
    attributes: dict[str, object]


class RowErrorOut(BaseModel):
    line: int
    column: str
    value: str
    reason: str


class ImportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "import_id": 12,
                    "rows": 3,
                    "created": 2,
                    "updated": 0,
                    "unchanged": 0,
                    "duplicates_in_file": 0,
                    "added_to_list": 2,
                    "encoding": "utf-8",
                    "delimiter": ",",
                    "mapping": {"email": "email", "nombre": "first_name"},
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
    import_id: int | None
    rows: int
    created: int
    updated: int
    unchanged: int
    duplicates_in_file: int
    added_to_list: int
    encoding: str
    delimiter: str
    mapping: dict[str, str]
    errors: list[RowErrorOut]


class TemplateIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "Comunicado",
                "subject": "Comunicado para {{ contact.company }}",
                "html": "<p>Estimado(a) {{ contact.first_name | default('proveedor') }}</p>",
            }
        }
    )
    name: str = Field(min_length=1, max_length=200)
    subject: str = Field(min_length=1, max_length=998)
    html: str = Field(min_length=1)
    text: str | None = None
    description: str = ""


class TemplateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 4,
                    "name": "Comunicado",
                    "description": "",
                    "subject": "Comunicado para {{ contact.company }}",
                    "html": "<p>Estimado(a) {{ contact.first_name | default('proveedor') }}</p>",
                    "text": None,
                    "version": 2,
                    "updated_at": "2026-11-20T15:04:05Z",
                }
            ]
        }
    )
    id: int
    name: str
    description: str
    subject: str
    html: str
    text: str | None
    version: int
    updated_at: datetime


class TemplateVersionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 1,
                    "name": "Comunicado",
                    "subject": "Comunicado para {{ contact.company }}",
                    "saved_by": "user:admin@entidad.gob.pe",
                    "note": "",
                    "saved_at": "2026-11-19T10:00:00Z",
                }
            ]
        }
    )
    version: int
    name: str
    subject: str
    saved_by: str
    note: str
    saved_at: datetime


class FindingOut(BaseModel):
    severity: str
    code: str
    message: str


class CheckOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "findings": [
                        {
                            "severity": "warning",
                            "code": "unknown_variable",
                            "message": "unknown variable contact.cargo",
                        }
                    ]
                }
            ]
        }
    )
    findings: list[FindingOut]


class LibraryItemOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "bienvenida",
                    "name": "Bienvenida",
                    "description": "Mensaje de bienvenida con guía de uso",
                    "subject": "Bienvenido(a) a {{ account.name }}",
                }
            ]
        }
    )
    key: str
    name: str
    description: str
    subject: str


class TestIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "addresses": ["revisor@entidad.gob.pe"],
                "from_email": "boletin@entidad.gob.pe",
                "from_name": "Entidad",
            }
        }
    )
    addresses: list[str] = Field(min_length=1, max_length=10)
    from_email: str
    from_name: str = "Prueba"
    contact_email: str | None = None


class TestResultOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "address": "revisor@entidad.gob.pe",
                    "state": "sent",
                    "reply": "250 2.0.0 Ok: queued as 4F2A1",
                }
            ]
        }
    )
    address: str
    state: str
    reply: str


class CampaignIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "Convocatoria noviembre",
                "template_id": 1,
                "list_id": 1,
                "from_email": "boletin@entidad.gob.pe",
                "from_name": "Entidad",
            }
        }
    )
    name: str = Field(min_length=1, max_length=200)
    template_id: RecordId
    list_id: RecordId
    from_email: str
    from_name: str = Field(min_length=1, max_length=200)
    subject: str | None = None
    reply_to: str | None = None


class ScheduleIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"scheduled_at": "2026-11-30T09:00:00-05:00"}]}
    )
    scheduled_at: datetime


class CampaignOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "name": "Convocatoria noviembre",
                    "state": "draft",
                    "state_reason": "",
                    "parent_id": None,
                    "channel": "email",
                    "template_id": 4,
                    "list_id": 1,
                    "segment_id": None,
                    "from_email": "boletin@entidad.gob.pe",
                    "from_name": "Entidad",
                    "subject": None,
                    "scheduled_at": None,
                    "started_at": None,
                    "completed_at": None,
                    "counts": {
                        "total": 0,
                        "queued": 0,
                        "sent": 0,
                        "failed": 0,
                    },
                }
            ]
        }
    )
    id: int
    name: str
    state: str
    state_reason: str = Field("", description="Why it paused or failed on its own.")
    parent_id: int | None = Field(None, description="Set on a resend to failed recipients.")
    channel: str = Field("email", description="email or sms.")
    template_id: int | None = Field(None, description="An e-mail campaign's template.")
    list_id: int | None
    segment_id: int | None = None
    from_email: str
    from_name: str
    subject: str | None
    scheduled_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    counts: dict[str, int]


class ProgressOut(BaseModel):
    """A sending campaign's live progress."""

    state: str
    state_reason: str
    total: int
    sent: int
    pending: int = Field(description="Queued, being sent or deferred.")
    deferred: int
    failed: int
    bounced: int
    cancelled: int
    rate_per_second: float = Field(description="Messages sent in the last minute, per second.")
    rate_per_hour: int
    eta_seconds: int | None = Field(description="Estimated time left at the current rate.")

    model_config = {
        "json_schema_extra": {
            "example": {
                "state": "sending",
                "state_reason": "",
                "total": 48000,
                "sent": 30500,
                "pending": 17300,
                "deferred": 120,
                "failed": 180,
                "bounced": 0,
                "cancelled": 20,
                "rate_per_second": 412.5,
                "rate_per_hour": 1485000,
                "eta_seconds": 42,
            }
        }
    }


class MeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": 1,
                    "account_name": "Entidad",
                    "role": "manager",
                    "actor": "apikey:3 (ERP de compras)",
                }
            ]
        }
    )
    account_id: int
    account_name: str
    role: str
    actor: str


class BouncedOut(BaseModel):
    total: int
    hard: int
    soft: int


class OpenedOut(BaseModel):
    unique: int = Field(description="Messages opened (a human click counts as an open).")
    total: int = Field(description="Open hits, machines included.")
    human_unique: int = Field(description="Messages opened or clicked by a person.")
    human_total: int


class LinkStatsOut(BaseModel):
    index: int
    url: str
    total: int
    human_total: int
    unique: int
    human_unique: int


class ClickedOut(BaseModel):
    unique: int
    total: int
    human_unique: int
    human_total: int
    links: list[LinkStatsOut]


class MachineOut(BaseModel):
    messages: int = Field(description="Messages with an open or click by a machine.")
    scanned: int = Field(description="Messages whose hidden link a scanner followed.")


class RatesOut(BaseModel):
    """Percentages with one decimal: bounce over sent, the others over delivered,
    click-to-open as human clicks over human opens."""

    basis: str
    delivery: float
    bounce: float
    open: float
    open_human: float
    click: float
    click_human: float
    click_to_open: float
    unsubscribe: float
    complaint: float


class CampaignStatsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": 7,
                    "recipients": 1000,
                    "queued": 0,
                    "sent": 990,
                    "delivered": 975,
                    "deferred": 0,
                    "failed": 10,
                    "cancelled": 0,
                    "bounced": {"total": 15, "hard": 12, "soft": 3},
                    "opened": {
                        "unique": 420,
                        "total": 610,
                        "human_unique": 380,
                        "human_total": 520,
                    },
                    "clicked": {
                        "unique": 95,
                        "total": 130,
                        "human_unique": 90,
                        "human_total": 120,
                        "links": [
                            {
                                "index": 0,
                                "url": "https://www.example.gob.pe/convocatoria",
                                "total": 130,
                                "human_total": 120,
                                "unique": 95,
                                "human_unique": 90,
                            }
                        ],
                    },
                    "machine": {"messages": 40, "scanned": 12},
                    "unsubscribed": 3,
                    "complained": 0,
                    "rates": {
                        "basis": "delivered",
                        "delivery": 98.5,
                        "bounce": 1.5,
                        "open": 43.1,
                        "open_human": 39.0,
                        "click": 9.7,
                        "click_human": 9.2,
                        "click_to_open": 23.7,
                        "unsubscribe": 0.3,
                        "complaint": 0.0,
                    },
                }
            ]
        }
    )
    campaign_id: int
    recipients: int
    queued: int
    sent: int = Field(description="Accepted by the relay (later bounces included).")
    delivered: int = Field(description="Sent minus bounced.")
    deferred: int
    failed: int
    cancelled: int
    bounced: BouncedOut
    opened: OpenedOut
    clicked: ClickedOut
    machine: MachineOut
    unsubscribed: int
    complained: int
    rates: RatesOut
