"""Periodic actors."""

from __future__ import annotations

import logging
from datetime import timedelta

from mailer.campaigns.pipeline import recover_journals
from mailer.campaigns.service import (
    due_campaign_ids,
    enqueue_pending,
    start_campaign,
    sweep_sending_campaigns,
)
from mailer.core.config import get_settings
from mailer.core.errors import Conflict, MailerError
from mailer.core.queue import task
from mailer.events.models import EventKind
from mailer.events.service import append as append_event
from mailer.messages.service import release_expired_claims
from mailer.storage.db import session_scope

log = logging.getLogger(__name__)


@task(queue_name="default", max_retries=3)
def start_due_campaigns() -> None:
    """Start every scheduled campaign whose time has come."""
    with session_scope() as session:
        due = due_campaign_ids(session)
    for account_id, campaign_id in due:
        try:
            with session_scope() as session:
                start_campaign(session, account_id, campaign_id)
        except Conflict:
            continue  # another worker started it first
        except MailerError as exc:
            log.error("scheduled campaign %s could not start: %s", campaign_id, exc)
            continue
        enqueue_pending(campaign_id)


@task(queue_name="default", max_retries=3)
def recover_stalled_sends() -> None:
    """Settle rows of workers that died mid-batch, then complete finished campaigns and
    re-enqueue stalled ones (see release_expired_claims and sweep_sending_campaigns)."""
    settings = get_settings()
    # Journals of dead workers on this machine first: their outcomes, then their rows.
    recover_journals(settings)
    with session_scope() as session:
        released = release_expired_claims(
            session,
            timedelta(seconds=settings.send_lease_seconds),
            max_attempts=settings.max_attempts,
        )
        for message_id, account_id, campaign_id in released.failed:
            append_event(
                session,
                account_id,
                EventKind.FAILED,
                campaign_id=campaign_id,
                message_id=message_id,
                text="the worker stopped while sending",
            )
    for campaign_id in released.campaigns:
        enqueue_pending(campaign_id)
    sweep_sending_campaigns(timedelta(seconds=settings.stall_seconds))


@task(queue_name="default", max_retries=3)
def requeue_sending_campaigns() -> None:
    """Enqueue again the unsent rows of every sending campaign.

    Run when an in-process broker starts: its queue did not survive the restart, the
    ledger did.  Harmless with a durable broker: the actor skips rows already handled.
    """
    sweep_sending_campaigns(timedelta(0))
