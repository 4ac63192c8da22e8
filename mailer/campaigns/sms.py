"""SMS on the ledger: queue (API sends and campaigns), send through the gateway, settle the
delivery receipts against the allowance, and act on replies.

The transport (``mailer.sms``) moves messages and reports receipts and replies as values;
here they become ledger states, credit movements, events and contact statuses:

- **queue**: numbers normalised (E.164, mobile only), the text rendered per recipient in
  the sandbox, its links shortened to ``/s/<code>``, its parts counted exactly and
  *reserved* on the account's allowance in the same transaction as the rows;
- **send**: a claimed batch goes to the gateway; a submitted message is ``sent`` (shown as
  "submitted") with one ``sms_parts`` row per part and the provider's id, so a receipt
  matches after a restart however late it comes;
- **receipts**: when every part of a message has a final receipt, the message is
  ``delivered`` (its parts are *charged*) or ``undelivered`` (*released*); a message with no
  final receipt within the validity period is ``expired`` (released).  Only delivered
  messages consume the allowance;
- **replies**: stored and shown; the stop keywords (BAJA, STOP, SALIR) unsubscribe the
  number from SMS at once and the start keyword (ALTA) brings it back, each acknowledged.
"""

from __future__ import annotations

import atexit
import functools
import logging
import random
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

from mailer.accounts.credits import reserve, settle
from mailer.accounts.models import Account
from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.service import email_audience, set_channel_status
from mailer.audience.suppression import (
    SuppressionReason,
    suppress,
    suppressed_among,
    unsuppress,
)
from mailer.campaigns.models import Campaign, CampaignState
from mailer.cleaning.phones import check_phone
from mailer.content.service import CompiledText, compile_text
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import MailerError, NotFound, ValidationFailed
from mailer.core.types import DeliveryResult, DeliveryStatus
from mailer.events.models import EventKind
from mailer.events.service import append, append_many
from mailer.messages.models import (
    MESSAGE_STATE,
    InboundSms,
    Message,
    MessageState,
    PendingReceipt,
    SmsPart,
)
from mailer.messages.service import claim_batch, record_results, withdraw_claimed
from mailer.sms.capture import CAPTURE_NAME, CaptureGateway
from mailer.sms.encoding import analyse
from mailer.sms.runner import GatewayLoop, gateways_from_settings
from mailer.sms.types import (
    FINAL_STATES,
    Inbound,
    Receipt,
    SmsOutbound,
    SubmitResult,
    hex_id_to_decimal,
)
from mailer.storage.db import insert_rows, next_ids, session_scope
from mailer.storage.types import UtcDateTime
from mailer.tracking.urls import sms_link_url

log = logging.getLogger(__name__)

CHANNEL = "sms"
_SENDER = re.compile(r"^(?:\+?\d{3,15}|[A-Za-z0-9 ._-]{1,11})$")
# A URL in an SMS: up to the first space; closing punctuation is the sentence's.
_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""
# The longest short link of this install, for the estimate of a campaign's parts before
# its rows have ids.
_ESTIMATE_ID = 2**31 - 1


# -- numbers, senders, text ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A recipient that was not queued, and why (the API reports it; the rest go on)."""

    index: int
    value: str
    reason: str


def normalise_numbers(
    numbers: Sequence[str], region: str
) -> tuple[list[tuple[int, str]], list[Rejected]]:
    """(index, E.164) of the numbers that can receive SMS, and those that cannot."""
    good: list[tuple[int, str]] = []
    bad: list[Rejected] = []
    seen: set[str] = set()
    for index, raw in enumerate(numbers):
        verdict = check_phone(str(raw), region)
        if not verdict.ok:
            bad.append(Rejected(index, str(raw), verdict.reason or "not a valid phone number"))
        elif not verdict.sms_ok:
            bad.append(Rejected(index, str(raw), f"not a mobile number ({verdict.kind})"))
        elif verdict.e164 in seen:
            bad.append(Rejected(index, str(raw), "the same number twice in one request"))
        else:
            seen.add(verdict.e164)
            good.append((index, verdict.e164))
    return good, bad


def check_sender(sender: str) -> str:
    sender = sender.strip()
    if not _SENDER.match(sender):
        raise ValidationFailed(
            "the SMS sender '{sender}' is not valid: use a short code or number (digits) or "
            "an alphanumeric sender id of at most 11 letters and digits",
            field="sender",
            sender=sender,
        )
    return sender


def sender_of(account: Account, settings: Settings, given: str | None = None) -> str:
    return check_sender(given or account.sms_sender or settings.sms.default_sender)


def check_text(text: str) -> CompiledText:
    if not text or not text.strip():
        raise ValidationFailed("the SMS has no text", field="text")
    return _compiled_text(text)


@functools.lru_cache(maxsize=256)
def _compiled_text(text: str) -> CompiledText:
    """An application sends the same text many times: compiled once per process."""
    return compile_text(text)


def shorten_links(text: str, base_url: str, secret: str, message_id: int) -> tuple[str, list[str]]:
    """The text with each URL replaced by its short tracked link, and the URLs in order."""
    links: list[str] = []

    def replace(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = ""
        while url and url[-1] in _TRAILING:
            url, tail = url[:-1], url[-1] + tail
        if len(url) <= len("https://"):
            return match.group(0)
        links.append(url)
        return sms_link_url(base_url, secret, message_id, len(links) - 1) + tail

    return _URL.sub(replace, text), links


def _contact_fields(contact: Contact | None, phone: str) -> Mapping[str, Any]:
    return contact.template_fields() if contact is not None else {"phone": phone}


# -- queue ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Queued:
    """What a send request queued: its rows, and the recipients it did not take."""

    messages: list[Message] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def queue_sms(
    session: Session,
    account_id: int,
    to: Sequence[str],
    text: str,
    *,
    sender: str | None = None,
    variables: Mapping[str, Any] | None = None,
    origin: str = "",
    scheduled_at: datetime | None = None,
    ignore_status: bool = False,
    settings: Settings | None = None,
) -> Queued:
    """Queue one SMS per number: rendered, links shortened, parts counted and reserved.

    Numbers that are not mobile, repeated, unsubscribed from SMS or suppressed are
    reported in ``rejected``; if none is left, ValidationFailed.  Raises
    InsufficientCredit (nothing queued) when the allowance does not cover the parts.  The
    caller commits, then calls :func:`enqueue_sms`.  *ignore_status* is for the
    acknowledgement of a keyword, which goes to a number that just left.
    """
    settings = settings or get_settings()
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account {id} does not exist", id=account_id)
    if not to:
        raise ValidationFailed("give at least one phone number", field="to")
    compiled = check_text(text)
    the_sender = sender_of(account, settings, sender)
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        raise ValidationFailed("the scheduled time needs a time zone", field="scheduled_at")
    if scheduled_at is not None and scheduled_at < utcnow() - timedelta(minutes=1):
        raise ValidationFailed("the scheduled time is in the past", field="scheduled_at")
    good, rejected = normalise_numbers(to, settings.sms.default_region)
    contacts = {
        c.phone: c
        for c in session.execute(
            _CONTACTS_BY_PHONE, {"account": account_id, "phones": [n for _, n in good]}
        ).scalars()
    }
    if not ignore_status:
        blocked = suppressed_among(session, account_id, CHANNEL, [n for _, n in good])
        kept = []
        for index, number in good:
            contact = contacts.get(number)
            if number in blocked or (
                contact is not None and contact.sms_status != ChannelStatus.ACTIVE
            ):
                rejected.append(Rejected(index, number, "unsubscribed from SMS or suppressed"))
            else:
                kept.append((index, number))
        good = kept
    if not good:
        first = rejected[0] if rejected else Rejected(0, "", "no number")
        raise ValidationFailed(
            "no recipient can receive this SMS: to[{index}] '{value}': {reason}",
            field=f"to[{first.index}]",
            index=first.index,
            value=first.value,
            reason=first.reason,
        )
    now = utcnow()
    due = scheduled_at if scheduled_at is not None and scheduled_at > now else None
    rows = [
        Message(
            account_id=account_id,
            contact_id=contacts[number].id if number in contacts else None,
            channel=CHANNEL,
            to_address=number,
            state=MessageState.DEFERRED if due else MessageState.QUEUED,
            attempts=0,
            next_attempt_at=due,
            origin=origin[:200],
            queued_at=now,
            updated_at=now,
        )
        for _, number in good
    ]

    def render(row: Message) -> None:
        assert row.id is not None
        context = {
            **(variables or {}),
            "contact": _contact_fields(contacts.get(row.to_address), row.to_address),
        }
        body, links = shorten_links(
            compiled.render(context), settings.base_url, settings.secret_key, row.id
        )
        row.payload = {"text": body, "links": links, "sender": the_sender}
        row.parts = _parts_within(body, settings)

    # Core statements, not the unit of work: the API sends one SMS per request, and the ORM
    # flush (insert, then update the rendered text) cost more than the rest of the request.
    ids = next_ids(session, _MESSAGES, len(rows))
    if ids is not None:  # PostgreSQL: ids first, so each row is inserted once, complete
        for row, message_id in zip(rows, ids, strict=True):
            row.id = message_id
            render(row)
        insert_rows(session, rows)
    else:  # SQLite: the ids come with the insert; the rendered text (its links) follows
        insert_rows(session, rows)
        for row in rows:
            render(row)
    total = sum(row.parts for row in rows)
    reserve(session, account_id, CHANNEL, total, ref=_ref_of(rows), actor=origin)
    return Queued(rows, sorted(rejected, key=lambda r: r.index))


# Built once (building a statement costs more than running it on this path).
_CONTACTS_BY_PHONE = select(Contact).where(
    col(Contact.account_id) == bindparam("account"),
    col(Contact.phone).in_(bindparam("phones", expanding=True)),
)
_MESSAGES = Message.__table__  # type: ignore[attr-defined]


def _parts_within(text: str, settings: Settings) -> int:
    parts = analyse(text).parts
    if parts > settings.sms.max_parts:
        raise ValidationFailed(
            "the SMS is {parts} parts long, more than the {most} allowed: shorten the text "
            "(or replace the characters that force Unicode, which halves what fits in a part)",
            field="text",
            parts=parts,
            most=settings.sms.max_parts,
        )
    return parts


def _ref_of(rows: Sequence[Message]) -> str:
    ids = [row.id for row in rows if row.id is not None]
    if not ids:
        return "sms"
    return f"sms:{ids[0]}" if len(ids) == 1 else f"sms:{min(ids)}-{max(ids)}"


def enqueue_sms(message_ids: Sequence[int], *, settings: Settings | None = None) -> int:
    """Put queued SMS rows on the queue in batches; scheduled ones wait for the periodic
    :func:`enqueue_due_sms`."""
    from mailer.campaigns.tasks import send_sms

    settings = settings or get_settings()
    size = settings.sms.batch_size
    batches = [list(message_ids[i : i + size]) for i in range(0, len(message_ids), size)]
    for batch in batches:
        from mailer.core.queue import enqueue

        enqueue(send_sms, batch)
    return len(batches)


# -- SMS campaigns ---------------------------------------------------------------------------


def create_sms_campaign(
    session: Session,
    account_id: int,
    *,
    name: str,
    text: str,
    sender: str | None = None,
    list_id: int | None = None,
    segment_id: int | None = None,
    created_by: str = "",
    settings: Settings | None = None,
) -> Campaign:
    """A draft SMS campaign to a list and/or segment; its text is a sandboxed template."""
    from mailer.audience.service import get_list, get_segment

    settings = settings or get_settings()
    if not name.strip():
        raise ValidationFailed("the campaign needs a name", field="name")
    check_text(text)
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("account {id} does not exist", id=account_id)
    the_sender = sender_of(account, settings, sender)
    if list_id is None and segment_id is None:
        raise ValidationFailed("choose a list or a segment to send to", field="list_id")
    if list_id is not None:
        get_list(session, account_id, list_id)
    if segment_id is not None:
        get_segment(session, account_id, segment_id)
    campaign = Campaign(
        account_id=account_id,
        name=name.strip(),
        channel=CHANNEL,
        template_id=None,
        list_id=list_id,
        segment_id=segment_id,
        from_name=the_sender,
        from_email="",
        content={"text": text, "sender": the_sender},
        created_by=created_by,
    )
    session.add(campaign)
    session.flush()
    return campaign


def update_sms_campaign(
    session: Session, campaign: Campaign, *, text: str, sender: str | None = None
) -> Campaign:
    if campaign.state not in (CampaignState.DRAFT, CampaignState.SCHEDULED):
        raise ValidationFailed("only a draft or scheduled campaign can change", field="text")
    check_text(text)
    the_sender = check_sender(sender or (campaign.content or {}).get("sender", ""))
    campaign.content = {"text": text, "sender": the_sender}
    campaign.from_name = the_sender
    campaign.updated_at = utcnow()
    session.add(campaign)
    return campaign


def estimate_parts(text: str, settings: Settings, contact: Contact | None = None) -> int:
    """The parts of *text* for one recipient (a sample contact when none), with its links
    at their longest."""
    rendered = check_text(text).render({"contact": _contact_fields(contact, "+51900000000")})
    body, _ = shorten_links(rendered, settings.base_url, settings.secret_key, _ESTIMATE_ID)
    return analyse(body).parts


def start_sms_campaign(session: Session, campaign: Campaign, settings: Settings) -> Campaign:
    """Snapshot the SMS audience into the ledger and reserve its parts (an estimate from
    the first recipient; each batch adjusts to the exact count when it renders)."""
    from mailer.campaigns.service import _claim_transition, _transition

    assert campaign.id is not None
    content = campaign.content or {}
    check_text(content.get("text", ""))
    _claim_transition(session, campaign, CampaignState.SENDING)
    campaign.state_reason = ""
    now = utcnow()
    if campaign.started_at is None:
        recipients = email_audience(
            session,
            campaign.account_id,
            literal(campaign.account_id, Integer),
            literal(campaign.id, Integer),
            list_id=campaign.list_id,
            segment_id=campaign.segment_id,
            channel=CHANNEL,
        )
        first = session.execute(recipients.limit(1)).first()
        contact = session.get(Contact, first[2]) if first else None
        estimate = estimate_parts(content["text"], settings, contact)
        if estimate > settings.sms.max_parts:
            raise ValidationFailed(
                "the SMS is {parts} parts long, more than the {most} allowed: shorten the text",
                field="text",
                parts=estimate,
                most=settings.sms.max_parts,
            )
        recipients = recipients.add_columns(
            literal(CHANNEL, String),
            literal(MessageState.QUEUED.value, String),
            literal(0, Integer),
            literal(estimate, Integer),
            literal(now, UtcDateTime),
            literal(now, UtcDateTime),
        )
        columns = [
            "account_id",
            "campaign_id",
            "contact_id",
            "to_address",
            "to_name",
            "channel",
            "state",
            "attempts",
            "parts",
            "queued_at",
            "updated_at",
        ]
        session.execute(insert(Message).from_select(columns, recipients))
        campaign.started_at = now
        campaign.total = int(
            session.execute(
                select(func.count()).where(col(Message.campaign_id) == campaign.id)
            ).scalar_one()
        )
        reserve(
            session,
            campaign.account_id,
            CHANNEL,
            campaign.total * estimate,
            ref=f"campaign:{campaign.id}",
            actor=campaign.created_by,
        )
    if campaign.total == 0:
        _transition(session, campaign, CampaignState.COMPLETED)
        campaign.completed_at = now
    return campaign


# -- send ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmsBatchOutcome:
    claimed: int
    by_state: dict[MessageState, list[int]]


def _gateway_name(settings: Settings) -> str:
    if settings.sms.gateway:
        return settings.sms.gateway
    return settings.sms_gateways[0].name if settings.sms_gateways else CAPTURE_NAME


def _rendered_batch(
    session: Session,
    settings: Settings,
    rows: Sequence[Message],
    campaigns: dict[int, Campaign],
) -> tuple[list[SmsOutbound], dict[int, str]]:
    """The outbound messages of claimed rows (a campaign's rendered now, exactly), with the
    rows that could not be rendered (they fail) and why."""
    compiled: dict[int, CompiledText] = {}
    contact_ids = [r.contact_id for r in rows if r.contact_id is not None]
    contacts = {
        c.id: c
        for c in session.execute(select(Contact).where(col(Contact.id).in_(contact_ids))).scalars()
    }
    outbound: list[SmsOutbound] = []
    broken: dict[int, str] = {}
    validity = settings.sms.validity_hours * 3600
    for row in rows:
        assert row.id is not None
        if row.campaign_id is not None and row.payload is None:
            campaign = campaigns[row.campaign_id]
            content = campaign.content or {}
            try:
                template = compiled.get(row.campaign_id) or compile_text(content["text"])
                compiled[row.campaign_id] = template
                contact = contacts.get(row.contact_id) if row.contact_id else None
                rendered = template.render(
                    {
                        "contact": _contact_fields(contact, row.to_address),
                        "campaign": {"name": campaign.name, "id": campaign.id},
                    }
                )
                body, links = shorten_links(
                    rendered, settings.base_url, settings.secret_key, row.id
                )
                parts = _parts_within(body, settings)
            except MailerError as exc:
                broken[row.id] = str(exc)
                continue
            row.payload = {"text": body, "links": links, "sender": content.get("sender", "")}
            row.parts = parts
            session.add(row)
        payload = row.payload or {}
        outbound.append(
            SmsOutbound(
                ref=row.id,
                to=row.to_address,
                sender=str(payload.get("sender") or settings.sms.default_sender),
                text=str(payload.get("text", "")),
                validity_seconds=validity,
            )
        )
    return outbound, broken


def send_sms_batch(
    message_ids: Sequence[int], *, settings: Settings | None = None
) -> SmsBatchOutcome:
    """Send the still-unsent SMS rows among *message_ids*.  Idempotent: safe to run twice."""

    settings = settings or get_settings()
    with session_scope(settings) as session:
        claim = claim_batch(session, message_ids)
        if not claim.rows:
            return SmsBatchOutcome(0, {})
        rows = list(
            session.execute(
                select(Message).where(col(Message.id).in_([r.id for r in claim.rows]))
            ).scalars()
        )
        campaign_ids = {r.campaign_id for r in rows if r.campaign_id is not None}
        campaigns = {
            c.id: c
            for c in session.execute(
                select(Campaign).where(col(Campaign.id).in_(campaign_ids))
            ).scalars()
            if c.id is not None
        }
        # Paused or cancelled campaigns: their rows go back as they were.
        stopped = {i for i, c in campaigns.items() if c.state != CampaignState.SENDING}
        withheld = _withheld(session, rows)
        back = [r.id for r in rows if r.campaign_id in stopped and r.id is not None]
        if back:
            session.execute(
                update(Message)
                .where(col(Message.id).in_(back), col(Message.claim_token) == claim.token)
                .values(
                    state=MessageState.QUEUED,
                    claim_token=None,
                    attempts=col(Message.attempts) - 1,
                )
                .execution_options(synchronize_session=False)
            )
        gone = set(back) | set(withheld)
        claim = withdraw_claimed(
            session, claim, withheld, "unsubscribed from SMS or suppressed before the send"
        )
        _release_rows(session, [r for r in rows if r.id in withheld], "withheld")
        rows = [r for r in rows if r.id not in gone]
        before = {r.id: r.parts for r in rows}
        outbound, broken = _rendered_batch(session, settings, rows, campaigns)
        _adjust_reservation(session, rows, before)
        failures = [
            DeliveryResult(i, DeliveryStatus.REJECTED, text=why[:1000]) for i, why in broken.items()
        ]
    gateway = _gateway_name(settings)
    submitted: list[SubmitResult] = []
    if outbound:
        try:
            submitted = gateway_loop(settings).submit(
                gateway, outbound, timeout=settings.sms.submit_timeout_seconds
            )
        except MailerError as exc:  # the gateway is not there: everything waits
            log.warning("SMS gateway %s unavailable: %s", gateway, exc)
            submitted = [
                SubmitResult(m.ref, "deferred", text=str(exc), retry_after=60.0) for m in outbound
            ]
    # What the gateway took must be recorded: a transaction that loses a deadlock or a
    # serialisation conflict to the receipts of another process is run again, never
    # given up (the rows would wait for their lease and be submitted twice).
    by_state = _retrying(
        settings,
        lambda session: _record_submits(session, settings, gateway, claim, submitted, failures),
    )
    recorded = [i for r in submitted if r.status == "submitted" for i in r.provider_ids]
    if recorded:
        # Receipts stored as pending while this batch's parts were not committed yet.
        _retrying(
            settings,
            lambda session: match_pending_receipts(session, settings, provider_ids=recorded),
        )
    for campaign_id in campaigns:
        _retrying(settings, functools.partial(_complete_if_done, campaign_id))
    return SmsBatchOutcome(len(claim.rows), by_state)


def _complete_if_done(campaign_id: int, session: Session) -> bool:
    from mailer.campaigns.service import complete_if_done

    return complete_if_done(session, campaign_id)


_T = TypeVar("_T")
RETRIES = 8


def _retrying(settings: Settings, work: Callable[[Session], _T]) -> _T:
    """Run *work* in a transaction, again (with a short random pause) when the database
    refuses it for a transient reason: a deadlock, a serialisation failure, a busy SQLite."""
    for attempt in range(RETRIES):
        try:
            with session_scope(settings) as session:
                return work(session)
        except OperationalError as exc:
            if attempt == RETRIES - 1:
                raise
            log.warning("SMS ledger write retried (%s): %s", attempt + 1, exc.orig)
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")


def _withheld(session: Session, rows: Sequence[Message]) -> list[int]:
    """Rows whose number left SMS (BAJA) or was suppressed after they were queued."""
    withheld: list[int] = []
    by_account: dict[int, list[Message]] = {}
    for row in rows:
        by_account.setdefault(row.account_id, []).append(row)
    for account_id, mine in by_account.items():
        blocked = suppressed_among(session, account_id, CHANNEL, [r.to_address for r in mine])
        contact_ids = [r.contact_id for r in mine if r.contact_id is not None]
        inactive = set(
            session.execute(
                select(col(Contact.id)).where(
                    col(Contact.id).in_(contact_ids),
                    col(Contact.sms_status) != ChannelStatus.ACTIVE,
                )
            ).scalars()
        )
        for row in mine:
            if row.origin.startswith("keyword:"):
                continue  # the acknowledgement of a BAJA goes to a number that just left
            if row.to_address in blocked or row.contact_id in inactive:
                assert row.id is not None
                withheld.append(row.id)
    return withheld


def _adjust_reservation(
    session: Session, rows: Sequence[Message], before: Mapping[int | None, int]
) -> None:
    """Reserve or release the difference between the estimated and the exact parts."""
    per_account: dict[int, int] = {}
    for row in rows:
        delta = row.parts - before.get(row.id, row.parts)
        if delta:
            per_account[row.account_id] = per_account.get(row.account_id, 0) + delta
    for account_id, delta in per_account.items():
        if delta > 0:
            reserve(session, account_id, CHANNEL, delta, ref="sms:exact parts")
        else:
            settle(session, account_id, CHANNEL, released=-delta, ref="sms:exact parts")


def _release_rows(session: Session, rows: Iterable[Message], why: str) -> None:
    per_account: dict[int, int] = {}
    for row in rows:
        per_account[row.account_id] = per_account.get(row.account_id, 0) + row.parts
    for account_id, parts in per_account.items():
        settle(session, account_id, CHANNEL, released=parts, ref=f"sms:{why}")


def _retry_at(settings: Settings, attempts: int, hint: float | None) -> datetime:
    seconds = hint if hint else settings.sms.retry_seconds * 2 ** max(0, attempts - 1)
    return utcnow() + timedelta(seconds=min(seconds, 3600))


def _record_submits(
    session: Session,
    settings: Settings,
    gateway: str,
    claim: Any,
    submitted: Sequence[SubmitResult],
    failures: Sequence[DeliveryResult],
) -> dict[MessageState, list[int]]:
    attempts = {row.id: row.attempts for row in claim.rows}
    results = list(failures)
    for result in submitted:
        if result.status == "submitted":
            results.append(
                DeliveryResult(
                    result.ref,
                    DeliveryStatus.ACCEPTED,
                    code=result.code,
                    text=result.text,
                    relay=gateway,
                    provider_id=result.provider_ids[0] if result.provider_ids else None,
                )
            )
        elif result.status == "deferred":
            retry = _retry_at(settings, attempts.get(result.ref, 1), result.retry_after)
            results.append(
                DeliveryResult(
                    result.ref,
                    DeliveryStatus.DEFERRED,
                    code=result.code,
                    text=result.text,
                    relay=gateway,
                    retry_at=retry,
                )
            )
        else:
            results.append(
                DeliveryResult(
                    result.ref,
                    DeliveryStatus.REJECTED,
                    code=result.code,
                    text=result.text,
                    relay=gateway,
                )
            )
    by_state = record_results(session, claim, results, max_attempts=settings.max_attempts)
    sent = by_state.get(MessageState.SENT, [])
    failed = by_state.get(MessageState.FAILED, [])
    provider_ids: list[str] = []
    parts_rows = []
    for result in submitted:
        if result.ref in sent or (result.ref in failed and result.provider_ids):
            for number, provider_id in enumerate(result.provider_ids, start=1):
                provider_ids.append(provider_id)
                parts_rows.append(
                    {
                        "message_id": result.ref,
                        "part": number,
                        "gateway": gateway,
                        "provider_id": provider_id,
                        "state": "submitted" if result.ref in sent else "rejected",
                        "error": "",
                        "updated_at": utcnow(),
                    }
                )
    if parts_rows:
        session.execute(insert(SmsPart), parts_rows)
    rows = {
        r.id: r
        for r in session.execute(
            select(Message).where(col(Message.id).in_(sent + failed))
        ).scalars()
    }
    details = {r.ref: {"gateway": gateway, "parts": len(r.provider_ids)} for r in submitted}
    errors = {r.message_id: {"code": r.code, "text": r.text} for r in results}
    for kind, ids in ((EventKind.SMS_SUBMITTED, sent), (EventKind.FAILED, failed)):
        for (account_id, campaign_id), group in _grouped(rows, ids).items():
            append_many(
                session,
                account_id,
                kind,
                group,
                campaign_id=campaign_id,
                data={
                    i: {**details.get(i, {}), **errors.get(i, {}), "channel": CHANNEL}
                    for i in group
                },
                contact_ids={i: rows[i].contact_id for i in group},
            )
    session.flush()
    if provider_ids:
        match_pending_receipts(session, settings, provider_ids=provider_ids)
    # The allowance last: its row is every process's, so it is locked for the least time
    # (and always after the messages' rows: one order of locks, no deadlock).
    _release_rows(session, [rows[i] for i in failed if i in rows], "failed")
    return by_state


def _grouped(
    rows: Mapping[int | None, Message], ids: Iterable[int]
) -> dict[tuple[int, int | None], list[int]]:
    groups: dict[tuple[int, int | None], list[int]] = {}
    for i in ids:
        row = rows.get(i)
        if row is not None:
            groups.setdefault((row.account_id, row.campaign_id), []).append(i)
    return groups


# -- receipts ---------------------------------------------------------------------------------


def apply_receipts(
    session: Session, settings: Settings, receipts: Sequence[Receipt]
) -> dict[str, int]:
    """Match receipts to their parts; settle the messages whose parts are all final.

    A receipt whose part is not known yet (it came before the submit was recorded) is
    kept in ``sms_pending_receipts`` and applied when the part appears.  A repeated
    receipt changes nothing.  Returns counts: matched, pending, delivered, undelivered.
    The parts of the whole batch are read in one locked query.
    """
    counts = {"matched": 0, "pending": 0, "delivered": 0, "undelivered": 0, "late": 0}
    parts = _parts_for(session, receipts)
    touched: set[int] = set()
    for receipt in receipts:
        part = next(
            (
                parts[(receipt.gateway, i)]
                for i in (receipt.provider_id, *receipt.alt_ids)
                if (receipt.gateway, i) in parts
            ),
            None,
        )
        if part is None:
            session.add(
                PendingReceipt(
                    gateway=receipt.gateway,
                    provider_id=receipt.provider_id,
                    state=receipt.state,
                    final=receipt.final,
                    error=receipt.error[:100],
                    text=receipt.text[:500],
                    alt_ids=",".join(receipt.alt_ids)[:200],
                )
            )
            counts["pending"] += 1
            continue
        counts["matched"] += 1
        if part.state in FINAL_STATES:
            continue  # a repeated receipt
        part.state = receipt.state
        part.error = receipt.error[:100]
        part.updated_at = utcnow()
        session.add(part)
        if receipt.final:
            touched.add(part.message_id)
    session.flush()
    if touched:
        for key, n in _settle_messages(session, sorted(touched)).items():
            counts[key] += n
    return counts


def _parts_for(session: Session, receipts: Sequence[Receipt]) -> dict[tuple[str, str], SmsPart]:
    """The parts the receipts name (by id or an alternative writing of it), by (gateway,
    id), the latest part of an id winning.  Locked: a receipt applied twice at once (a
    redelivery, a pending one matched from both sides) waits and then sees it final."""
    ids = {i for r in receipts for i in (r.provider_id, *r.alt_ids) if i}
    found: dict[tuple[str, str], SmsPart] = {}
    if not ids:
        return found
    rows = session.execute(
        select(SmsPart)
        .where(col(SmsPart.provider_id).in_(sorted(ids)))
        .order_by(col(SmsPart.id))
        .with_for_update()
    ).scalars()
    gateways = {r.gateway for r in receipts}
    for part in rows:
        found[(part.gateway, part.provider_id)] = part
        if "" in gateways:  # a receipt that does not say its gateway
            found[("", part.provider_id)] = part
    return found


def _settle_messages(session: Session, message_ids: Sequence[int]) -> dict[str, int]:
    counts = {"delivered": 0, "undelivered": 0, "late": 0}
    parts: dict[int, list[SmsPart]] = {}
    for part in session.execute(
        select(SmsPart).where(col(SmsPart.message_id).in_(list(message_ids)))
    ).scalars():
        parts.setdefault(part.message_id, []).append(part)
    rows = {
        r.id: r
        for r in session.execute(
            select(Message).where(col(Message.id).in_(list(message_ids))).with_for_update()
        ).scalars()
    }
    now = utcnow()
    finished: dict[MessageState, list[int]] = {}
    charged: dict[int, int] = {}
    released: dict[int, int] = {}
    errors: dict[int, dict[str, Any]] = {}
    for message_id, mine in parts.items():
        row = rows.get(message_id)
        if row is None or any(p.state not in FINAL_STATES for p in mine):
            continue
        if len(mine) < max(1, row.parts) and all(p.state == "delivered" for p in mine):
            continue  # a part's submit is not recorded yet
        if row.state != MessageState.SENT:
            counts["late"] += 1  # already expired (or settled): an event says it came
            continue
        if all(p.state == "delivered" for p in mine):
            state = MessageState.DELIVERED
            charged[row.account_id] = charged.get(row.account_id, 0) + row.parts
            counts["delivered"] += 1
        else:
            state = (
                MessageState.EXPIRED
                if all(p.state in ("delivered", "expired") for p in mine)
                else MessageState.UNDELIVERED
            )
            released[row.account_id] = released.get(row.account_id, 0) + row.parts
            counts["undelivered"] += 1
            bad = next(p for p in mine if p.state != "delivered")
            errors[message_id] = {"state": bad.state, "error": bad.error}
        MESSAGE_STATE.check(MessageState.SENT, state)
        row.state = state
        row.final_at = now
        row.updated_at = now
        session.add(row)
        finished.setdefault(state, []).append(message_id)
    for account_id in set(charged) | set(released):
        settle(
            session,
            account_id,
            CHANNEL,
            charged=charged.get(account_id, 0),
            released=released.get(account_id, 0),
            ref="sms:receipts",
        )
    for state, ids in finished.items():
        kind = (
            EventKind.SMS_DELIVERED
            if state is MessageState.DELIVERED
            else (EventKind.SMS_UNDELIVERED)
        )
        for (account_id, campaign_id), group in _grouped(rows, ids).items():
            append_many(
                session,
                account_id,
                kind,
                group,
                campaign_id=campaign_id,
                data={i: {"state": state.value, **errors.get(i, {})} for i in group},
                contact_ids={i: rows[i].contact_id for i in group},
                now=now,
            )
    return counts


def match_pending_receipts(
    session: Session,
    settings: Settings,
    *,
    provider_ids: Sequence[str] | None = None,
    limit: int = 5000,
) -> int:
    """Apply the receipts that came before the parts they speak of were recorded (a
    receipt and its submit can commit in either order; a fast SMSC answers before a batch
    of submits is recorded); returns how many were applied.  After a batch of submits,
    *provider_ids* are its parts' ids (one indexed lookup, their decimal writings
    included); the periodic job passes none and goes through the oldest pending ones."""
    query = select(PendingReceipt)
    if provider_ids is not None:
        if not provider_ids:
            return 0
        writings = set(provider_ids)
        writings.update(d for d in map(hex_id_to_decimal, provider_ids) if d)
        query = query.where(col(PendingReceipt.provider_id).in_(sorted(writings)))
    pending = list(session.execute(query.order_by(col(PendingReceipt.id)).limit(limit)).scalars())
    if not pending:
        return 0
    receipts = {
        item.id: Receipt(
            provider_id=item.provider_id,
            state=item.state,  # type: ignore[arg-type]
            final=item.final,
            error=item.error,
            text=item.text,
            gateway=item.gateway,
            alt_ids=tuple(i for i in item.alt_ids.split(",") if i),
        )
        for item in pending
    }
    parts = _parts_for(session, list(receipts.values()))
    ready: list[Receipt] = []
    for item in pending:
        receipt = receipts[item.id]
        if any((receipt.gateway, i) in parts for i in (receipt.provider_id, *receipt.alt_ids)):
            session.delete(item)
            ready.append(receipt)
    if ready:
        session.flush()
        apply_receipts(session, settings, ready)
    return len(ready)


def _match_by_receipt_ids(session: Session, settings: Settings, ids: Sequence[str]) -> int:
    """After receipts were stored as pending: the ones whose parts exist by now."""
    if not ids:
        return 0
    pending = list(
        session.execute(
            select(PendingReceipt).where(col(PendingReceipt.provider_id).in_(sorted(set(ids))))
        ).scalars()
    )
    if not pending:
        return 0
    return match_pending_receipts(session, settings, provider_ids=[p.provider_id for p in pending])


def expire_sms(session: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Submitted SMS with no final receipt within the validity period become ``expired``
    (their parts are released); old unmatched receipts are dropped."""
    now = now or utcnow()
    cutoff = now - timedelta(hours=settings.sms.validity_hours)
    rows = list(
        session.execute(
            select(Message)
            .where(
                col(Message.channel) == CHANNEL,
                col(Message.state) == MessageState.SENT,
                col(Message.sent_at) < cutoff,
            )
            .limit(10_000)
            .with_for_update()
        ).scalars()
    )
    for row in rows:
        row.state = MessageState.EXPIRED
        row.final_at = now
        row.updated_at = now
        session.add(row)
    _release_rows(session, rows, "expired")
    by_id = {r.id: r for r in rows}
    for (account_id, campaign_id), group in _grouped(by_id, list(by_id)).items():
        append_many(
            session,
            account_id,
            EventKind.SMS_UNDELIVERED,
            group,
            campaign_id=campaign_id,
            data={i: {"state": "expired"} for i in group},
            contact_ids={i: by_id[i].contact_id for i in group},
            now=now,
        )
    session.execute(
        PendingReceipt.__table__.delete().where(  # type: ignore[attr-defined]
            col(PendingReceipt.received_at) < cutoff
        )
    )
    return len(rows)


def due_sms(session: Session, *, now: datetime | None = None, limit: int = 50_000) -> list[int]:
    """SMS rows to (re)send now: deferred and due (retries, scheduled sends), and queued
    rows whose queue message may have been lost (older than a minute)."""
    now = now or utcnow()
    return list(
        session.execute(
            select(col(Message.id))
            .outerjoin(Campaign, col(Campaign.id) == col(Message.campaign_id))
            .where(
                col(Message.channel) == CHANNEL,
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
                or_(
                    col(Message.campaign_id).is_(None),
                    col(Campaign.state) == CampaignState.SENDING,
                ),
            )
            .order_by(col(Message.id))
            .limit(limit)
        ).scalars()
    )


# -- replies ------------------------------------------------------------------------------


def _folded(text: str) -> str:
    """Upper case, without accents or punctuation around: 'Bájá!' -> 'BAJA'."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[^\w]+", " ", plain).strip().upper()


def keyword_of(text: str, stop: Iterable[str], start: Iterable[str]) -> tuple[str, str]:
    """(keyword, action) when the reply is a keyword: the whole text, or its first word,
    folded (case, accents and punctuation ignored)."""
    folded = _folded(text)
    if not folded:
        return "", ""
    candidates = (folded, folded.split(" ", 1)[0])
    for action, words in (("unsubscribed", stop), ("resubscribed", start)):
        folded_words = {_folded(w) for w in words if _folded(w)}
        for candidate in candidates:
            if candidate in folded_words:
                return candidate, action
    return "", ""


def _keywords(account: Account, settings: Settings) -> tuple[list[str], list[str]]:
    own = account.sms_keywords or {}
    return (
        list(own.get("stop") or settings.sms.stop_keywords),
        list(own.get("start") or settings.sms.start_keywords),
    )


def handle_inbound_sms(
    session: Session, settings: Settings, inbound: Inbound
) -> tuple[InboundSms, list[int]]:
    """Store a reply and act on its keyword; returns the stored reply and the ids of the
    acknowledgement SMS queued (the caller commits, then :func:`enqueue_sms`)."""
    verdict = check_phone(inbound.sender, settings.sms.default_region)
    number = verdict.e164 if verdict.ok else inbound.sender
    replied = session.execute(
        select(Message)
        .where(col(Message.channel) == CHANNEL, col(Message.to_address) == number)
        .order_by(col(Message.id).desc())
        .limit(1)
    ).scalar_one_or_none()
    account: Account | None = None
    if replied is not None:
        account = session.get(Account, replied.account_id)
    if account is None and inbound.to:
        account = session.execute(
            select(Account).where(col(Account.sms_sender) == inbound.to).limit(1)
        ).scalar_one_or_none()
    if account is None:
        account = (
            session.execute(
                select(Account).where(col(Account.parent_id).is_(None)).order_by(col(Account.id))
            )
            .scalars()
            .first()
        )
    if account is None or account.id is None:
        raise NotFound("no account to file the reply from {sender} under", sender=number)
    contact = session.execute(
        select(Contact).where(col(Contact.account_id) == account.id, col(Contact.phone) == number)
    ).scalar_one_or_none()
    stop, start = _keywords(account, settings)
    keyword, action = keyword_of(inbound.text, stop, start)
    changed = False
    if action == "unsubscribed":
        if contact is not None and contact.sms_status == ChannelStatus.ACTIVE:
            changed = set_channel_status(
                session, contact, CHANNEL, ChannelStatus.UNSUBSCRIBED, source=f"sms:{keyword}"
            )
        else:
            suppress(
                session,
                account.id,
                CHANNEL,
                [number],
                SuppressionReason.UNSUBSCRIBED,
                f"sms:{keyword}",
            )
            changed = True
    elif action == "resubscribed":
        if contact is not None and contact.sms_status == ChannelStatus.UNSUBSCRIBED:
            changed = set_channel_status(
                session, contact, CHANNEL, ChannelStatus.ACTIVE, source=f"sms:{keyword}"
            )
        elif contact is None:
            changed = unsuppress(session, account.id, CHANNEL, number)
    reply = InboundSms(
        account_id=account.id,
        contact_id=contact.id if contact else None,
        message_id=replied.id if replied else None,
        campaign_id=replied.campaign_id if replied else None,
        sender=number[:32],
        recipient=inbound.to[:32],
        text=inbound.text[:2000],
        keyword=keyword,
        action=action if changed else "",
        gateway=inbound.gateway[:64],
        received_at=inbound.received_at,
    )
    session.add(reply)
    append(
        session,
        account.id,
        EventKind.SMS_INBOUND,
        campaign_id=reply.campaign_id,
        message_id=reply.message_id,
        contact_id=reply.contact_id,
        sender=number,
        text=inbound.text[:500],
        keyword=keyword,
        action=reply.action,
    )
    if action == "unsubscribed" and contact is not None:
        append(
            session,
            account.id,
            EventKind.UNSUBSCRIBED,
            campaign_id=reply.campaign_id,
            message_id=reply.message_id,
            contact_id=contact.id,
            source=f"sms:{keyword}",
            channel=CHANNEL,
        )
    session.flush()
    acks: list[int] = []
    template = {"unsubscribed": settings.sms.stop_reply, "resubscribed": settings.sms.start_reply}
    ack_text = template.get(action, "") if changed else ""
    if ack_text and verdict.ok and verdict.sms_ok:
        try:
            queued = queue_sms(
                session,
                account.id,
                [number],
                ack_text.replace("{account}", account.name),
                origin=f"keyword:{keyword}",
                ignore_status=True,
                settings=settings,
            )
            acks = [m.id for m in queued.messages if m.id is not None]
        except MailerError as exc:  # no allowance left for the acknowledgement
            log.warning("no acknowledgement for %s's %s: %s", number, keyword, exc)
    return reply, acks


# -- the gateways of this process ---------------------------------------------------------

_loop: GatewayLoop | None = None
_loop_key = ""
_loop_lock = threading.Lock()


def gateway_loop(settings: Settings) -> GatewayLoop:
    """This process's SMS gateways (bound on first use, kept between batches): the
    configured ``sms_gateways``, or the capture gateway when there are none.  What they
    report is written here in batches, before the gateway acknowledges it."""
    global _loop, _loop_key
    key = f"{settings.effective_database_url}|{[g.name for g in settings.sms_gateways]}"
    with _loop_lock:
        if _loop is not None and _loop_key != key:
            _loop.close()
            _loop = None
        if _loop is None:
            gateways = gateways_from_settings(settings)
            if not gateways:
                gateways = {CAPTURE_NAME: CaptureGateway()}
            _loop = GatewayLoop(
                gateways,
                functools.partial(_store_receipts, settings),
                functools.partial(_store_inbound, settings),
            )
            _loop_key = key
        return _loop


def close_gateway_loop() -> None:
    """Unbind and stop this process's gateways (at shutdown; tests between settings)."""
    global _loop
    with _loop_lock:
        if _loop is not None:
            _loop.close()
            _loop = None


atexit.register(close_gateway_loop)


def _store_receipts(settings: Settings, receipts: Sequence[Receipt]) -> None:
    counts = _retrying(settings, lambda session: apply_receipts(session, settings, receipts))
    if counts["pending"]:  # their submits may have committed meanwhile
        ids = [i for r in receipts for i in (r.provider_id, *r.alt_ids)]
        _retrying(settings, lambda session: _match_by_receipt_ids(session, settings, ids))


def _store_inbound(settings: Settings, replies: Sequence[Inbound]) -> None:
    acks: list[int] = []
    with session_scope(settings) as session:
        for reply in replies:
            acks.extend(handle_inbound_sms(session, settings, reply)[1])
    if acks:
        try:
            enqueue_sms(acks, settings=settings)
        except Exception:  # the periodic job sends them within a minute
            log.exception("could not enqueue SMS acknowledgements")


# -- reports ----------------------------------------------------------------------------------


def sms_campaign_stats(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Delivered, pending (submitted, no final receipt), not delivered, replies, clicks."""
    assert campaign.id is not None
    states = dict(
        session.execute(
            select(col(Message.state), func.count())
            .where(col(Message.campaign_id) == campaign.id)
            .group_by(col(Message.state))
        ).all()
    )
    parts = dict(
        session.execute(
            select(col(Message.state), func.coalesce(func.sum(col(Message.parts)), 0))
            .where(col(Message.campaign_id) == campaign.id)
            .group_by(col(Message.state))
        ).all()
    )
    from mailer.events.models import Event

    clicks = session.execute(
        select(
            func.count(),
            func.count(func.distinct(col(Event.message_id))),
        ).where(
            col(Event.campaign_id) == campaign.id,
            col(Event.kind) == EventKind.CLICKED,
            col(Event.machine).is_(False),
        )
    ).one()
    replies = session.execute(
        select(func.count(), func.count(func.nullif(col(InboundSms.action), ""))).where(
            col(InboundSms.campaign_id) == campaign.id
        )
    ).one()

    def n(*names: str) -> int:
        return sum(int(states.get(s, 0)) for s in names)

    total = campaign.total or sum(int(v) for v in states.values())
    delivered = n("delivered")
    return {
        "recipients": total,
        "queued": n("queued", "sending", "deferred"),
        "submitted": n("sent", "delivered", "undelivered", "expired"),
        "pending": n("sent"),
        "delivered": delivered,
        "undelivered": n("undelivered"),
        "expired": n("expired"),
        "failed": n("failed"),
        "cancelled": n("cancelled"),
        "not_delivered": n("undelivered", "expired", "failed"),
        "parts_charged": int(parts.get("delivered", 0)),
        "clicks": int(clicks[0]),
        "unique_clicks": int(clicks[1]),
        "replies": int(replies[0]),
        "keyword_replies": int(replies[1]),
        "delivery_rate": delivered / total if total else 0.0,
    }


def replies_of(
    session: Session, account_id: int, *, campaign_id: int | None = None, limit: int = 100
) -> list[InboundSms]:
    query = select(InboundSms).where(col(InboundSms.account_id) == account_id)
    if campaign_id is not None:
        query = query.where(col(InboundSms.campaign_id) == campaign_id)
    return list(session.execute(query.order_by(col(InboundSms.id).desc()).limit(limit)).scalars())


def get_sms(session: Session, account_id: int, message_id: int) -> tuple[Message, list[SmsPart]]:
    row = session.get(Message, message_id)
    if row is None or row.account_id != account_id or row.channel != CHANNEL:
        raise NotFound("SMS {id} does not exist", id=message_id)
    parts = list(
        session.execute(
            select(SmsPart).where(col(SmsPart.message_id) == message_id).order_by(col(SmsPart.part))
        ).scalars()
    )
    return row, parts


def link_target(session: Session, message_id: int, link_index: int) -> tuple[Message, str] | None:
    """The row and URL a short link leads to (None when the code names nothing)."""
    row = session.get(Message, message_id)
    if row is None or row.channel != CHANNEL:
        return None
    links = (row.payload or {}).get("links") or []
    if not 0 <= link_index < len(links):
        return None
    return row, str(links[link_index])


def display_state(state: str) -> str:
    """The SMS name of a ledger state ("sent" is "submitted" for an SMS)."""
    return "submitted" if state == MessageState.SENT else state


def recent_single_sms(session: Session, account_id: int, limit: int) -> list[Message]:
    """The latest SMS sent alone (API, portal numbers, keyword acknowledgements)."""
    return list(
        session.execute(
            select(Message)
            .where(
                col(Message.account_id) == account_id,
                col(Message.channel) == CHANNEL,
                col(Message.campaign_id).is_(None),
            )
            .order_by(col(Message.id).desc())
            .limit(limit)
        ).scalars()
    )


def sms_state(row: Message) -> str:
    """The state a person reads for an SMS row: "scheduled" for a send that waits for its
    time, "submitted" for one the gateway took."""
    if (
        row.state == MessageState.DEFERRED
        and row.attempts == 0
        and row.next_attempt_at is not None
        and row.next_attempt_at > utcnow()
    ):
        return "scheduled"
    return display_state(row.state)
