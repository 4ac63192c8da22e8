"""Transactional e-mail: ``POST /api/v1/messages`` and ``GET /api/v1/messages/{id}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlmodel import col

from mailer.accounts.service import audit
from mailer.api.deps import MAX_ID, EmailSender, Id, Reader, SessionDep
from mailer.campaigns import transactional
from mailer.core.config import get_settings
from mailer.core.errors import NotFound
from mailer.events.models import Event
from mailer.messages.models import Message

router = APIRouter(prefix="/api/v1", tags=["messages"])


class MessageIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": "ana@empresa.pe",
                    "to_name": "Ana Quispe",
                    "from_email": "notificaciones@entidad.gob.pe",
                    "from_name": "Mesa de partes",
                    "subject": "Su trámite {{ tramite }} fue registrado",
                    "html": "<p>Hola {{ contact.first_name }}, su trámite "
                    "<strong>{{ tramite }}</strong> fue registrado.</p>",
                    "variables": {"tramite": "T-2026-118"},
                    "tags": ["mesa-de-partes"],
                },
                {
                    "to": "ana@empresa.pe",
                    "from_email": "notificaciones@entidad.gob.pe",
                    "template_id": 4,
                    "variables": {"orden": "OC-118"},
                },
            ]
        }
    )
    to: str = Field(min_length=3, max_length=320)
    to_name: str = Field("", max_length=300)
    from_email: str = Field(max_length=320, description="At a sending domain of this install.")
    from_name: str = Field("", max_length=200)
    reply_to: str | None = Field(None, max_length=320)
    template_id: int | None = Field(None, ge=1, le=MAX_ID, description="A saved template, or:")
    subject: str | None = Field(None, max_length=998)
    html: str | None = Field(None, max_length=2_000_000)
    text: str | None = Field(None, max_length=1_000_000, description="Derived when absent.")
    variables: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)


class MessageAcceptedOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 5012, "state": "queued"}]})
    id: int
    state: str


class MessageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 5012,
                    "to": "ana@empresa.pe",
                    "state": "sent",
                    "subject": "Su trámite T-2026-118 fue registrado",
                    "tags": ["mesa-de-partes"],
                    "origin": "apikey:3 (ERP de compras)",
                    "attempts": 1,
                    "relay": "principal",
                    "reply_code": 250,
                    "reply_text": "2.0.0 Ok: queued as 4F2A1",
                    "queued_at": "2026-11-20T15:04:05Z",
                    "sent_at": "2026-11-20T15:04:07Z",
                    "events": [
                        {"kind": "opened", "at": "2026-11-20T15:30:00+00:00", "machine": False}
                    ],
                }
            ]
        }
    )
    id: int
    to: str
    state: str = Field(description="queued, sending, sent, deferred, failed, bounced")
    subject: str
    tags: list[str]
    origin: str
    attempts: int
    relay: str
    reply_code: int | None
    reply_text: str
    queued_at: datetime
    sent_at: datetime | None
    events: list[dict[str, Any]] = Field(description="opened, clicked, bounced... in order")


@router.post(
    "/messages",
    response_model=MessageAcceptedOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send one transactional e-mail",
)
def post_message(
    body: MessageIn, session: SessionDep, principal: EmailSender
) -> MessageAcceptedOut:
    """Queue one e-mail (202 at once); a worker renders, signs and sends it.  It is
    tracked (opens, clicks), bounces are classified, outcomes go to webhooks, and it uses
    one unit of the e-mail allowance when the relay accepts it."""
    row = transactional.queue_message(
        session,
        principal.account_id,
        **body.model_dump(),
        origin=principal.actor,
        settings=get_settings(),
    )
    audit(session, principal, "message.send", f"message:{row.id}")
    session.commit()
    assert row.id is not None
    transactional.enqueue_messages([row.id])
    return MessageAcceptedOut(id=row.id, state=row.state)


@router.get("/messages/{message_id}", response_model=MessageOut, summary="One e-mail")
def get_message(message_id: Id, session: SessionDep, principal: Reader) -> MessageOut:
    """A message sent through the API (or a campaign's), with its events."""
    row = session.get(Message, message_id)
    if row is None or row.account_id != principal.account_id or row.channel != "email":
        raise NotFound("message {id} does not exist", id=message_id)
    payload = row.payload or {}
    events = session.execute(
        select(Event).where(col(Event.message_id) == message_id).order_by(col(Event.id))
    ).scalars()
    return MessageOut(
        id=message_id,
        to=row.to_address,
        state=row.state,
        subject=str((payload.get("content") or {}).get("subject", "")),
        tags=list(payload.get("tags") or []),
        origin=row.origin,
        attempts=row.attempts,
        relay=row.relay,
        reply_code=row.reply_code,
        reply_text=row.reply_text,
        queued_at=row.queued_at,
        sent_at=row.sent_at,
        events=[
            {"kind": e.kind, "at": e.occurred_at.isoformat(), "machine": e.machine, **e.data}
            for e in events
        ],
    )
