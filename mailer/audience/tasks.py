"""Audience actors: imports and cleanings run by workers, their progress committed live."""

from __future__ import annotations

from mailer.audience import clean, service
from mailer.core.config import get_settings
from mailer.core.queue import task
from mailer.storage.db import session_scope


@task(queue_name="audience", max_retries=3, time_limit=3_600_000)
def run_import(import_id: int) -> None:
    """Run a queued import (idempotent: a redelivery finishes or repeats it harmlessly)."""
    with session_scope() as session:
        service.run_import(session, import_id)


@task(queue_name="audience", max_retries=3, time_limit=3_600_000)
def run_cleaning(run_id: int) -> None:
    """Clean a list or segment (idempotent: verdicts are written, not accumulated)."""
    settings = get_settings()
    with session_scope(settings) as session:
        clean.run_cleaning(session, run_id, clean.get_checker(settings))
