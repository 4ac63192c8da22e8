"""Pacing of one gateway: a token bucket that a "slow down" answer can pause.

(The email side has its own in ``delivery.shaping``; transports on one layer do not import
each other.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """*rate* tokens per second (0 = unlimited), bursts of a tenth of a second's worth (at
    least one), and :meth:`pause` to stop every taker for a while."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate / 10)
        self._tokens = self._capacity
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """No token for *seconds* from now (a longer pause already set is kept)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._tokens = 0.0

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    self._stamp = self._clock()
                    continue
                if self.rate <= 0:
                    return
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)
