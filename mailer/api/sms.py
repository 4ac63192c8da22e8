"""The SMS routes of ``/api/v1``: send (to numbers, a list or a segment), look up, count
parts, replies, SMS campaign figures, and the allowance balances."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mailer.accounts import credits
from mailer.accounts.service import audit
from mailer.api.deps import MAX_ID, Id, Limit, Reader, SessionDep, SmsSender
from mailer.campaigns import service as campaigns
from mailer.campaigns import sms
from mailer.core.config import get_settings
from mailer.core.errors import NotFound, ValidationFailed
from mailer.core.tokens import BadToken, sign, unsign
from mailer.sms.encoding import analyse, to_gsm
from mailer.sms.http import HttpGateway
from mailer.storage.db import session_scope

router = APIRouter(prefix="/api/v1", tags=["sms"])


class SmsIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": ["987654321", "+51 912 345 678"],
                    "text": "Hola {{ contact.first_name | default('proveedor') }}, su orden "
                    "{{ orden }} vence el {{ fecha }}. Detalle: https://www.example.gob.pe/o",
                    "variables": {"orden": "OC-2026-118", "fecha": "30/11"},
                },
                {"list_id": 3, "name": "Aviso de cierre", "text": "Cierre el 30/11."},
            ]
        }
    )
    to: list[str] | str | None = Field(
        None, description="Phone numbers (E.164 or national, region PE by default)."
    )
    list_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Send to a list (an SMS campaign)."
    )
    segment_id: int | None = Field(None, ge=1, le=MAX_ID, description="Send to a segment.")
    name: str = Field("", max_length=200, description="The campaign's name (list/segment).")
    text: str = Field(min_length=1, max_length=2000, description="Sandboxed Jinja template.")
    sender: str | None = Field(None, max_length=16, description="Sender id or short code.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    scheduled_at: datetime | None = Field(None, description="When to send (with time zone).")


class QueuedSmsOut(BaseModel):
    id: int
    to: str
    parts: int
    state: str


class RejectedOut(BaseModel):
    index: int
    value: str
    reason: str


class SmsAcceptedOut(BaseModel):
    """What was queued (the work goes on in the background) and what was not."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages": [{"id": 901, "to": "+51987654321", "parts": 1, "state": "queued"}],
                    "rejected": [
                        {"index": 1, "value": "01 4261234", "reason": "not a mobile number"}
                    ],
                    "campaign_id": None,
                    "parts": 1,
                }
            ]
        }
    )

    messages: list[QueuedSmsOut]
    rejected: list[RejectedOut]
    campaign_id: int | None = None
    parts: int = Field(description="Parts reserved on the allowance.")


class SmsPartOut(BaseModel):
    part: int
    provider_id: str
    state: str
    error: str


class SmsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 901,
                    "to": "+51987654321",
                    "state": "delivered",
                    "parts": 1,
                    "text": "Su orden OC-2026-118 vence el 30/11.",
                    "sender": "ENTIDAD",
                    "campaign_id": None,
                    "origin": "apikey:3 (ERP de compras)",
                    "gateway": "smpp-principal",
                    "error": "",
                    "queued_at": "2026-11-20T15:04:05Z",
                    "sent_at": "2026-11-20T15:04:06Z",
                    "final_at": "2026-11-20T15:04:09Z",
                    "part_states": [
                        {"part": 1, "provider_id": "5f1c2a", "state": "delivered", "error": ""}
                    ],
                }
            ]
        }
    )
    id: int
    to: str
    state: str = Field(description="queued, submitted, delivered, undelivered, failed, ...")
    parts: int
    text: str
    sender: str
    campaign_id: int | None
    origin: str
    gateway: str
    error: str
    queued_at: datetime
    sent_at: datetime | None
    final_at: datetime | None
    part_states: list[SmsPartOut]


class CountIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"text": "Canción: ¿Qué tal?"}})
    text: str = Field(max_length=5000)


class CountOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoding": "UCS-2",
                    "characters": 18,
                    "units": 18,
                    "parts": 1,
                    "per_part": 70,
                    "remaining": 52,
                    "ucs2_chars": ["ó"],
                    "normalised": "Cancion: ¿Que tal?",
                    "normalised_parts": 1,
                }
            ]
        }
    )
    encoding: str
    characters: int
    units: int
    parts: int
    per_part: int
    remaining: int
    ucs2_chars: list[str]
    normalised: str = Field(description="The text with the characters that force UCS-2 replaced.")
    normalised_parts: int


class ReplyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 31,
                    "sender": "+51987654321",
                    "text": "BAJA",
                    "keyword": "BAJA",
                    "action": "unsubscribed",
                    "campaign_id": 9,
                    "contact_id": 42,
                    "received_at": "2026-11-20T16:00:00Z",
                }
            ]
        }
    )
    id: int
    sender: str
    text: str
    keyword: str
    action: str
    campaign_id: int | None
    contact_id: int | None
    received_at: datetime


class BalanceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channel": "sms",
                    "available": 79200,
                    "held": 300,
                    "valid_until": "2027-11-20T00:00:00Z",
                }
            ]
        }
    )
    channel: str
    available: int
    held: int
    valid_until: datetime | None


SMS_STATS_EXAMPLE = {
    "recipients": 1000,
    "queued": 0,
    "submitted": 990,
    "pending": 12,
    "delivered": 960,
    "undelivered": 15,
    "expired": 3,
    "failed": 10,
    "cancelled": 0,
    "not_delivered": 28,
    "parts_charged": 960,
    "clicks": 140,
    "unique_clicks": 120,
    "replies": 9,
    "keyword_replies": 4,
    "delivery_rate": 0.96,
}


@router.post(
    "/sms",
    response_model=SmsAcceptedOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send SMS",
)
def post_sms(body: SmsIn, session: SessionDep, principal: SmsSender) -> SmsAcceptedOut:
    """Queue SMS to numbers (one per number), or start an SMS campaign to a list or a
    segment.  Answers 202 at once with the ids; delivery states come by webhook and by
    ``GET /api/v1/sms/{id}``.  Parts are reserved now and charged only when delivered."""
    settings = get_settings()
    targets = [body.to] if isinstance(body.to, str) else list(body.to or [])
    if bool(targets) == bool(body.list_id or body.segment_id):
        raise ValidationFailed("give either 'to' (numbers) or a list_id/segment_id", field="to")
    if not targets:
        campaign = sms.create_sms_campaign(
            session,
            principal.account_id,
            name=body.name or "SMS por API",
            text=body.text,
            sender=body.sender,
            list_id=body.list_id,
            segment_id=body.segment_id,
            created_by=principal.actor,
            settings=settings,
        )
        assert campaign.id is not None
        audit(session, principal, "sms.campaign", f"campaign:{campaign.id}")
        if body.scheduled_at is not None:
            campaigns.schedule_campaign(
                session, principal.account_id, campaign.id, body.scheduled_at
            )
            session.commit()
        else:
            session.commit()
            campaign = campaigns.send_now(principal.account_id, campaign.id, actor=principal.actor)
        return SmsAcceptedOut(messages=[], rejected=[], campaign_id=campaign.id, parts=0)
    queued = sms.queue_sms(
        session,
        principal.account_id,
        targets,
        body.text,
        sender=body.sender,
        variables=body.variables,
        origin=principal.actor,
        scheduled_at=body.scheduled_at,
        settings=settings,
    )
    audit(session, principal, "sms.send", f"sms:{len(queued.messages)}")
    session.commit()
    ids = [m.id for m in queued.messages if m.id is not None]
    if body.scheduled_at is None:
        sms.enqueue_sms(ids, settings=settings)
    return SmsAcceptedOut(
        messages=[
            QueuedSmsOut(
                id=m.id or 0, to=m.to_address, parts=m.parts, state=sms.display_state(m.state)
            )
            for m in queued.messages
        ],
        rejected=[
            RejectedOut(index=r.index, value=r.value, reason=r.reason) for r in queued.rejected
        ],
        parts=sum(m.parts for m in queued.messages),
    )


@router.get("/sms/replies", response_model=list[ReplyOut], summary="Replies received")
def get_replies(
    session: SessionDep,
    principal: Reader,
    campaign_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = 100,
) -> list[ReplyOut]:
    """Messages people sent back (newest first), with the keyword recognised, if any."""
    return [
        ReplyOut(
            id=r.id or 0,
            sender=r.sender,
            text=r.text,
            keyword=r.keyword,
            action=r.action,
            campaign_id=r.campaign_id,
            contact_id=r.contact_id,
            received_at=r.received_at,
        )
        for r in sms.replies_of(session, principal.account_id, campaign_id=campaign_id, limit=limit)
    ]


@router.get("/sms/{message_id}", response_model=SmsOut, summary="One SMS and its parts")
def get_sms(message_id: Id, session: SessionDep, principal: Reader) -> SmsOut:
    """One SMS with its state and the state of each part, from the delivery receipts."""
    row, parts = sms.get_sms(session, principal.account_id, message_id)
    payload = row.payload or {}
    return SmsOut(
        id=row.id or 0,
        to=row.to_address,
        state=sms.display_state(row.state),
        parts=row.parts,
        text=str(payload.get("text", "")),
        sender=str(payload.get("sender", "")),
        campaign_id=row.campaign_id,
        origin=row.origin,
        gateway=row.relay,
        error=row.reply_text,
        queued_at=row.queued_at,
        sent_at=row.sent_at,
        final_at=row.final_at,
        part_states=[
            SmsPartOut(part=p.part, provider_id=p.provider_id, state=p.state, error=p.error)
            for p in parts
        ],
    )


@router.post("/sms/count", response_model=CountOut, summary="Count the parts of a text")
def count_sms(body: CountIn, principal: Reader) -> CountOut:
    """Encoding (GSM-7 or UCS-2), characters, parts and what is left in the last part; and
    the same text with the characters that force UCS-2 replaced (á -> a), and its parts."""
    info = analyse(body.text)
    normalised = to_gsm(body.text)
    return CountOut(
        encoding=info.encoding,
        characters=info.characters,
        units=info.units,
        parts=info.parts,
        per_part=info.per_part,
        remaining=info.remaining,
        ucs2_chars=list(info.ucs2_chars),
        normalised=normalised,
        normalised_parts=analyse(normalised).parts,
    )


@router.get(
    "/sms/campaigns/{campaign_id}/stats",
    response_model=dict[str, float | int],
    summary="An SMS campaign's figures",
    responses={200: {"content": {"application/json": {"example": SMS_STATS_EXAMPLE}}}},
)
def sms_stats(campaign_id: Id, session: SessionDep, principal: Reader) -> dict[str, Any]:
    """Delivered, pending (submitted, no final receipt), not delivered, parts charged,
    replies and link clicks."""
    campaign = campaigns.get_campaign(session, principal.account_id, campaign_id)
    if campaign.channel != "sms":
        raise ValidationFailed("campaign {id} is not an SMS campaign", id=campaign_id)
    return sms.sms_campaign_stats(session, campaign)


@router.get("/credits", response_model=list[BalanceOut], tags=["account"], summary="Allowances")
def get_credits(session: SessionDep, principal: Reader) -> list[BalanceOut]:
    """The account's allowance per channel: available, held for messages not settled yet,
    and until when it is valid.  A channel not listed is not metered."""
    return [
        BalanceOut(channel=b.channel, available=b.available, held=b.held, valid_until=b.valid_until)
        for b in credits.balances(session, principal.account_id)
    ]


STATUS_PURPOSE = "sms-status"


def status_webhook_url(base_url: str, secret: str, gateway: str) -> str:
    """The URL to give an HTTP provider for its delivery status callbacks: the gateway's
    name under a MAC, so nobody else can post receipts."""
    token = sign(secret, STATUS_PURPOSE, gateway)
    return f"{base_url.rstrip('/')}/api/v1/sms/status/{token}"


@router.api_route(
    "/sms/status/{token}",
    methods=["GET", "POST"],
    response_model=dict[str, int],
    include_in_schema=False,  # for the provider, authenticated by the token in the URL
)
async def sms_status_callback(token: str, request: Request) -> dict[str, int]:
    """For the provider, not for integrators: the URL comes from ``mailer sms gateways``.
    The body (JSON, form or query string) is read with the gateway's ``http_status_*``
    settings; the receipts are stored before the answer, so a provider that gets an error
    sends them again."""
    settings = request.app.state.settings
    try:
        name = unsign(settings.secret_key, STATUS_PURPOSE, token)
    except BadToken:
        raise NotFound("unknown status callback") from None
    gateway_settings = next((g for g in settings.sms_gateways if g.name == name), None)
    if gateway_settings is None or gateway_settings.kind != "http":
        raise NotFound("unknown status callback")
    gateway = HttpGateway(gateway_settings)
    body = await request.body()
    receipts = gateway.parse_status(
        body, request.headers.get("content-type", ""), dict(request.query_params)
    )

    def store() -> dict[str, int]:
        with session_scope(settings) as session:
            return sms.apply_receipts(session, settings, receipts)

    return await run_in_threadpool(store)
