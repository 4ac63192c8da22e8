"""Webhook actors, on a queue of their own ("webhooks", consumed by threads of their own)
so that a slow or dead receiver never holds up sending.  Thin: ids in, ``service`` does
the work."""

from __future__ import annotations

from mailer.core.config import get_settings
from mailer.core.queue import enqueue, task
from mailer.storage.db import session_scope
from mailer.webhooks import service

QUEUE = "webhooks"
CLAIM_PER_RUN = 200  # a few minutes of work for the webhook threads even when receivers stall


def _enqueue_due() -> None:
    settings = get_settings()
    with session_scope(settings) as session:
        claims = service.claim_due(session, settings, limit=CLAIM_PER_RUN)
    for claimed in claims:
        enqueue(send_webhook, claimed.delivery_id, claimed.token)


@task(queue_name=QUEUE, max_retries=3)
def dispatch_webhook_events() -> None:
    """Periodic: new events -> deliveries, then post what is due."""
    service.dispatch_new_events(get_settings())
    _enqueue_due()


@task(queue_name=QUEUE, max_retries=3)
def retry_due_webhooks() -> None:
    """Periodic (and after a test or a replay): post the deliveries whose attempt is due."""
    _enqueue_due()


@task(queue_name=QUEUE, max_retries=3, min_backoff=1_000, max_backoff=60_000)
def send_webhook(delivery_id: int, token: str) -> None:
    """One attempt of one claimed delivery (a stale claim does nothing)."""
    service.attempt(get_settings(), service.Claimed(delivery_id, token))
