"""Tracking jobs: the retention of events (roll up, then delete)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.queue import task
from mailer.events.rollup import PurgeResult, purge_quiet_messages, purge_unattached
from mailer.storage.db import session_scope

log = logging.getLogger(__name__)


def roll_up_and_purge(
    settings: Settings, *, now: datetime | None = None, chunk: int = 2000
) -> PurgeResult:
    """Roll the events of messages quiet for ``tracking.retention_days`` into the campaign
    counters and delete them, one transaction per chunk of messages (a crash loses no
    figure and counts none twice)."""
    cutoff = (now or utcnow()) - timedelta(days=settings.tracking.retention_days)
    messages = events = 0
    after: int | None = 0
    while after is not None:
        with session_scope(settings) as session:
            done, after = purge_quiet_messages(session, cutoff, after_message_id=after, limit=chunk)
        messages += done.messages
        events += done.events
    with session_scope(settings) as session:
        events += purge_unattached(session, cutoff)
    return PurgeResult(messages, events)


@task(queue_name="default", max_retries=3)
def purge_expired_events() -> None:
    """Periodic: apply the event retention (run it every few hours; it is idempotent)."""
    result = roll_up_and_purge(get_settings())
    if result.events:
        log.info("rolled up %d messages, deleted %d events", result.messages, result.events)
