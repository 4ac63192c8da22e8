"""Request and response bodies of the API (with examples for the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ListIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"name": "Proveedores 2026"}})
    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=1000)


class ListOut(BaseModel):
    id: int
    name: str
    description: str
    members: int


class ContactOut(BaseModel):
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
    id: int
    name: str
    description: str
    subject: str
    html: str
    text: str | None
    version: int
    updated_at: datetime


class TemplateVersionOut(BaseModel):
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
    findings: list[FindingOut]


class LibraryItemOut(BaseModel):
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
    template_id: int
    list_id: int
    from_email: str
    from_name: str = Field(min_length=1, max_length=200)
    subject: str | None = None
    reply_to: str | None = None


class ScheduleIn(BaseModel):
    scheduled_at: datetime


class CampaignOut(BaseModel):
    id: int
    name: str
    state: str
    state_reason: str = Field("", description="Why it paused or failed on its own.")
    parent_id: int | None = Field(None, description="Set on a resend to failed recipients.")
    template_id: int
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
