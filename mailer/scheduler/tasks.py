"""Periodic actors."""

from __future__ import annotations

import logging
from datetime import timedelta

from mailer.accounts import admin, credits, idempotency
from mailer.campaigns import sms, transactional
from mailer.campaigns.pipeline import recover_journals
from mailer.campaigns.service import (
    due_campaign_ids,
    enqueue_pending,
    release_failed,
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
        release_failed(session, [message_id for message_id, _, _ in released.failed])
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


@task(queue_name="default", max_retries=3)
def send_due_sms() -> None:
    """Enqueue the SMS rows and transactional e-mails that are due (retries, scheduled API
    sends, rows whose queue message was lost) and expire the SMS with no final receipt
    within their validity."""
    settings = get_settings()
    with session_scope(settings) as session:
        due = sms.due_sms(session)
    if due:
        sms.enqueue_sms(due, settings=settings)
    with session_scope(settings) as session:
        messages = transactional.due_messages(session)
    if messages:
        transactional.enqueue_messages(messages)
    with session_scope(settings) as session:
        sms.match_pending_receipts(session, settings)
    with session_scope(settings) as session:
        expired = sms.expire_sms(session, settings)
    if expired:
        log.info("%d SMS expired with no final receipt", expired)


@task(queue_name="default", max_retries=3)
def expire_allowances() -> None:
    """Expire what is left of allowances whose validity has ended."""
    with session_scope() as session:
        expired = credits.expire_due(session)
    if expired:
        log.info("%d allowances expired", expired)


@task(queue_name="default", max_retries=3)
def purge_audit_log() -> None:
    """Delete audit log entries older than ``audit_retention_days`` (never under a year)."""
    settings = get_settings()
    with session_scope(settings) as session:
        purged = admin.purge_audit(session, settings.audit_retention_days)
    if purged:
        log.info(
            "%d audit log entries older than %d days purged", purged, settings.audit_retention_days
        )


@task(queue_name="default", max_retries=3)
def purge_idempotency_keys() -> None:
    """Delete the API's idempotency keys (and stored responses) older than
    ``api.idempotency_hours``."""
    settings = get_settings()
    with session_scope(settings) as session:
        purged = idempotency.purge_expired(session, timedelta(hours=settings.api.idempotency_hours))
    if purged:
        log.info("%d idempotency keys purged", purged)
