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

import dataclasses
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session, col

from mailer.accounts.credits import settle
from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.suppression import suppressed_among
from mailer.bounces.classify import classify_smtp, is_rate_limited
from mailer.bounces.policy import apply_bounce
from mailer.campaigns.models import Campaign, CampaignState
from mailer.campaigns.service import check_reputation, complete_if_done, fail_campaign
from mailer.content.service import CompiledTemplate, compile_template
from mailer.content.store import get_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import MailerError
from mailer.core.ports import Transport
from mailer.core.types import DeliveryResult, DeliveryStatus, Envelope
from mailer.delivery.dkim import MultiSigner
from mailer.delivery.domains import load_domain
from mailer.delivery.journal import Journal, orphaned_journals
from mailer.delivery.mime import MessageHeaders, assemble
from mailer.delivery.pool import DeliveryLoop, RelayPool
from mailer.delivery.quota import any_limited, give_back, reserve
from mailer.delivery.service import ACCOUNT_HEADER
from mailer.delivery.verp import header_message_id, verp_address, verp_token
from mailer.events.models import EventKind
from mailer.events.service import append_many
from mailer.messages.models import Message, MessageState
from mailer.messages.service import (
    Claim,
    ClaimedRow,
    claim_batch,
    claim_of,
    record_results,
    release_claim,
    withdraw_claimed,
)
from mailer.storage.db import session_scope
from mailer.tracking.service import unsubscribe_url
from mailer.tracking.urls import (
    decorate_html,
    link_rewriter,
    open_url,
    trap_url,
    web_version_url,
)

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
    bounce_domain: str  # of the VERP return path and the mailto unsubscribe address
    base_url: str
    secret: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    claimed: int
    by_state: dict[MessageState, list[int]]
    retry_at: datetime | None
    bounced: int = 0


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
    kind = "campaign" if campaign_id is not None else "proof"
    extra: tuple[tuple[str, str], ...] = (
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        # Gmail's feedback loop groups complaints by these fields (campaign:account:kind:sender).
        ("Feedback-ID", f"{campaign_id or 0}:{account_id}:{kind}:{sending_domain.domain}"),
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
        bounce_domain=settings.delivery.bounce_domain or sending_domain.domain,
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
    assert campaign.template_id is not None, "an e-mail campaign has a template"
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
    compiled: CompiledCampaign,
    row: ClaimedRow,
    fields: Mapping[str, Any],
    variables: Mapping[str, Any] | None = None,
) -> tuple[Envelope, str]:
    """Render, assemble and sign one message; returns the envelope and its Message-ID.

    The Message-ID is a function of the ledger row, so a message sent again after a crash
    carries the same one; the return path is the row's VERP address."""
    base, secret = compiled.base_url, compiled.secret
    unsubscribe = unsubscribe_url(base, secret, row.id)
    context = {
        "contact": fields,
        "campaign": {"name": compiled.name, "id": compiled.campaign_id},
        "unsubscribe_url": unsubscribe,
        "web_version_url": web_version_url(base, secret, row.id),
    }
    if variables:  # a transactional message's own values; the names above win
        context = {**variables, **context}
    # Links go through the click redirect; the open pixel and the hidden trap link (which
    # only machines follow) close the HTML.
    rendered = compiled.template.render(context, link_url=link_rewriter(base, secret, row.id))
    html = decorate_html(
        rendered.html, open_url(base, secret, row.id), trap_url(base, secret, row.id)
    )
    message_id = header_message_id(secret, row.id, compiled.domain)
    token = verp_token(compiled.secret, row.id)
    data = assemble(
        compiled.headers,
        to_email=row.to_address,
        to_name=row.to_name or None,
        subject=rendered.subject,
        html=html,
        text=rendered.text,
        message_id=message_id,
        date=utcnow(),
        list_unsubscribe=(
            f"<{unsubscribe}>, <mailto:unsubscribe+{token}@{compiled.bounce_domain}"
            "?subject=unsubscribe>"
        ),
    )
    data = compiled.signer.sign(data)
    sender = verp_address(token, compiled.bounce_domain)
    return Envelope(row.id, sender, row.to_address, data), message_id


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
    """Send through a one-off transport (test messages); campaigns use the relay pool."""
    import asyncio

    async def run() -> list[DeliveryResult]:
        try:
            return await transport.send_many(envelopes)
        finally:
            await transport.aclose()

    return asyncio.run(run()) if envelopes else []


# -- the relay pool of this process ---------------------------------------------------------

_pool_lock = threading.Lock()
_pool: tuple[str, DeliveryLoop, RelayPool] | None = None


def _pool_key(settings: Settings) -> str:
    return repr(
        (
            [r.model_dump() for r in settings.pool_relays],
            {k: v.model_dump() for k, v in sorted(settings.providers.items())},
            settings.dns.model_dump(),
            settings.delivery.relay_down_seconds,
        )
    )


def relay_pool(settings: Settings) -> tuple[DeliveryLoop, RelayPool]:
    """The process's relay pool and the loop its connections live on (one per settings)."""
    global _pool
    key = _pool_key(settings)
    with _pool_lock:
        if _pool is not None and _pool[0] == key:
            return _pool[1], _pool[2]
        if _pool is not None:
            old_loop, old_pool = _pool[1], _pool[2]
            try:
                old_loop.run(old_pool.aclose(), timeout=10)
            except Exception:  # closing is a courtesy to the relays
                log.debug("could not close the previous relay pool", exc_info=True)
            old_loop.stop()
        loop = DeliveryLoop()
        pool = RelayPool(
            settings.pool_relays,
            settings.providers,
            settings.dns,
            down_seconds=settings.delivery.relay_down_seconds,
            slow_down=is_rate_limited,
        )
        _pool = (key, loop, pool)
        return loop, pool


def relay_status(settings: Settings) -> list[dict[str, Any]]:
    return relay_pool(settings)[1].status()


def send_through_pool(
    settings: Settings,
    envelopes: Sequence[Envelope],
    budgets: dict[str, int | None],
    on_result: Callable[[DeliveryResult], None],
) -> list[DeliveryResult]:
    if not envelopes:
        return []
    loop, pool = relay_pool(settings)
    return loop.run(pool.send(envelopes, budgets=budgets, on_result=on_result))


# -- outcomes -------------------------------------------------------------------------------


def local_day(settings: Settings, now: datetime) -> date:
    return now.astimezone(ZoneInfo(settings.timezone)).date()


def _next_local_midnight(settings: Settings, now: datetime) -> datetime:
    zone = ZoneInfo(settings.timezone)
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0, 1), tzinfo=zone)


def apply_retry_policy(
    results: Sequence[DeliveryResult],
    rows: Mapping[int, ClaimedRow],
    settings: Settings,
    now: datetime,
) -> list[DeliveryResult]:
    """When each deferred row is tried again (exponential back-off), and which deferred
    rows have waited past ``delivery.expiry_hours`` and fail instead.  Held rows (never
    attempted) wait for what held them: a relay, a destination's pause, tomorrow's quota.
    """
    policy = settings.delivery
    expiry = timedelta(hours=policy.expiry_hours)
    settled = []
    for result in results:
        row = rows.get(result.message_id)
        if result.status is DeliveryStatus.DEFERRED and row is not None:
            if row.queued_at is not None and now - row.queued_at >= expiry:
                hours = f"{policy.expiry_hours:g}"
                result = dataclasses.replace(
                    result,
                    status=DeliveryStatus.REJECTED,
                    text=f"expired: still deferred after {hours} h ({result.text})"[:1000],
                )
            else:
                wait = min(
                    policy.retry_max_seconds,
                    policy.retry_base_seconds * 2 ** min(max(row.attempts - 1, 0), 20),
                )
                due = now + timedelta(seconds=wait)
                result = dataclasses.replace(
                    result, retry_at=max(due, result.retry_at) if result.retry_at else due
                )
        elif result.status is DeliveryStatus.HELD and result.retry_at is None:
            result = dataclasses.replace(result, retry_at=_next_local_midnight(settings, now))
        settled.append(result)
    return settled


def record_outcomes(
    session: Session,
    compiled: CompiledCampaign,
    claim: Claim,
    results: Sequence[DeliveryResult],
    header_ids: dict[int, str],
    settings: Settings,
) -> dict[MessageState, list[int]]:
    """Write a batch's outcomes and events; bounces are classified and the policy applied."""
    return _record(
        session,
        compiled.account_id,
        compiled.campaign_id,
        claim,
        results,
        header_ids,
        settings,
    )[0]


def _record(
    session: Session,
    account_id: int,
    campaign_id: int | None,
    claim: Claim,
    results: Sequence[DeliveryResult],
    header_ids: dict[int, str],
    settings: Settings,
) -> tuple[dict[MessageState, list[int]], int]:
    now = utcnow()
    rows = {row.id: row for row in claim.rows}
    results = apply_retry_policy(results, rows, settings, now)
    by_state = record_results(
        session,
        claim,
        results,
        max_attempts=settings.max_attempts,
        header_ids=header_ids,
        now=now,
    )
    recorded = {i for ids in by_state.values() for i in ids}
    detail: dict[int, dict[str, Any]] = {}
    bounced: list[tuple[int, bool]] = []
    attempted_deferrals: set[int] = set()
    for r in results:
        if r.message_id not in recorded:
            continue
        info: dict[str, Any] = {"code": r.code, "text": r.text[:300], "relay": r.relay}
        if r.status is DeliveryStatus.REJECTED and r.code is not None and r.code >= 500:
            found = classify_smtp(r.code, r.text)
            info.update(hard=found.hard, reason=found.reason, status=found.status)
            bounced.append((r.message_id, found.hard))
        elif r.status is DeliveryStatus.DEFERRED:
            attempted_deferrals.add(r.message_id)
        detail[r.message_id] = info
    contact_of = {row.id: row.contact_id for row in claim.rows}
    for state, kind in (
        (MessageState.SENT, EventKind.SENT),
        (MessageState.DEFERRED, EventKind.DEFERRED),
        (MessageState.FAILED, EventKind.FAILED),
    ):
        ids = by_state.get(state, [])
        if state is MessageState.DEFERRED:
            ids = [i for i in ids if i in attempted_deferrals]  # held rows: no event
        append_many(
            session,
            account_id,
            kind,
            ids,
            campaign_id=campaign_id,
            data=detail,
            now=now,
            contact_ids=contact_of,
        )
    if bounced:
        # A 5xx at RCPT or DATA is a bounce at once, classified like a bounce message.
        append_many(
            session,
            account_id,
            EventKind.BOUNCED,
            [i for i, _ in bounced],
            campaign_id=campaign_id,
            data=detail,
            now=now,
            contact_ids=contact_of,
        )
        session.flush()
        for message_id, hard in bounced:
            apply_bounce(
                session,
                contact_of.get(message_id),
                hard=hard,
                policy=settings.delivery,
                source=f"bounce:message:{message_id}",
                now=now,
            )
    if campaign_id is not None:
        # The allowance: accepted messages are charged, failed ones released (a campaign
        # reserved its recipients when it started; an account without one is not metered).
        settle(
            session,
            account_id,
            "email",
            charged=len(by_state.get(MessageState.SENT, [])),
            released=len(by_state.get(MessageState.FAILED, [])),
            ref=f"campaign:{campaign_id}",
        )
    return by_state, len(bounced)


def journal_dir(settings: Settings) -> Path:
    return settings.data_dir / "journal"


def _used_by_relay(results: Sequence[DeliveryResult]) -> dict[str, int]:
    used: dict[str, int] = {}
    for result in results:
        if result.status is not DeliveryStatus.HELD and result.relay:
            used[result.relay] = used.get(result.relay, 0) + 1
    return used


def send_batch(
    campaign_id: int, message_ids: Sequence[int], *, settings: Settings | None = None
) -> BatchOutcome:
    """Send the still-unsent rows among *message_ids*.  Idempotent: safe to run twice.

    Exactly once: every outcome is in the batch's journal (``delivery/journal.py``) before
    the next SMTP command on its connection, and in the ledger when the batch ends; a
    worker killed in between leaves the journal, which recovery applies.
    """
    settings = settings or get_settings()
    token = secrets.token_hex(8)
    journal = Journal(journal_dir(settings), token)
    with journal:
        with session_scope(settings) as session:
            campaign = load_sending_campaign(session, campaign_id)
            if campaign is None:
                return BatchOutcome(0, {}, None)
            try:
                compiled = compiled_campaign(session, campaign, settings)
            except MailerError as exc:
                # Nothing of this campaign can be sent (its domain's key is gone, say): stop
                # it visibly instead of retrying forever.  Its rows stay queued for a resume.
                fail_campaign(session, campaign, str(exc))
                return BatchOutcome(0, {}, None)
            claim = claim_batch(session, message_ids, token=token)
            if not claim.rows:
                complete_if_done(session, campaign_id)
                return BatchOutcome(0, {}, None)
            contacts = load_contacts(session, claim.rows)
            withheld = withheld_rows(session, campaign.account_id, claim.rows, contacts)
            claim = withdraw_claimed(
                session, claim, withheld, "suppressed or unsubscribed after the campaign started"
            )
            settle(
                session,
                campaign.account_id,
                "email",
                released=len(withheld),
                ref=f"campaign:{campaign_id}",
            )
        # The claim is committed before anything leaves: a redelivered batch skips these rows.
        envelopes, failures, header_ids = build_envelopes(
            compiled, claim.rows, contact_fields(contacts)
        )
        day = local_day(settings, utcnow())
        budgets: dict[str, int | None] = {}  # no entry: no limit
        if envelopes and any_limited(settings.pool_relays):
            with session_scope(settings) as session:
                budgets = reserve(session, settings.pool_relays, len(envelopes), day)
        for failure in failures:
            journal.record(failure)
        results = failures + send_through_pool(settings, envelopes, budgets, journal.record)
        with session_scope(settings) as session:
            give_back(session, budgets, _used_by_relay(results), day)
            by_state, bounced = _record(
                session, compiled.account_id, campaign_id, claim, results, header_ids, settings
            )
        with session_scope(settings) as session:
            if bounced:
                check_reputation(session, campaign_id, settings)
            complete_if_done(session, campaign_id)
    retry_times = [
        r.retry_at
        for r in results
        if r.status in (DeliveryStatus.DEFERRED, DeliveryStatus.HELD) and r.retry_at
    ]
    retry_at = min(retry_times) if by_state.get(MessageState.DEFERRED) and retry_times else None
    return BatchOutcome(len(claim.rows), by_state, retry_at, bounced)


# -- recovery -------------------------------------------------------------------------------


def recover_journals(settings: Settings | None = None, *, requeue: bool = True) -> list[int]:
    """Apply the journals of dead workers to the ledger; returns the campaigns touched.

    What a journal recorded is written as if the batch had ended (the last outcome of a
    row wins: a row rerouted to another relay has two); the rows it says nothing about are
    offered again at once.  With *requeue*, the touched campaigns' rows go on the queue.
    """
    settings = settings or get_settings()
    touched: set[int] = set()
    for orphan in orphaned_journals(journal_dir(settings)):
        last: dict[int, DeliveryResult] = {}
        for result in orphan.results():
            last[result.message_id] = result
        with session_scope(settings) as session:
            claim = claim_of(session, orphan.token)
            if claim.rows:
                owner = session.execute(
                    select(col(Message.account_id), col(Message.campaign_id)).where(
                        col(Message.id) == claim.rows[0].id
                    )
                ).one()
                campaign = session.get(Campaign, owner[1]) if owner[1] is not None else None
                domain = campaign.from_email.rsplit("@", 1)[1] if campaign else "invalid"
                held = {row.id for row in claim.rows}
                results = [r for i, r in last.items() if i in held]
                header_ids = {
                    r.message_id: header_message_id(settings.secret_key, r.message_id, domain)
                    for r in results
                }
                _record(session, owner[0], owner[1], claim, results, header_ids, settings)
                touched.update(release_claim(session, orphan.token))
                if owner[1] is not None:
                    touched.add(owner[1])
        log.warning(
            "applied the journal of a stopped worker: %d outcomes, claim %s",
            len(last),
            orphan.token,
        )
        orphan.remove()
    if requeue:
        from mailer.campaigns.service import enqueue_pending

        for campaign_id in touched:
            enqueue_pending(campaign_id, settings=settings)
    return sorted(touched)
