"""Rate limits per application (API key or OAuth client): a token bucket of
``api.rate_per_second`` refilled continuously, holding at most ``api.burst`` requests.

Embedded, each process keeps its buckets in memory.  With a Redis ``broker_url`` the
buckets live in Redis, shared by every process and machine, each check one round trip (a
Lua script that refills, takes and sets the expiry atomically, on Redis's own clock).  If
Redis cannot be reached the process falls back to its own buckets rather than refusing
or letting everything through.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Protocol

import redis
from redis.exceptions import RedisError

from mailer.accounts.service import Principal
from mailer.core.config import Settings
from mailer.core.errors import RateLimited

log = logging.getLogger(__name__)

REDIS_PREFIX = "mailer:ratelimit:"

# KEYS[1]: the bucket; ARGV: rate (tokens per second), burst (size).  Returns the wait in
# microseconds before a token is available: 0 = taken.
BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000000)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class Buckets(Protocol):
    def take(self, name: str, rate: float, burst: int) -> float:
        """Take one token from bucket *name*: 0.0, or the seconds until one is available."""


class LocalBuckets:
    """The buckets of this process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return 0.0
            self._buckets[name] = (tokens, now)
        return (1 - tokens) / rate


class RedisBuckets:
    """Buckets shared through Redis: one EVALSHA per check."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script: Any = self._client.register_script(BUCKET_SCRIPT)

    def take(self, name: str, rate: float, burst: int) -> float:
        wait = self._script(keys=[REDIS_PREFIX + name], args=[rate, burst])
        return int(wait) / 1_000_000


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.rate = settings.api.rate_per_second
        self.burst = settings.api.burst
        self._local = LocalBuckets()
        self._shared: Buckets | None = (
            RedisBuckets(settings.broker_url)
            if settings.broker_url.startswith(("redis://", "rediss://", "unix://"))
            else None
        )
        self._warned_at = 0.0

    def check(self, principal: Principal) -> None:
        """Count one request of the principal's application; RateLimited if over."""
        name = principal.application
        if name is None:
            return
        rate = self.rate if principal.rate_per_second is None else principal.rate_per_second
        if rate <= 0:
            return
        burst = self.burst if principal.burst is None else principal.burst
        wait = self._take(name, rate, burst)
        if wait > 0:
            raise RateLimited(max(1, math.ceil(wait)))

    def _take(self, name: str, rate: float, burst: int) -> float:
        if self._shared is not None:
            try:
                return self._shared.take(name, rate, burst)
            except RedisError:
                now = time.monotonic()
                if now - self._warned_at > 60:
                    self._warned_at = now
                    log.warning("rate limits: Redis unreachable, counting in this process")
        return self._local.take(name, rate, burst)


_create_lock = threading.Lock()


def limiter_for(state: Any, settings: Settings) -> RateLimiter:
    """The app's limiter (``app.state.rate_limiter``), made on first use."""
    limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        with _create_lock:
            limiter = getattr(state, "rate_limiter", None)
            if limiter is None:
                limiter = state.rate_limiter = RateLimiter(settings)
    return limiter
