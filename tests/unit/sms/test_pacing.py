"""The gateway's token bucket: its rate, and a pause that holds every taker."""

from __future__ import annotations

import asyncio
import time

from mailer.sms.pacing import TokenBucket


def test_rate_and_pause() -> None:
    async def scenario() -> tuple[float, float]:
        bucket = TokenBucket(100)  # bursts of 10, then 100/s
        start = time.monotonic()
        for _ in range(30):
            await bucket.take()
        paced = time.monotonic() - start
        bucket.pause(0.2)
        assert bucket.paused_for > 0.1
        start = time.monotonic()
        await bucket.take()
        return paced, time.monotonic() - start

    paced, paused = asyncio.run(scenario())
    assert 0.15 <= paced < 0.6
    assert paused >= 0.19


def test_no_rate_means_no_wait() -> None:
    async def scenario() -> float:
        bucket = TokenBucket(0)
        start = time.monotonic()
        for _ in range(10_000):
            await bucket.take()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 1.0
