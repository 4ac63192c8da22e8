"""Campaigns: create, schedule, start (snapshot the audience into the ledger), pause,
resume, cancel, complete.  Interfaces call these; the send itself is ``pipeline.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, String, func, insert, literal, select, update
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from mailer.accounts.credits import reserve, settle
from mailer.accounts.service import get_account, normalise_email
from mailer.audience.clean import ensure_fresh, get_checker
from mailer.audience.models import Contact
from mailer.audience.service import email_audience, get_list, get_segment
from mailer.campaigns.models import CAMPAIGN_STATE, Campaign, CampaignState
from mailer.content.service import check_syntax
from mailer.content.store import get_template
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import Conflict, NotFound, ValidationFailed
from mailer.core.queue import enqueue
from mailer.delivery.domains import load_domain
from mailer.events.models import Event, EventKind
from mailer.events.service import append as append_event
from mailer.messages.models import MESSAGE_STATE, Message, MessageState
from mailer.messages.service import (
    count_by_state,
    counts_by_campaign,
    has_open_rows,
    last_activity,
    pending_ids,
)
from mailer.storage.db import session_scope
from mailer.storage.types import UtcDateTime


def create_campaign(
    session: Session,
    account_id: int,
    *,
    name: str,
    template_id: int,
    list_id: int | None = None,
    segment_id: int | None = None,
    from_email: str,
    from_name: str,
    subject: str | None = None,
    reply_to: str | None = None,
    freshness_days: int = 0,
    created_by: str = "",
) -> Campaign:
    """A draft campaign to a list, a segment, or a segment within a list.

    *freshness_days*: addresses whose cleaning verdict is older than this many days (0 =
    not cleaned today) are cleaned again when the campaign starts; -1 never cleans."""
    if not name.strip():
        raise ValidationFailed("the campaign needs a name", field="name")
    template = get_template(session, account_id, template_id)
    if list_id is None and segment_id is None:
        raise ValidationFailed("choose a list or a segment to send to", field="list_id")
    if list_id is not None:
        get_list(session, account_id, list_id)
    if segment_id is not None:
        get_segment(session, account_id, segment_id)
    if subject:
        check_syntax(subject, template.html, template.text)
    campaign = Campaign(
        account_id=account_id,
        name=name.strip(),
        template_id=template_id,
        list_id=list_id,
        segment_id=segment_id,
        freshness_days=max(freshness_days, -1),
        subject=subject or None,
        from_email=normalise_email(from_email, "from_email"),
        from_name=from_name.strip(),
        reply_to=normalise_email(reply_to, "reply_to") if reply_to else None,
        created_by=created_by,
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, account_id: int, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.account_id != account_id:
        raise NotFound("campaign {id} does not exist", id=campaign_id)
    return campaign


def list_campaigns(session: Session, account_id: int) -> list[Campaign]:
    return list(
        session.exec(
            sm_select(Campaign)
            .where(Campaign.account_id == account_id)
            .order_by(col(Campaign.id).desc())
        )
    )


def _transition(
    session: Session, campaign: Campaign, target: CampaignState, **details: Any
) -> None:
    CAMPAIGN_STATE.check(CampaignState(campaign.state), target)
    previous = campaign.state
    campaign.state = target
    campaign.updated_at = utcnow()
    session.add(campaign)
    append_event(
        session,
        campaign.account_id,
        EventKind.CAMPAIGN_STATE,
        campaign_id=campaign.id,
        previous=previous,
        state=target.value,
        **details,
    )


def _claim_transition(session: Session, campaign: Campaign, target: CampaignState) -> None:
    """A transition that only one of several racing workers wins (a compare-and-set on the
    state): the others get Conflict.  Starting a scheduled campaign uses it, so that when
    several workers see it due, exactly one starts it."""
    CAMPAIGN_STATE.check(CampaignState(campaign.state), target)
    previous = campaign.state
    now = utcnow()
    won = session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign.id, col(Campaign.state) == previous)
        .values(state=target.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not won.rowcount:  # type: ignore[attr-defined]
        raise Conflict(
            "campaign {id} is no longer {state}: another worker or person changed it",
            id=campaign.id,
            state=previous,
        )
    campaign.state = target
    campaign.updated_at = now
    append_event(
        session,
        campaign.account_id,
        EventKind.CAMPAIGN_STATE,
        campaign_id=campaign.id,
        previous=previous,
        state=target.value,
    )


def schedule_campaign_local(
    session: Session, account_id: int, campaign_id: int, local: datetime
) -> Campaign:
    """Schedule for a wall-clock time of the account's time zone (America/Lima by default)."""
    zone = ZoneInfo(get_account(session, account_id).timezone)
    return schedule_campaign(
        session, account_id, campaign_id, local.replace(tzinfo=zone).astimezone(UTC)
    )


def schedule_campaign(
    session: Session, account_id: int, campaign_id: int, when: datetime
) -> Campaign:
    campaign = get_campaign(session, account_id, campaign_id)
    if when.tzinfo is None:
        raise ValidationFailed("the scheduled time needs a time zone", field="scheduled_at")
    if when <= utcnow():
        raise ValidationFailed("the scheduled time is in the past", field="scheduled_at")
    _check_ready(session, campaign)
    _transition(session, campaign, CampaignState.SCHEDULED)
    campaign.scheduled_at = when
    return campaign


def unschedule_campaign(session: Session, account_id: int, campaign_id: int) -> Campaign:
    campaign = get_campaign(session, account_id, campaign_id)
    _transition(session, campaign, CampaignState.DRAFT)
    campaign.scheduled_at = None
    return campaign


def _check_ready(session: Session, campaign: Campaign, settings: Settings | None = None) -> None:
    """Refuse to start what cannot be sent: a broken template or an unknown sending domain."""
    settings = settings or get_settings()
    if campaign.template_id is None:  # an SMS campaign: its text and sender
        from mailer.campaigns.sms import check_sender, check_text

        check_text((campaign.content or {}).get("text", ""))
        check_sender((campaign.content or {}).get("sender", ""))
        return
    template = get_template(session, campaign.account_id, campaign.template_id)
    check_syntax(campaign.subject or template.subject, template.html, template.text)
    domain = campaign.from_email.rsplit("@", 1)[1]
    load_domain(settings.sending_domains_dir, domain)


def start_campaign(
    session: Session, account_id: int, campaign_id: int, *, settings: Settings | None = None
) -> Campaign:
    """Move to ``sending`` and snapshot the recipients into the ledger, in one statement.

    The caller commits, then calls :func:`enqueue_pending` (workers must see the rows).
    """
    campaign = get_campaign(session, account_id, campaign_id)
    settings = settings or get_settings()
    _check_ready(session, campaign, settings)
    if campaign.channel == "sms":
        from mailer.campaigns.sms import start_sms_campaign

        return start_sms_campaign(session, campaign, settings)
    if campaign.started_at is None:
        # Before any write: the DNS lookups must not hold the database's write lock.
        ensure_fresh(
            session,
            account_id,
            list_id=campaign.list_id,
            segment_id=campaign.segment_id,
            freshness_days=campaign.freshness_days,
            timezone=settings.timezone,
            checker=get_checker(settings),
        )
    _claim_transition(session, campaign, CampaignState.SENDING)
    campaign.state_reason = ""
    now = utcnow()
    recipients = email_audience(
        session,
        account_id,
        literal(account_id, Integer),
        literal(campaign_id, Integer),
        list_id=campaign.list_id,
        segment_id=campaign.segment_id,
    )
    if campaign.parent_id is not None:
        # A resend: only the contacts whose message of the parent failed (and who may
        # still be mailed: the audience filters above still apply).
        failed = select(col(Message.contact_id)).where(
            col(Message.campaign_id) == campaign.parent_id,
            col(Message.state) == MessageState.FAILED,
            col(Message.contact_id).is_not(None),
        )
        recipients = recipients.where(col(Contact.id).in_(failed))
    recipients = recipients.add_columns(
        literal("email", String),
        literal(MessageState.QUEUED.value, String),
        literal(0, Integer),
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
        "queued_at",
        "updated_at",
    ]
    if campaign.started_at is None:
        session.execute(insert(Message).from_select(columns, recipients))
        campaign.started_at = now
        assert campaign.template_id is not None
        template = get_template(session, account_id, campaign.template_id)
        campaign.content = {
            "subject": campaign.subject or template.subject,
            "html": template.html,
            "text": template.text,
        }
    total = int(
        session.execute(
            select(func.count()).where(col(Message.campaign_id) == campaign_id)
        ).scalar_one()
    )
    if campaign.total == 0 and total:
        # The allowance holds every recipient now (released for those that fail); not
        # enough of it refuses the start, and the transaction leaves the campaign a draft.
        reserve(session, account_id, "email", total, ref=f"campaign:{campaign_id}")
    campaign.total = total
    if campaign.total == 0:
        _transition(session, campaign, CampaignState.COMPLETED)
        campaign.completed_at = now
    return campaign


def enqueue_pending(campaign_id: int, *, settings: Settings | None = None) -> int:
    """Put the campaign's unsent rows on the queue in batches; returns the number of batches.

    Safe to call again at any time: the actor only sends rows that are still unsent.
    """
    from mailer.campaigns.tasks import send_batch

    settings = settings or get_settings()
    with session_scope(settings) as session:
        ids = pending_ids(session, campaign_id)
        campaign = session.get(Campaign, campaign_id)
        channel = campaign.channel if campaign is not None else "email"
    if channel == "sms":
        from mailer.campaigns.sms import enqueue_sms

        return enqueue_sms(ids, settings=settings)
    size = settings.batch_size
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    for batch in batches:
        enqueue(send_batch, campaign_id, batch)
    return len(batches)


def send_now(account_id: int, campaign_id: int, *, actor: str = "") -> Campaign:
    with session_scope() as session:
        campaign = start_campaign(session, account_id, campaign_id)
        if actor:
            campaign.created_by = campaign.created_by or actor
    enqueue_pending(campaign_id)
    return campaign


def pause_campaign(session: Session, account_id: int, campaign_id: int) -> Campaign:
    campaign = get_campaign(session, account_id, campaign_id)
    _transition(session, campaign, CampaignState.PAUSED)
    return campaign


def resume_campaign(account_id: int, campaign_id: int) -> Campaign:
    with session_scope() as session:
        campaign = get_campaign(session, account_id, campaign_id)
        _transition(session, campaign, CampaignState.SENDING)
    enqueue_pending(campaign_id)
    return campaign


def cancel_campaign(session: Session, account_id: int, campaign_id: int) -> Campaign:
    campaign = get_campaign(session, account_id, campaign_id)
    _transition(session, campaign, CampaignState.CANCELLED)
    unsent = (
        col(Message.campaign_id) == campaign_id,
        col(Message.state).in_(MESSAGE_STATE.sources_of(MessageState.CANCELLED)),
    )
    # What the allowance held for the messages that will not go (an SMS holds its parts).
    held = func.sum(col(Message.parts)) if campaign.channel == "sms" else func.count()
    units = session.execute(select(func.coalesce(held, 0)).where(*unsent)).scalar_one()
    session.execute(
        update(Message).where(*unsent).values(state=MessageState.CANCELLED, updated_at=utcnow())
    )
    settle(
        session, account_id, campaign.channel, released=int(units), ref=f"campaign:{campaign_id}"
    )
    return campaign


def fail_campaign(session: Session, campaign: Campaign, reason: str) -> None:
    """Stop a sending campaign that cannot go on; a person can fix the cause and resume."""
    _transition(session, campaign, CampaignState.FAILED, reason=reason[:1000])
    campaign.state_reason = reason[:1000]


def reputation(session: Session, campaign_id: int) -> dict[str, float | int]:
    """Messages attempted (sent, failed or bounced), bounces and complaints, with rates."""
    counts = count_by_state(session, campaign_id)
    attempted = sum(counts.get(s, 0) for s in ("sent", "failed", "bounced"))
    by_kind = dict(
        session.execute(
            select(col(Event.kind), func.count())
            .where(
                col(Event.campaign_id) == campaign_id,
                col(Event.kind).in_([EventKind.BOUNCED, EventKind.COMPLAINED]),
            )
            .group_by(col(Event.kind))
        ).all()
    )
    bounced = int(by_kind.get(EventKind.BOUNCED, 0))
    complained = int(by_kind.get(EventKind.COMPLAINED, 0))
    return {
        "attempted": attempted,
        "bounced": bounced,
        "complained": complained,
        "bounce_rate": bounced / attempted if attempted else 0.0,
        "complaint_rate": complained / attempted if attempted else 0.0,
    }


def check_reputation(
    session: Session, campaign_id: int, settings: Settings | None = None
) -> str | None:
    """The reputation guard: pause a sending campaign whose bounce or complaint rate is
    past its threshold once enough messages were attempted; returns the reason if paused.
    """
    policy = (settings or get_settings()).delivery
    campaign = _locked(session, campaign_id)
    if campaign is None or campaign.state != CampaignState.SENDING:
        return None
    figures = reputation(session, campaign_id)
    if int(figures["attempted"]) < policy.guard_min_sample:
        return None
    reason = None
    if figures["bounce_rate"] > policy.guard_bounce_rate:
        reason = (
            f"Pausada automáticamente: tasa de rebote {figures['bounce_rate']:.1%} "
            f"(límite {policy.guard_bounce_rate:.1%}) tras {figures['attempted']} envíos"
        )
    elif figures["complaint_rate"] > policy.guard_complaint_rate:
        reason = (
            f"Pausada automáticamente: tasa de quejas {figures['complaint_rate']:.2%} "
            f"(límite {policy.guard_complaint_rate:.2%}) tras {figures['attempted']} envíos"
        )
    if reason is None:
        return None
    _transition(session, campaign, CampaignState.PAUSED, reason=reason, by="reputation guard")
    campaign.state_reason = reason
    return reason


def resend_failed(
    session: Session, account_id: int, campaign_id: int, *, created_by: str = ""
) -> Campaign:
    """A follow-up run of *campaign_id* for its failed rows only (a draft: start it as
    any other).  Contacts suppressed or unsubscribed since are left out at start."""
    parent = get_campaign(session, account_id, campaign_id)
    if parent.state not in (CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.PAUSED):
        raise ValidationFailed(
            "a campaign can be resent to its failed recipients once it has stopped sending",
            field="campaign_id",
        )
    failed = count_by_state(session, campaign_id).get(MessageState.FAILED, 0)
    if not failed:
        raise ValidationFailed("campaign {id} has no failed recipients", id=campaign_id)
    child = Campaign(
        account_id=account_id,
        name=f"{parent.name} (reenvío a fallidos)"[:200],
        template_id=parent.template_id,
        list_id=parent.list_id,
        segment_id=parent.segment_id,
        freshness_days=parent.freshness_days,
        subject=parent.subject,
        from_name=parent.from_name,
        from_email=parent.from_email,
        reply_to=parent.reply_to,
        parent_id=parent.id,
        created_by=created_by,
    )
    session.add(child)
    session.flush()
    return child


def campaign_progress(
    session: Session, campaign: Campaign, *, window_seconds: int = 60
) -> dict[str, Any]:
    """Live progress: counts by state, the current rate and the estimated time left."""
    assert campaign.id is not None
    counts = campaign_counts(session, campaign)
    now = utcnow()
    recent = int(
        session.execute(
            select(func.count()).where(
                col(Message.campaign_id) == campaign.id,
                col(Message.sent_at) >= now - timedelta(seconds=window_seconds),
            )
        ).scalar_one()
    )
    rate = recent / window_seconds
    pending = sum(counts[s] for s in ("queued", "sending", "deferred"))
    eta = pending / rate if rate > 0 and campaign.state == CampaignState.SENDING else None
    return {
        "state": campaign.state,
        "state_reason": campaign.state_reason,
        "total": counts["total"],
        "sent": counts["sent"],
        "pending": pending,
        "deferred": counts["deferred"],
        "failed": counts["failed"],
        "bounced": counts["bounced"],
        "cancelled": counts["cancelled"],
        "rate_per_second": round(rate, 1),
        "rate_per_hour": int(rate * 3600),
        "eta_seconds": int(eta) if eta is not None else None,
    }


def _locked(session: Session, campaign_id: int) -> Campaign | None:
    """The campaign, re-read with its row locked (PostgreSQL) until the transaction ends."""
    campaign: Campaign | None = session.execute(
        sm_select(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return campaign


def complete_if_done(session: Session, campaign_id: int) -> bool:
    """Close a sending campaign whose ledger has nothing left to send.

    The campaign row is locked first: two workers finishing the last batches at the same
    time serialise here, so the second one sees the first one's rows (PostgreSQL; SQLite
    serialises writers anyway).
    """
    campaign = _locked(session, campaign_id)
    if campaign is None or campaign.state != CampaignState.SENDING:
        return False
    if has_open_rows(session, campaign_id):
        return False
    _transition(session, campaign, CampaignState.COMPLETED)
    campaign.completed_at = utcnow()
    return True


def campaign_counts(session: Session, campaign: Campaign) -> dict[str, int]:
    """Counts for display: total, and each ledger state (0 when absent)."""
    assert campaign.id is not None
    return _display_counts(campaign, count_by_state(session, campaign.id))


def campaigns_with_counts(
    session: Session, account_id: int
) -> list[tuple[Campaign, dict[str, int]]]:
    """The account's campaigns, newest first, each with its counts (one query for all)."""
    listed = list_campaigns(session, account_id)
    counts = counts_by_campaign(session, [c.id for c in listed if c.id is not None])
    return [(c, _display_counts(c, counts.get(c.id or 0, {}))) for c in listed]


def _display_counts(campaign: Campaign, counts: dict[str, int]) -> dict[str, int]:
    result = {state.value: counts.get(state.value, 0) for state in MessageState}
    result["total"] = campaign.total
    return result


def due_campaign_ids(session: Session, now: datetime | None = None) -> list[tuple[int, int]]:
    """(account_id, campaign_id) of scheduled campaigns whose time has come."""
    now = now or utcnow()
    rows = session.execute(
        select(col(Campaign.account_id), col(Campaign.id)).where(
            col(Campaign.state) == CampaignState.SCHEDULED, col(Campaign.scheduled_at) <= now
        )
    ).all()
    return [(int(a), int(c)) for a, c in rows]


def sweep_sending_campaigns(quiet_for: timedelta, *, now: datetime | None = None) -> list[int]:
    """Pause campaigns past the reputation guard, complete finished ones and re-enqueue
    stalled ones; returns those re-enqueued.

    A campaign is stalled when it has rows to send and no ledger row changed for
    *quiet_for*: its queue messages were lost (a broker restart, a crash between commit and
    enqueue).  Enqueueing again is harmless: the actor only sends rows still unsent.
    """
    now = now or utcnow()
    with session_scope() as session:
        sending = list(
            session.execute(
                select(col(Campaign.id)).where(col(Campaign.state) == CampaignState.SENDING)
            ).scalars()
        )
    stalled = []
    for campaign_id in sending:
        with session_scope() as session:
            # Bounces and complaints that arrived by mail (the inbound receiver runs apart
            # from the senders) count against the guard here, within a minute.
            if check_reputation(session, campaign_id) is not None:
                continue
        with session_scope() as session:
            if complete_if_done(session, campaign_id):
                continue
            latest = last_activity(session, campaign_id)
        if latest is None or now - latest >= quiet_for:
            enqueue_pending(campaign_id)
            stalled.append(campaign_id)
    return stalled


def release_failed(session: Session, message_ids: Sequence[int]) -> None:
    """Give back what the allowance held for rows that failed outside a batch (a worker
    died and their attempts ran out): a unit per e-mail, its parts per SMS.  Test messages
    held nothing."""
    if not message_ids:
        return
    rows = session.execute(
        select(
            col(Message.account_id),
            col(Message.channel),
            col(Message.parts),
            col(Message.campaign_id),
            col(Message.origin),
        ).where(col(Message.id).in_(list(message_ids)))
    ).all()
    held: dict[tuple[int, str], int] = {}
    for account_id, channel, parts, campaign_id, origin in rows:
        if campaign_id is None and not origin:
            continue
        key = (int(account_id), str(channel))
        held[key] = held.get(key, 0) + (int(parts) if channel == "sms" else 1)
    for (account_id, channel), units in held.items():
        settle(session, account_id, channel, released=units, ref="failed:worker stopped")


def change_state(session: Session, account_id: int, campaign_id: int, action: str) -> None:
    """A person's state change of a campaign, e-mail or SMS: resume, unschedule, pause or
    cancel (anything else: cancel, as the portal's last button)."""
    if action == "resume":
        resume_campaign(account_id, campaign_id)
    elif action == "unschedule":
        unschedule_campaign(session, account_id, campaign_id)
    elif action == "pause":
        pause_campaign(session, account_id, campaign_id)
    else:
        cancel_campaign(session, account_id, campaign_id)
