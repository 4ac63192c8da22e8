"""The capture gateway: what sends SMS when no real gateway is configured (the embedded
default and the demo).  It sends nothing: it accepts every message, keeps the last ones in
memory for a look, and reports each part delivered a moment later, so that the whole
path (parts, receipts, charging, reports) works on a machine with no operator.

Numbers ending in ``0000`` are reported undelivered, so a demo shows both outcomes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence

from mailer.core.clock import utcnow
from mailer.sms.encoding import analyse
from mailer.sms.types import OnInbound, OnReceipt, Receipt, SmsOutbound, SubmitResult

CAPTURE_NAME = "capture"


class CaptureGateway:
    """An :class:`~mailer.sms.types.SmsGateway` that keeps what it is given."""

    def __init__(self, name: str = CAPTURE_NAME, *, receipt_delay: float = 0.2) -> None:
        self.name = name
        self.receipt_delay = receipt_delay
        self.sent: deque[SmsOutbound] = deque(maxlen=1000)
        self._ids = itertools.count(1)
        self._on_receipt: OnReceipt | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, on_receipt: OnReceipt, on_inbound: OnInbound) -> None:
        self._on_receipt = on_receipt

    async def submit(
        self, messages: Sequence[SmsOutbound], *, timeout: float | None = None
    ) -> list[SubmitResult]:
        results = []
        for message in messages:
            self.sent.append(message)
            parts = analyse(message.text).parts
            ids = tuple(format(next(self._ids), "x") for _ in range(parts))
            results.append(SubmitResult(message.ref, "submitted", ids, parts=parts))
            if message.receipt and self._on_receipt is not None:
                failed = message.to.endswith("0000")
                task = asyncio.get_running_loop().create_task(self._report(ids, failed))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        return results

    async def _report(self, ids: tuple[str, ...], failed: bool) -> None:
        await asyncio.sleep(self.receipt_delay)
        assert self._on_receipt is not None
        for provider_id in ids:
            stat = "UNDELIV" if failed else "DELIVRD"
            await self._on_receipt(
                Receipt(
                    provider_id=provider_id,
                    state="undelivered" if failed else "delivered",
                    final=True,
                    error="001" if failed else "000",
                    text=f"id:{provider_id} stat:{stat}",
                    gateway=self.name,
                    done_at=utcnow(),
                )
            )

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        self._pending.clear()
