"""GatewayLoop: submits from threads, callbacks in batches on a thread of their own, and an
exception in a callback reaching the gateway (which then refuses the receipt)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from mailer.sms.runner import GatewayLoop
from mailer.sms.types import (
    Inbound,
    OnInbound,
    OnReceipt,
    Receipt,
    SmsGatewayError,
    SmsOutbound,
    SubmitResult,
)


class FakeGateway:
    """A gateway that accepts everything and reports receipts when told."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.on_receipt: OnReceipt | None = None
        self.on_inbound: OnInbound | None = None
        self.stopped = False

    async def start(self, on_receipt: OnReceipt, on_inbound: OnInbound) -> None:
        self.on_receipt, self.on_inbound = on_receipt, on_inbound

    async def submit(
        self, messages: Sequence[SmsOutbound], *, timeout: float | None = None
    ) -> list[SubmitResult]:
        return [SubmitResult(m.ref, "submitted", (f"id{m.ref}",)) for m in messages]

    async def stop(self) -> None:
        self.stopped = True

    async def report(self, count: int) -> list[BaseException | None]:
        """Report *count* receipts at once; what each callback call raised, or None."""
        assert self.on_receipt is not None
        outcomes = await asyncio.gather(
            *(
                self.on_receipt(Receipt(f"id{i}", "delivered", True, gateway=self.name))
                for i in range(count)
            ),
            return_exceptions=True,
        )
        return [o if isinstance(o, BaseException) else None for o in outcomes]


def test_submit_from_threads_and_receipts_in_batches() -> None:
    fake = FakeGateway()
    batches: list[list[Receipt]] = []
    threads: set[str] = set()

    def on_receipts(batch: Sequence[Receipt]) -> None:
        threads.add(threading.current_thread().name)
        batches.append(list(batch))

    def on_inbound(batch: Sequence[Inbound]) -> None:
        raise AssertionError("no inbound here")

    loop = GatewayLoop({"fake": fake}, on_receipts, on_inbound, batch_size=100)
    try:
        results = loop.submit("fake", [SmsOutbound(1, "+51987000001", "X", "Hola")], timeout=5)
        assert results == [SubmitResult(1, "submitted", ("id1",))]
        assert loop.run(fake.report(250)) == [None] * 250
        assert sum(len(b) for b in batches) == 250
        assert len(batches) <= 4  # 100 + 100 + 50, give or take one
        assert all(len(b) <= 100 for b in batches)
        assert threads == {"mailer-sms-receipts_0"}
        with pytest.raises(SmsGatewayError):
            loop.submit("nope", [])
    finally:
        loop.close()
    assert fake.stopped
    with pytest.raises(SmsGatewayError):
        loop.submit("fake", [])


def test_a_failing_callback_fails_every_receipt_of_its_batch() -> None:
    fake = FakeGateway()
    calls = []

    def on_receipts(batch: Sequence[Receipt]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("database down")

    loop = GatewayLoop({"fake": fake}, on_receipts, lambda batch: None, batch_wait=0.2)
    try:
        outcomes = loop.run(fake.report(3))
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        assert loop.run(fake.report(2)) == [None, None]
        assert calls == [3, 2]
    finally:
        loop.close()
