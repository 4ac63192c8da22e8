"""Campaign actors: thin wrappers over ``pipeline`` and ``service`` taking ids only."""

from __future__ import annotations

from datetime import timedelta

from mailer.campaigns import pipeline
from mailer.core.clock import utcnow
from mailer.core.queue import enqueue, task
from mailer.messages.models import MessageState

DEFAULT_RETRY_SECONDS = 300


@task(queue_name="delivery", max_retries=20, min_backoff=1_000, max_backoff=300_000)
def send_batch(campaign_id: int, message_ids: list[int]) -> None:
    outcome = pipeline.send_batch(campaign_id, message_ids)
    deferred = outcome.by_state.get(MessageState.DEFERRED, [])
    if deferred:
        retry_at = outcome.retry_at or utcnow() + timedelta(seconds=DEFAULT_RETRY_SECONDS)
        delay_ms = max(1_000, int((retry_at - utcnow()).total_seconds() * 1000))
        enqueue(send_batch, campaign_id, deferred, delay_ms=delay_ms)
