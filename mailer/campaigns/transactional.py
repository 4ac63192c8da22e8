"""Transactional e-mail (``POST /api/v1/messages``): one message to one address, from a
saved template or a subject with HTML (and text), with variables and tags.

Like a campaign's message it has a ledger row, tracking (pixel, click redirects,
unsubscribe), bounces, events for webhooks and the allowance (one unit reserved when
queued, charged when the relay accepts it, released when it fails).  The request only
validates, reserves and queues; a worker renders, signs and sends, retrying deferrals like
a campaign's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select
from sqlmodel import Session, col

from mailer.accounts.credits import reserve, settle
from mailer.accounts.service import normalise_email
from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.suppression import suppressed_among
from mailer.campaigns.pipeline import (
    CompiledCampaign,
    build_envelope,
    compile_message,
    send_through_pool,
)
from mailer.campaigns.pipeline import _record as record_batch
from mailer.content.service import check_syntax
from mailer.content.store import get_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import Conflict, MailerError, ValidationFailed
from mailer.core.queue import enqueue
from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.messages.models import Message, MessageState
from mailer.messages.service import claim_batch
from mailer.storage.db import insert_rows, session_scope

log = logging.getLogger(__name__)

CHANNEL = "email"
MAX_TAGS = 10
_COMPILED: OrderedDict[str, CompiledCampaign] = OrderedDict()
_COMPILED_SIZE = 64


def queue_message(
    session: Session,
    account_id: int,
    *,
    to: str,
    to_name: str = "",
    template_id: int | None = None,
    subject: str | None = None,
    html: str | None = None,
    text: str | None = None,
    variables: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    from_email: str,
    from_name: str = "",
    reply_to: str | None = None,
    origin: str = "",
    settings: Settings | None = None,
) -> Message:
    """Validate and queue one message; the caller commits, then :func:`enqueue_messages`.

    Raises ValidationFailed for a bad address or template, Conflict when the address is
    suppressed or unsubscribed, InsufficientCredit when the allowance is used up."""
    settings = settings or get_settings()
    address = normalise_email(to, "to")
    if template_id is not None:
        if subject is not None or html is not None:
            raise ValidationFailed(
                "give either template_id or subject and html, not both", field="template_id"
            )
        template = get_template(session, account_id, template_id)
        content = {"subject": template.subject, "html": template.html, "text": template.text}
    else:
        if not subject or not html:
            raise ValidationFailed(
                "give a template_id, or a subject and html",
                field="subject" if not subject else "html",
            )
        content = {"subject": subject, "html": html, "text": text}
    sender = normalise_email(from_email, "from_email")
    if len(tags) > MAX_TAGS or any(not t or len(t) > 64 for t in tags):
        raise ValidationFailed(
            "at most {most} tags of 1 to 64 characters", field="tags", most=MAX_TAGS
        )
    # The syntax, the sending domain and its keys, checked once per distinct content.
    _compiled(account_id, content, sender, from_name, reply_to, settings)
    contact = session.execute(
        _CONTACT_BY_EMAIL, {"account": account_id, "email": address}
    ).one_or_none()
    if suppressed_among(session, account_id, CHANNEL, [address]) or (
        contact is not None and contact.email_status != ChannelStatus.ACTIVE
    ):
        raise Conflict(
            "'{address}' does not receive e-mail from this account (unsubscribed, bounced, "
            "complained or suppressed)",
            field="to",
            address=address,
        )
    now = utcnow()
    row = Message(
        account_id=account_id,
        contact_id=contact.id if contact else None,
        channel=CHANNEL,
        to_address=address,
        to_name=to_name[:300],
        state=MessageState.QUEUED,
        attempts=0,
        parts=0,
        origin=origin[:200],
        payload={
            "content": content,
            "from_email": sender,
            "from_name": from_name,
            "reply_to": reply_to,
            "variables": dict(variables or {}),
            "tags": list(tags),
        },
        queued_at=now,
        updated_at=now,
    )
    insert_rows(session, [row])  # Core: the unit of work costs more than the statement
    reserve(session, account_id, CHANNEL, 1, ref=f"message:{row.id}", actor=origin)
    return row


_CONTACT_BY_EMAIL = select(col(Contact.id), col(Contact.email_status)).where(
    col(Contact.account_id) == bindparam("account"), col(Contact.email) == bindparam("email")
)


def enqueue_messages(message_ids: Sequence[int]) -> None:
    from mailer.campaigns.tasks import send_messages

    if message_ids:
        enqueue(send_messages, list(message_ids))


def _compiled(
    account_id: int,
    content: Mapping[str, Any],
    from_email: str,
    from_name: str,
    reply_to: str | None,
    settings: Settings,
) -> CompiledCampaign:
    """Compiled once per distinct content and sender (an application sends the same
    template many times), kept in a small LRU."""
    key = hashlib.sha256(
        json.dumps(
            [account_id, content, from_email, from_name, reply_to, settings.base_url],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    found = _COMPILED.get(key)
    if found is not None:
        _COMPILED.move_to_end(key)
        return found
    check_syntax(str(content["subject"]), str(content["html"]), content.get("text"))
    try:  # the sending domain and its keys: an unknown domain is the caller's to fix now
        compiled = compile_message(
            account_id=account_id,
            campaign_id=None,
            name=str(content.get("subject", ""))[:200],
            content=dict(content),
            from_email=from_email,
            from_name=from_name,
            reply_to=reply_to,
            settings=settings,
        )
    except MailerError as exc:
        raise ValidationFailed("{problem}", field="from_email", problem=str(exc)) from exc
    _COMPILED[key] = compiled
    while len(_COMPILED) > _COMPILED_SIZE:
        _COMPILED.popitem(last=False)
    return compiled


def send_messages(message_ids: Sequence[int], *, settings: Settings | None = None) -> int:
    """Send the still-unsent transactional rows among *message_ids*; returns how many were
    attempted.  Idempotent (claims), journaled outcomes are not needed here: a resend after
    a crash carries the same Message-ID."""
    settings = settings or get_settings()
    with session_scope(settings) as session:
        claim = claim_batch(session, message_ids)
        if not claim.rows:
            return 0
        rows = {
            r.id: r
            for r in session.execute(
                select(Message).where(col(Message.id).in_([c.id for c in claim.rows]))
            ).scalars()
        }
        contacts = {
            c.id: c
            for c in session.execute(
                select(Contact).where(
                    col(Contact.id).in_([r.contact_id for r in rows.values() if r.contact_id])
                )
            ).scalars()
        }
    failures: list[DeliveryResult] = []
    envelopes = []
    header_ids: dict[int, str] = {}
    for claimed in claim.rows:
        row = rows[claimed.id]
        payload = row.payload or {}
        try:
            compiled = _compiled(
                row.account_id,
                payload["content"],
                payload["from_email"],
                payload.get("from_name", ""),
                payload.get("reply_to"),
                settings,
            )
            contact = contacts.get(row.contact_id) if row.contact_id else None
            fields = (
                contact.template_fields()
                if contact
                else {"email": row.to_address, "first_name": row.to_name}
            )
            envelope, header_ids[claimed.id] = build_envelope(
                compiled, claimed, fields, payload.get("variables") or {}
            )
        except Exception as exc:  # this message's data or domain: it fails alone
            if not isinstance(exc, MailerError):
                log.exception("transactional message %s could not be built", claimed.id)
            failures.append(DeliveryResult(claimed.id, DeliveryStatus.REJECTED, text=str(exc)))
            continue
        envelopes.append(envelope)
    results = send_through_pool(settings, envelopes, {}, lambda _result: None) if envelopes else []
    results += failures
    with session_scope(settings) as session:
        # Outcomes are recorded per account (events carry it); one claim covers them all.
        by_account: dict[int, list[DeliveryResult]] = {}
        for result in results:
            by_account.setdefault(rows[result.message_id].account_id, []).append(result)
        for account_id, mine in by_account.items():
            states, _bounced = record_batch(
                session, account_id, None, claim, mine, header_ids, settings
            )
            settle(
                session,
                account_id,
                CHANNEL,
                charged=len(states.get(MessageState.SENT, [])),
                released=len(states.get(MessageState.FAILED, [])),
                ref="messages",
            )
    return len(claim.rows)


def due_messages(
    session: Session, *, now: datetime | None = None, limit: int = 10_000
) -> list[int]:
    """Transactional rows to send again: deferred and due, or queued over a minute ago (a
    lost queue message).  Proofs (no origin) are never retried."""
    now = now or utcnow()
    return list(
        session.execute(
            select(col(Message.id))
            .where(
                col(Message.channel) == CHANNEL,
                col(Message.campaign_id).is_(None),
                col(Message.origin) != "",
                or_(
                    and_(
                        col(Message.state) == MessageState.DEFERRED,
                        col(Message.next_attempt_at) <= now,
                    ),
                    and_(
                        col(Message.state) == MessageState.QUEUED,
                        col(Message.queued_at) < now - timedelta(minutes=1),
                    ),
                ),
            )
            .order_by(col(Message.id))
            .limit(limit)
        ).scalars()
    )
