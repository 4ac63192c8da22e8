"""What an inbound message does: a bounce, a delay notice, a complaint or a mailto
unsubscribe, acted on against the message ledger.

:func:`handle_inbound` decides by the envelope recipient first:

- ``unsubscribe+TOKEN@...``: the ``mailto:`` of ``List-Unsubscribe`` (RFC 2369; the one-click
  POST of RFC 8058 is tracking's): the row's contact is unsubscribed, once;
- ``bounces+TOKEN@...`` (the VERP return path) or ``bounces@...``: a report about a campaign
  message (DSN, non-standard bounce, ARF, auto-reply), parsed and matched to its ledger row;
- anything else (the feedback-loop address): a report matched by what it carries of the
  original message (its VERP return path or its Message-ID).

How a report finds its row, most trusted first: the envelope's VERP token, the VERP return
path in the returned copy, the original Message-ID (``m<id>.<mac>@...``), all signed by
:mod:`mailer.delivery.verp`.  A token that does not verify is a forgery: nothing at all is
done for it.  Only when the envelope carries no token (``bounces@``) does a bounce fall back
to its failed address, among the rows sent to that address in the last
:data:`RECENT_DAYS` days; that match is unsigned, so it never suppresses at once (it counts
as a soft bounce, whatever the classification).

Effects, all idempotent (a report delivered twice records once):

- bounce: ledger row SENT -> BOUNCED, a ``bounced`` event (hard, reason, status, code, text,
  source "dsn"), then :func:`mailer.bounces.policy.apply_bounce`;
- delayed: a ``delayed`` event only (no state change, no suppression);
- complaint: a ``complained`` event, then :func:`mailer.bounces.policy.apply_complaint`;
- auto-reply, positive DSN, unknown: nothing recorded; the outcome says what it was.

A report for a row whose send outcome is not recorded yet (the relay's DSN can overtake the
worker's bulk update) asks the caller to retry later (:attr:`InboundOutcome.retry_later`):
the receiver answers 451 and the sending MTA brings it back.

Nothing here commits: the caller's session does, before it answers the sending MTA.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from mailer.accounts.models import Account
from mailer.audience.models import CHANNEL_STATUS, ChannelStatus, Contact
from mailer.audience.service import set_channel_status
from mailer.audience.suppression import SuppressionReason, is_suppressed, suppress
from mailer.bounces.classify import find_reply_code
from mailer.bounces.parser import Recipient, Report, parse_message
from mailer.bounces.policy import apply_bounce, apply_complaint
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.delivery.verp import header_message_id, parse_return_path
from mailer.events.models import Event, EventKind
from mailer.events.service import append_many
from mailer.messages.models import MESSAGE_STATE, Message, MessageState

__all__ = [
    "BOUNCE_LOCAL",
    "RECENT_DAYS",
    "UNSUBSCRIBE_LOCAL",
    "InboundOutcome",
    "Route",
    "handle_inbound",
]

log = logging.getLogger(__name__)

RECENT_DAYS = 7
"""How far back a bounce without a token looks for a row sent to its failed address."""

BOUNCE_LOCAL = "bounces"
UNSUBSCRIBE_LOCAL = "unsubscribe"

# The send outcome of a row in these states is not recorded yet: a report about it comes
# back later (the MTA retries), when the row says whether it was sent.
_NOT_YET = frozenset({MessageState.QUEUED, MessageState.SENDING, MessageState.DEFERRED})


class Route(StrEnum):
    """Which door a message came in by (its envelope recipient)."""

    BOUNCE = "bounce"  # bounces+TOKEN@ or bounces@
    UNSUBSCRIBE = "unsubscribe"  # unsubscribe+TOKEN@
    FEEDBACK = "feedback"  # the feedback-loop address, or anything else


@dataclass(slots=True)
class InboundOutcome:
    """What one inbound message was and what it did.

    ``kind`` is the report's kind ("bounce", "complaint", "delayed", "autoreply",
    "delivered", "unknown") or "unsubscribe"; ``message_ids`` the ledger rows it was matched
    to and ``matched_by`` how ("verp", "return-path", "message-id", "recipient", "" for
    none); ``recorded`` the events written and ``changed`` the contacts whose status changed
    (bounced, complained, unsubscribed).  ``note`` says why nothing was done, when nothing
    was.  ``retry_later``: the row's send is not recorded yet, answer with a 4xx."""

    route: Route
    kind: str
    message_ids: list[int] = field(default_factory=list)
    matched_by: str = ""
    recorded: int = 0
    changed: int = 0
    note: str = ""
    retry_later: bool = False


def handle_inbound(
    session: Session,
    settings: Settings,
    mail_from: str,
    rcpt_tos: Sequence[str],
    data: bytes,
    *,
    now: datetime | None = None,
) -> InboundOutcome:
    """Act on one inbound message (see the module docstring); flushes, never commits."""
    now = now or utcnow()
    unsubscribe_tokens = [t for r, t in map(_route_of, rcpt_tos) if r is Route.UNSUBSCRIBE]
    if unsubscribe_tokens:
        outcome = _unsubscribe(session, settings, mail_from, unsubscribe_tokens, now)
    else:
        bounce_tokens = [t for r, t in map(_route_of, rcpt_tos) if r is Route.BOUNCE]
        route = Route.BOUNCE if bounce_tokens else Route.FEEDBACK
        presented = [t for t in bounce_tokens if t]
        outcome = _report(session, settings, route, presented, parse_message(data), now)
    log.info(
        "inbound %s: %s, rows %s by %s, %d recorded, %d changed%s",
        outcome.route,
        outcome.kind,
        outcome.message_ids,
        outcome.matched_by or "-",
        outcome.recorded,
        outcome.changed,
        f" ({outcome.note})" if outcome.note else "",
    )
    return outcome


def _route_of(address: str) -> tuple[Route, str]:
    """The route of one envelope recipient and the token its local part carries ("" none)."""
    local = address.strip().strip("<>").rpartition("@")[0].lower()
    name, plus, token = local.partition("+")
    if name == UNSUBSCRIBE_LOCAL and plus:
        return Route.UNSUBSCRIBE, token
    if name == BOUNCE_LOCAL:
        return Route.BOUNCE, token
    return Route.FEEDBACK, ""


def _ledger_id(settings: Settings, token: str) -> int | None:
    """The ledger id a VERP token names, or None if it is not ours or forged."""
    return parse_return_path(settings.secret_key, f"{BOUNCE_LOCAL}+{token}@inbound")


# --- mailto unsubscribe ---------------------------------------------------------------------


def _unsubscribe(
    session: Session, settings: Settings, mail_from: str, tokens: list[str], now: datetime
) -> InboundOutcome:
    outcome = InboundOutcome(Route.UNSUBSCRIBE, "unsubscribe")
    if not mail_from.strip().strip("<>"):
        # A null sender is a bounce or an auto-reply, not a person asking to leave.
        outcome.note = "null sender: not an unsubscribe request"
        return outcome
    for token in dict.fromkeys(tokens):
        row = _row(session, _ledger_id(settings, token))
        if row is None or row.id is None:
            outcome.note = "forged or unknown token"
            continue
        outcome.message_ids.append(row.id)
        outcome.matched_by = "verp"
        contact = session.get(Contact, row.contact_id) if row.contact_id is not None else None
        if contact is None or contact.account_id != row.account_id:
            outcome.note = "the row has no contact any more"
            continue
        if _unsubscribe_contact(session, contact, row.id):
            _event(session, row, EventKind.UNSUBSCRIBED, now=now, source="mailto")
            outcome.recorded += 1
            outcome.changed += 1
        else:
            outcome.note = "already unsubscribed"
    return outcome


def _unsubscribe_contact(session: Session, contact: Contact, message_id: int) -> bool:
    """Unsubscribe from every mail, as the one-click link does; False if nothing changed.

    A complained contact is already unsubscribed and suppressed (a complaint says more than an
    unsubscribe: it stays); an invalid one cannot move, its address goes on the list."""
    source = f"mailto:message:{message_id}"
    status = ChannelStatus(contact.email_status)
    if status in (ChannelStatus.UNSUBSCRIBED, ChannelStatus.COMPLAINED):
        return False
    if CHANNEL_STATUS.allowed(status, ChannelStatus.UNSUBSCRIBED):
        return set_channel_status(
            session, contact, "email", ChannelStatus.UNSUBSCRIBED, source=source
        )
    if is_suppressed(session, contact.account_id, "email", contact.email):
        return False
    suppress(
        session,
        contact.account_id,
        "email",
        [contact.email],
        SuppressionReason.UNSUBSCRIBED,
        source,
    )
    return True


# --- reports --------------------------------------------------------------------------------


def _report(
    session: Session,
    settings: Settings,
    route: Route,
    presented: list[str],
    report: Report,
    now: datetime,
) -> InboundOutcome:
    outcome = InboundOutcome(route, report.kind)
    if report.kind not in ("bounce", "delayed", "complaint"):
        outcome.note = "nothing to record"
        return outcome
    if presented:
        matched = [_row(session, _ledger_id(settings, token)) for token in presented]
        rows = [row for row in matched if row is not None]
        if not rows:
            # Never act on a token that does not verify, nor look further for one.
            outcome.note = "forged or unknown VERP token"
            return outcome
        _act_on_rows(session, settings, report, rows[:1], "verp", outcome, now)
        return outcome
    row, how = _row_from_report(session, settings, report)
    if row is not None:
        _act_on_rows(session, settings, report, [row], how, outcome, now)
        return outcome
    if route is Route.BOUNCE and report.kind == "bounce":
        _act_by_recipient(session, settings, report, outcome, now)
        return outcome
    outcome.note = "no ledger row matches the report"
    return outcome


def _row(session: Session, message_id: int | None) -> Message | None:
    """The e-mail ledger row, locked until the commit (PostgreSQL: two reports about one row
    are handled one after the other)."""
    if message_id is None:
        return None
    row = session.execute(
        select(Message).where(col(Message.id) == message_id).with_for_update()
    ).scalar_one_or_none()
    return row if row is not None and row.channel == "email" else None


_MESSAGE_ID_RE = re.compile(r"m([0-9]+)\.[0-9a-f]+@(\S+)\Z")


def _row_from_report(
    session: Session, settings: Settings, report: Report
) -> tuple[Message | None, str]:
    """The row the returned copy names by its signed VERP return path or Message-ID."""
    for address, how in ((report.original_return_path, "return-path"), (report.report_to, "verp")):
        row = _row(session, parse_return_path(settings.secret_key, address))
        if row is not None:
            return row, how
    text = report.original_message_id.strip().strip("<>").lower()
    match = _MESSAGE_ID_RE.match(text)
    if match is not None:
        message_id, domain = int(match.group(1)), match.group(2)
        expected = header_message_id(settings.secret_key, message_id, domain)
        if hmac.compare_digest(expected.encode(), text.encode()):
            return _row(session, message_id), "message-id"
    return None, ""


def _act_by_recipient(
    session: Session, settings: Settings, report: Report, outcome: InboundOutcome, now: datetime
) -> None:
    """A bounce without any token: each failed address's latest row sent recently.  The match
    is unsigned, so it only ever counts as a soft bounce."""
    rows: list[Message] = []
    for recipient in report.recipients:
        if recipient.action not in ("failed", ""):
            continue
        row = _row(session, _latest_sent_to(session, recipient.address, now))
        if row is not None and all(row.id != other.id for other in rows):
            rows.append(row)
    if not rows:
        outcome.note = "no ledger row matches the report"
        return
    _act_on_rows(session, settings, report, rows, "recipient", outcome, now)


def _latest_sent_to(session: Session, address: str, now: datetime) -> int | None:
    """The latest e-mail row sent to *address* in the last RECENT_DAYS days, found through
    the contacts of that address (indexed by account and address; the ledger by contact)."""
    verdict = check_syntax(address)
    if not verdict.ok:
        return None
    accounts = list(session.execute(select(col(Account.id))).scalars())
    contacts = select(col(Contact.id)).where(
        col(Contact.account_id).in_(accounts), col(Contact.email) == verdict.normalized
    )
    return session.execute(
        select(col(Message.id))
        .where(
            col(Message.contact_id).in_(contacts),
            col(Message.channel) == "email",
            col(Message.sent_at) >= now - timedelta(days=RECENT_DAYS),
            col(Message.state).in_([MessageState.SENT, MessageState.BOUNCED]),
        )
        .order_by(col(Message.sent_at).desc(), col(Message.id).desc())
        .limit(1)
    ).scalar_one_or_none()


def _act_on_rows(
    session: Session,
    settings: Settings,
    report: Report,
    rows: list[Message],
    how: str,
    outcome: InboundOutcome,
    now: datetime,
) -> None:
    outcome.matched_by = how
    for row in rows:
        assert row.id is not None
        outcome.message_ids.append(row.id)
        recipient = _recipient_for(report, row)
        if report.kind == "complaint":
            _complaint(session, report, row, how, outcome, now)
        elif report.kind == "delayed" or recipient.action == "delayed":
            _delayed(session, recipient, row, how, outcome, now)
        else:
            _bounce(session, settings, recipient, row, how, outcome, now)


def _recipient_for(report: Report, row: Message) -> Recipient:
    """The report's entry about the row's address, else its first one (a forwarded address
    bounced: the row's recipient is who we can act on)."""
    address = row.to_address.lower()
    for recipient in report.recipients:
        if recipient.address.lower() == address:
            return recipient
    if report.recipients:
        return report.recipients[0]
    return Recipient(address=row.to_address, hard=False, reason="undefined")


def _bounce(
    session: Session,
    settings: Settings,
    recipient: Recipient,
    row: Message,
    how: str,
    outcome: InboundOutcome,
    now: datetime,
) -> None:
    assert row.id is not None
    state = MessageState(row.state)
    if state is MessageState.BOUNCED:
        outcome.note = "already bounced"
        return
    if state in _NOT_YET:
        outcome.retry_later = True
        outcome.note = f"row {row.id} is {state.value}: its send is not recorded yet"
        return
    if state is not MessageState.SENT:
        outcome.note = f"row {row.id} was never sent ({state.value})"
        return
    MESSAGE_STATE.check(state, MessageState.BOUNCED)
    moved = session.execute(
        update(Message)
        .where(col(Message.id) == row.id, col(Message.state) == MessageState.SENT)
        .values(state=MessageState.BOUNCED, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(moved, "rowcount", 0):
        outcome.note = "already bounced"
        return
    row.state = MessageState.BOUNCED
    # Unsigned matches only ever count as soft: a forged report must not suppress at once.
    hard = recipient.hard and how != "recipient"
    _event(
        session,
        row,
        EventKind.BOUNCED,
        hard=recipient.hard,
        reason=recipient.reason,
        status=recipient.status,
        code=find_reply_code(recipient.diagnostic),
        text=recipient.diagnostic[:300],
        address=recipient.address,
        source="dsn",
        matched_by=how,
        now=now,
    )
    outcome.recorded += 1
    session.flush()  # the policy counts this bounce
    if apply_bounce(
        session,
        row.contact_id,
        hard=hard,
        policy=settings.delivery,
        source=f"dsn:message:{row.id}",
        now=now,
    ):
        outcome.changed += 1


def _delayed(
    session: Session,
    recipient: Recipient,
    row: Message,
    how: str,
    outcome: InboundOutcome,
    now: datetime,
) -> None:
    data: dict[str, Any] = {
        "reason": recipient.reason,
        "status": recipient.status,
        "text": recipient.diagnostic[:300],
        "address": recipient.address,
        "source": "dsn",
    }
    if _has_event(session, row, EventKind.DELAYED, data):
        outcome.note = "delay already recorded"
        return
    _event(session, row, EventKind.DELAYED, now=now, matched_by=how, **data)
    outcome.recorded += 1


def _complaint(
    session: Session,
    report: Report,
    row: Message,
    how: str,
    outcome: InboundOutcome,
    now: datetime,
) -> None:
    assert row.id is not None
    if _has_event(session, row, EventKind.COMPLAINED, {}):
        outcome.note = "complaint already recorded"
        return
    _event(
        session,
        row,
        EventKind.COMPLAINED,
        now=now,
        feedback_type=report.feedback_type or "abuse",
        source="arf",
        matched_by=how,
    )
    outcome.recorded += 1
    session.flush()
    if apply_complaint(session, row.contact_id, source=f"arf:message:{row.id}"):
        outcome.changed += 1


def _has_event(session: Session, row: Message, kind: EventKind, data: dict[str, Any]) -> bool:
    """Whether the row already has an event of *kind* whose data includes *data*."""
    found = session.execute(
        select(col(Event.data)).where(col(Event.message_id) == row.id, col(Event.kind) == kind)
    ).scalars()
    return any(all(existing.get(k) == v for k, v in data.items()) for existing in found)


def _event(session: Session, row: Message, kind: EventKind, *, now: datetime, **data: Any) -> None:
    assert row.id is not None
    append_many(
        session,
        row.account_id,
        kind.value,
        [row.id],
        campaign_id=row.campaign_id,
        data={row.id: data},
        now=now,
        contact_ids={row.id: row.contact_id},
    )
