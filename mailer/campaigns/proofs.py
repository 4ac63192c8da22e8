"""Test messages ("enviar prueba"): a template sent to a few addresses through the normal
delivery path (render, MIME, DKIM, relay), each with its ledger row, before any campaign.

Proofs render for the sample contact or for a chosen real contact; their unsubscribe link
never touches that contact (a proof's ledger row names no contact).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlmodel import Session, col

from mailer.accounts.service import normalise_email
from mailer.audience.models import Contact
from mailer.campaigns.pipeline import (
    TransportFactory,
    build_envelopes,
    compile_message,
    deliver,
    record_outcomes,
    send_through_pool,
)
from mailer.content.preview import SAMPLE_CONTACT
from mailer.content.store import get_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import NotFound, ValidationFailed
from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.messages.models import Message, MessageState
from mailer.messages.service import ClaimedRow, claim_batch
from mailer.storage.db import session_scope

log = logging.getLogger(__name__)

MAX_PROOF_RECIPIENTS = 10
PROOF_PREFIX = "[PRUEBA] "


@dataclass(frozen=True, slots=True)
class ProofResult:
    address: str
    state: str
    reply: str


def send_test_message(
    account_id: int,
    template_id: int,
    addresses: Sequence[str],
    *,
    from_email: str,
    from_name: str,
    contact_id: int | None = None,
    settings: Settings | None = None,
    transport_factory: TransportFactory | None = None,
) -> list[ProofResult]:
    """Send the template to *addresses* now and say what the relay answered for each."""
    settings = settings or get_settings()
    recipients = list(
        dict.fromkeys(normalise_email(a, "addresses") for a in addresses if a.strip())
    )
    if not recipients:
        raise ValidationFailed("give at least one address for the test", field="addresses")
    if len(recipients) > MAX_PROOF_RECIPIENTS:
        raise ValidationFailed(
            "a test goes to {limit} addresses at most",
            field="addresses",
            limit=MAX_PROOF_RECIPIENTS,
        )
    with session_scope(settings) as session:
        template = get_template(session, account_id, template_id)
        fields = _fields_for(session, account_id, contact_id)
        compiled = compile_message(
            account_id=account_id,
            campaign_id=None,
            name=template.name,
            content={
                "subject": PROOF_PREFIX + template.subject,
                "html": template.html,
                "text": template.text,
            },
            from_email=normalise_email(from_email, "from_email"),
            from_name=from_name,
            reply_to=None,
            settings=settings,
        )
        now = utcnow()
        ids = list(
            session.execute(
                insert(Message).returning(col(Message.id)),
                [
                    {
                        "account_id": account_id,
                        "to_address": address,
                        "to_name": "",
                        "channel": "email",
                        "state": MessageState.QUEUED.value,
                        "attempts": 0,
                        "queued_at": now,
                        "updated_at": now,
                    }
                    for address in recipients
                ],
            ).scalars()
        )
        claim = claim_batch(session, ids)

    def proof_fields(_row: ClaimedRow) -> Mapping[str, Any]:
        return fields

    envelopes, failures, header_ids = build_envelopes(compiled, claim.rows, proof_fields)
    try:
        if transport_factory is None:  # the relay pool, as campaigns (no daily budget)
            delivered = send_through_pool(settings, envelopes, {}, lambda _result: None)
        else:
            delivered = deliver(transport_factory(settings), envelopes)
    except Exception as exc:  # nothing retries a proof: record the failure, do not hang
        log.exception("test message could not be delivered")
        delivered = [
            DeliveryResult(e.message_id, DeliveryStatus.REJECTED, text=f"not delivered: {exc}")
            for e in envelopes
        ]
    delivered = [  # held back (no relay up, a paused destination): a proof does not wait
        DeliveryResult(r.message_id, DeliveryStatus.REJECTED, text=f"not delivered: {r.text}")
        if r.status is DeliveryStatus.HELD
        else r
        for r in delivered
    ]
    with session_scope(settings) as session:
        # A proof is tried once: a deferral is reported as a failure, not retried later.
        once = settings.model_copy(update={"max_attempts": 1})
        record_outcomes(session, compiled, claim, failures + delivered, header_ids, once)
        rows = session.execute(
            select(
                col(Message.to_address),
                col(Message.state),
                col(Message.reply_code),
                col(Message.reply_text),
            )
            .where(col(Message.id).in_(ids))
            .order_by(col(Message.id))
        ).all()
    return [
        ProofResult(address, state, f"{code or ''} {text}".strip())
        for address, state, code, text in rows
    ]


def _fields_for(session: Session, account_id: int, contact_id: int | None) -> dict[str, Any]:
    if contact_id is None:
        return dict(SAMPLE_CONTACT)
    contact = session.get(Contact, contact_id)
    if contact is None or contact.account_id != account_id:
        raise NotFound("contact {id} does not exist", id=contact_id)
    return dict(contact.template_fields())
