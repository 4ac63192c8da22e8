"""Periodic actors."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlmodel import col

from mailer.campaigns.models import Campaign, CampaignState
from mailer.campaigns.service import due_campaign_ids, enqueue_pending, start_campaign
from mailer.core.config import get_settings
from mailer.core.errors import MailerError
from mailer.core.queue import task
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
        except MailerError as exc:
            log.error("scheduled campaign %s could not start: %s", campaign_id, exc)
            continue
        enqueue_pending(campaign_id)


@task(queue_name="default", max_retries=3)
def recover_stalled_sends() -> None:
    """Offer again the rows of workers that died mid-batch (see release_expired_claims)."""
    lease = timedelta(seconds=get_settings().send_lease_seconds)
    with session_scope() as session:
        campaigns = release_expired_claims(session, lease)
    for campaign_id in campaigns:
        enqueue_pending(campaign_id)


@task(queue_name="default", max_retries=3)
def requeue_sending_campaigns() -> None:
    """Enqueue again the unsent rows of every sending campaign.

    Run when an in-process broker starts: its queue did not survive the restart, the
    ledger did.  Harmless with a durable broker: the actor skips rows already handled.
    """
    with session_scope() as session:
        ids = (
            session.execute(
                select(col(Campaign.id)).where(col(Campaign.state) == CampaignState.SENDING)
            )
            .scalars()
            .all()
        )
    for campaign_id in ids:
        enqueue_pending(campaign_id)
