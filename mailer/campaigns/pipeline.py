"""The send path of one batch of ledger ids, as named steps.

    load_sending_campaign -> claim_rows -> compiled_campaign (cached per process)
    -> build_envelopes (render, assemble, sign) -> deliver -> record_outcomes
    -> retry_deferred_later -> complete_if_done

Everything that is the same for every recipient (Jinja compilation, CSS inlining, link
extraction, constant headers, DKIM keys) is prepared once per campaign per process in
:class:`CompiledCampaign`; per recipient only rendering, assembly and signing happen.
The outcome of a whole batch is written in one transaction with executemany.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.suppression import suppressed_among
from mailer.campaigns.models import Campaign, CampaignState
from mailer.campaigns.service import complete_if_done, fail_campaign
from mailer.content.service import CompiledTemplate, compile_template
from mailer.content.store import get_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import MailerError
from mailer.core.ports import Transport
from mailer.core.types import DeliveryResult, DeliveryStatus, Envelope
from mailer.delivery.dkim import MultiSigner
from mailer.delivery.domains import load_domain
from mailer.delivery.mime import MessageHeaders, assemble, new_message_id
from mailer.delivery.service import ACCOUNT_HEADER, transport_from_settings
from mailer.events.models import EventKind
from mailer.events.service import append_many
from mailer.messages.models import MessageState
from mailer.messages.service import (
    Claim,
    ClaimedRow,
    claim_batch,
    record_results,
    withdraw_claimed,
)
from mailer.storage.db import session_scope
from mailer.tracking.service import unsubscribe_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CompiledCampaign:
    campaign_id: int | None  # None for a test message
    account_id: int
    name: str
    template: CompiledTemplate
    headers: MessageHeaders
    signer: MultiSigner  # one pass over the message for every key of the domain
    domain: str
    return_path: str
    base_url: str
    secret: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    claimed: int
    by_state: dict[MessageState, list[int]]
    retry_at: datetime | None


COMPILED_CACHE_SIZE = 32
_compiled: OrderedDict[int, tuple[tuple[object, ...], CompiledCampaign]] = OrderedDict()
_compiled_lock = threading.Lock()

TransportFactory = Callable[[Settings], Transport]


def load_sending_campaign(session: Session, campaign_id: int) -> Campaign | None:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.state != CampaignState.SENDING:
        # Paused or cancelled: the rows stay in the ledger for resume, nothing is sent.
        return None
    return campaign


def compile_message(
    *,
    account_id: int,
    campaign_id: int | None,
    name: str,
    content: dict[str, Any],
    from_email: str,
    from_name: str,
    reply_to: str | None,
    settings: Settings,
) -> CompiledCampaign:
    """Everything that is the same for every recipient: template, headers, DKIM keys."""
    domain = from_email.rsplit("@", 1)[1]
    sending_domain = load_domain(settings.sending_domains_dir, domain)
    extra: tuple[tuple[str, str], ...] = (
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        (ACCOUNT_HEADER, str(account_id)),
    )
    if campaign_id is not None:
        extra += (("X-Mailer-Campaign", str(campaign_id)),)
    return CompiledCampaign(
        campaign_id=campaign_id,
        account_id=account_id,
        name=name,
        template=compile_template(content["subject"], content["html"], content["text"]),
        headers=MessageHeaders(
            from_name=from_name, from_email=from_email, reply_to=reply_to, extra=extra
        ),
        signer=MultiSigner(sending_domain.signers()),
        domain=sending_domain.domain,
        return_path=from_email,
        base_url=settings.base_url,
        secret=settings.secret_key,
    )


def compiled_campaign(session: Session, campaign: Campaign, settings: Settings) -> CompiledCampaign:
    """The campaign's compiled form, built once per process and reused for every batch.

    It is compiled from the content frozen when the send started (``campaign.content``).
    """
    assert campaign.id is not None
    content = campaign.content or _current_content(session, campaign)
    key = (
        campaign.started_at,
        content["subject"],
        content["html"],
        content["text"],
        campaign.from_email,
        campaign.from_name,
        campaign.reply_to,
    )
    with _compiled_lock:
        cached = _compiled.get(campaign.id)
        if cached is not None and cached[0] == key:
            _compiled.move_to_end(campaign.id)
            return cached[1]
    compiled = compile_message(
        account_id=campaign.account_id,
        campaign_id=campaign.id,
        name=campaign.name,
        content=content,
        from_email=campaign.from_email,
        from_name=campaign.from_name,
        reply_to=campaign.reply_to,
        settings=settings,
    )
    with _compiled_lock:
        _compiled[campaign.id] = (key, compiled)
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return compiled


def _current_content(session: Session, campaign: Campaign) -> dict[str, Any]:
    template = get_template(session, campaign.account_id, campaign.template_id)
    return {
        "subject": campaign.subject or template.subject,
        "html": template.html,
        "text": template.text,
    }


def load_contacts(session: Session, rows: Sequence[ClaimedRow]) -> dict[int, Contact]:
    ids = [row.contact_id for row in rows if row.contact_id is not None]
    contacts = session.execute(select(Contact).where(col(Contact.id).in_(ids))).scalars()
    return {contact.id: contact for contact in contacts if contact.id is not None}


def withheld_rows(
    session: Session, account_id: int, rows: Sequence[ClaimedRow], contacts: Mapping[int, Contact]
) -> list[int]:
    """Rows whose recipient may no longer be mailed: the suppression list and the contact's
    status are checked again at send time, so an unsubscribe after the snapshot holds."""
    blocked = suppressed_among(session, account_id, "email", [row.to_address for row in rows])
    withheld = []
    for row in rows:
        contact = contacts.get(row.contact_id) if row.contact_id is not None else None
        inactive = contact is not None and contact.email_status != ChannelStatus.ACTIVE
        if row.to_address in blocked or inactive:
            withheld.append(row.id)
    return withheld


def build_envelope(
    compiled: CompiledCampaign, row: ClaimedRow, fields: Mapping[str, Any]
) -> tuple[Envelope, str]:
    """Render, assemble and sign one message; returns the envelope and its Message-ID."""
    unsubscribe = unsubscribe_url(compiled.base_url, compiled.secret, row.id)
    context = {
        "contact": fields,
        "campaign": {"name": compiled.name, "id": compiled.campaign_id},
        "unsubscribe_url": unsubscribe,
    }
    rendered = compiled.template.render(context)
    message_id = new_message_id(compiled.domain)
    data = assemble(
        compiled.headers,
        to_email=row.to_address,
        to_name=row.to_name or None,
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        message_id=message_id,
        date=utcnow(),
        list_unsubscribe=f"<{unsubscribe}>",
    )
    data = compiled.signer.sign(data)
    return Envelope(row.id, compiled.return_path, row.to_address, data), message_id


FieldsOf = Callable[[ClaimedRow], Mapping[str, Any]]
"""What a row's template sees as ``contact``."""


def contact_fields(contacts: dict[int, Contact]) -> FieldsOf:
    def fields(row: ClaimedRow) -> Mapping[str, Any]:
        contact = contacts.get(row.contact_id) if row.contact_id is not None else None
        return contact.template_fields() if contact else {"email": row.to_address}

    return fields


def build_envelopes(
    compiled: CompiledCampaign, rows: Sequence[ClaimedRow], fields_of: FieldsOf
) -> tuple[list[Envelope], list[DeliveryResult], dict[int, str]]:
    """Envelopes for the rows that render; a failure for each row that does not."""
    envelopes: list[Envelope] = []
    failures: list[DeliveryResult] = []
    header_ids: dict[int, str] = {}
    for row in rows:
        try:
            envelope, header_ids[row.id] = build_envelope(compiled, row, fields_of(row))
        except Exception as exc:  # one recipient's data must not stop the batch
            if not isinstance(exc, MailerError):
                log.exception("message %s could not be built", row.id)
            failures.append(
                DeliveryResult(row.id, DeliveryStatus.REJECTED, text=f"render failed: {exc}")
            )
            continue
        envelopes.append(envelope)
    return envelopes, failures, header_ids


def deliver(transport: Transport, envelopes: Sequence[Envelope]) -> list[DeliveryResult]:
    async def run() -> list[DeliveryResult]:
        try:
            return await transport.send_many(envelopes)
        finally:
            await transport.aclose()

    return asyncio.run(run()) if envelopes else []


def record_outcomes(
    session: Session,
    compiled: CompiledCampaign,
    claim: Claim,
    results: Sequence[DeliveryResult],
    header_ids: dict[int, str],
    settings: Settings,
) -> dict[MessageState, list[int]]:
    now = utcnow()
    by_state = record_results(
        session,
        claim,
        results,
        max_attempts=settings.max_attempts,
        header_ids=header_ids,
        now=now,
    )
    detail = {
        r.message_id: {"code": r.code, "text": r.text[:300], "relay": r.relay} for r in results
    }
    kinds = {
        MessageState.SENT: EventKind.SENT,
        MessageState.DEFERRED: EventKind.DEFERRED,
        MessageState.FAILED: EventKind.FAILED,
    }
    for state, ids in by_state.items():
        append_many(
            session,
            compiled.account_id,
            kinds[state],
            ids,
            campaign_id=compiled.campaign_id,
            data=detail,
            now=now,
        )
    return by_state


def send_batch(
    campaign_id: int,
    message_ids: Sequence[int],
    *,
    settings: Settings | None = None,
    transport_factory: TransportFactory = transport_from_settings,
) -> BatchOutcome:
    """Send the still-unsent rows among *message_ids*.  Idempotent: safe to run twice."""
    settings = settings or get_settings()
    with session_scope(settings) as session:
        campaign = load_sending_campaign(session, campaign_id)
        if campaign is None:
            return BatchOutcome(0, {}, None)
        try:
            compiled = compiled_campaign(session, campaign, settings)
        except MailerError as exc:
            # Nothing of this campaign can be sent (its domain's key is gone, say): stop it
            # visibly instead of retrying forever.  Its rows stay queued for a resume.
            fail_campaign(session, campaign, str(exc))
            return BatchOutcome(0, {}, None)
        claim = claim_batch(session, message_ids)
        if not claim.rows:
            complete_if_done(session, campaign_id)
            return BatchOutcome(0, {}, None)
        contacts = load_contacts(session, claim.rows)
        claim = withdraw_claimed(
            session,
            claim,
            withheld_rows(session, campaign.account_id, claim.rows, contacts),
            "suppressed or unsubscribed after the campaign started",
        )
    # The claim is committed before anything leaves: a redelivered batch skips these rows.
    envelopes, failures, header_ids = build_envelopes(
        compiled, claim.rows, contact_fields(contacts)
    )
    results = failures + deliver(transport_factory(settings), envelopes)
    with session_scope(settings) as session:
        by_state = record_outcomes(session, compiled, claim, results, header_ids, settings)
    with session_scope(settings) as session:
        complete_if_done(session, campaign_id)
    retry_times = [
        r.retry_at for r in results if r.status is DeliveryStatus.DEFERRED and r.retry_at
    ]
    retry_at = min(retry_times) if by_state.get(MessageState.DEFERRED) and retry_times else None
    return BatchOutcome(len(claim.rows), by_state, retry_at)
