"""The periodic loop: enqueue each periodic job at its interval until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mailer.core.queue import enqueue
from mailer.scheduler.tasks import (
    expire_allowances,
    purge_audit_log,
    purge_idempotency_keys,
    recover_stalled_sends,
    send_due_sms,
    start_due_campaigns,
)
from mailer.tracking.tasks import purge_expired_events
from mailer.webhooks.tasks import dispatch_webhook_events, retry_due_webhooks

log = logging.getLogger(__name__)

PERIODIC: tuple[tuple[Callable[..., Any], float], ...] = (
    (start_due_campaigns, 15.0),
    (recover_stalled_sends, 60.0),
    (purge_expired_events, 6 * 3600.0),
    (dispatch_webhook_events, 5.0),
    (retry_due_webhooks, 15.0),
    (send_due_sms, 15.0),
    (expire_allowances, 3600.0),
    (purge_audit_log, 24 * 3600.0),
    (purge_idempotency_keys, 3600.0),
)


class PeriodicLoop:
    """A daemon thread that enqueues the periodic jobs (the work runs on the workers)."""

    def __init__(self, jobs: tuple[tuple[Callable[..., Any], float], ...] = PERIODIC) -> None:
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailer-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_run = {job: time.monotonic() for job, _ in self.jobs}
        while not self._stop.is_set():
            now = time.monotonic()
            for job, interval in self.jobs:
                if now >= next_run[job]:
                    next_run[job] = now + interval
                    try:
                        enqueue(job)
                    except Exception:  # the broker may be briefly away; try next round
                        log.exception("could not enqueue %s", job.__name__)
            self._stop.wait(1.0)
