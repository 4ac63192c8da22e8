"""Campaign actors: thin wrappers over ``pipeline`` taking ids only."""

from __future__ import annotations

from datetime import timedelta

from mailer.campaigns import pipeline, sms, transactional
from mailer.core.clock import utcnow
from mailer.core.queue import enqueue, task
from mailer.messages.service import waiting_deferred
from mailer.storage.db import session_scope

DEFAULT_RETRY_SECONDS = 300


@task(queue_name="delivery", max_retries=20, min_backoff=1_000, max_backoff=300_000)
def send_batch(campaign_id: int, message_ids: list[int]) -> None:
    """Send the batch's unsent rows; come back for its deferred ones when the first is due."""
    pipeline.send_batch(campaign_id, message_ids)
    with session_scope() as session:
        deferred, due = waiting_deferred(session, message_ids)
    if deferred:
        due = due or utcnow() + timedelta(seconds=DEFAULT_RETRY_SECONDS)
        delay_ms = max(1_000, int((due - utcnow()).total_seconds() * 1000))
        enqueue(send_batch, campaign_id, deferred, delay_ms=delay_ms)


@task(queue_name="delivery", max_retries=20, min_backoff=1_000, max_backoff=300_000)
def send_sms(message_ids: list[int]) -> None:
    """Send the batch's unsent SMS rows; deferred ones come back through ``send_due_sms``."""
    sms.send_sms_batch(message_ids)
    with session_scope() as session:
        deferred, due = waiting_deferred(session, message_ids)
    if deferred and due is not None:
        delay_ms = max(1_000, int((due - utcnow()).total_seconds() * 1000))
        enqueue(send_sms, deferred, delay_ms=delay_ms)


@task(queue_name="delivery", max_retries=20, min_backoff=1_000, max_backoff=300_000)
def send_messages(message_ids: list[int]) -> None:
    """Send transactional e-mail rows; deferred ones come back through the periodic job."""
    transactional.send_messages(message_ids)
