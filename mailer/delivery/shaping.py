"""Per-destination shaping: which mailbox provider a domain belongs to, and how hard to push it.

A recipient domain is mapped to a provider by name for the big consumer domains
(gmail.com, hotmail.com, yahoo.com, icloud.com, ...), otherwise by its MX hosts, so that a
company on Google Workspace or Microsoft 365 counts as Google or Microsoft.  Each provider
has limits (``settings.providers``): transactions in flight, messages per connection and a
rate.  A reply that says "slow down" (421, 451 rate limited, try again later) halves the
provider's rate and holds its messages back for a while, doubling the pause each time it
happens again; a quiet minute restores the configured rate.  Messages held back are
deferred, never failed.

All of this is per worker process and lives on the delivery loop (``pool.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.asyncresolver

from mailer.core.config import DnsSettings, ProviderLimits
from mailer.core.dns import make_resolver, mx_hosts

__all__ = ["ProviderResolver", "ProviderState", "TokenBucket", "provider_of_mx"]

OTHER = "other"

# Consumer domains whose provider is known without asking DNS.
KNOWN_DOMAINS: dict[str, str] = {
    **dict.fromkeys(("gmail.com", "googlemail.com"), "google"),
    **dict.fromkeys(
        (
            "outlook.com",
            "outlook.es",
            "hotmail.com",
            "hotmail.es",
            "live.com",
            "msn.com",
            "live.com.pe",
        ),
        "microsoft",
    ),
    **dict.fromkeys(
        ("yahoo.com", "yahoo.es", "yahoo.com.pe", "ymail.com", "rocketmail.com"), "yahoo"
    ),
    **dict.fromkeys(("icloud.com", "me.com", "mac.com"), "icloud"),
}

# MX host suffixes of each provider (Workspace and 365 customers' domains point here).
KNOWN_MX: dict[str, tuple[str, ...]] = {
    "google": ("google.com", "googlemail.com"),
    "microsoft": ("outlook.com", "hotmail.com", "outlook.cn"),
    "yahoo": ("yahoodns.net", "yahoo.com"),
    "icloud": ("icloud.com", "me.com"),
}

MX_CACHE_SECONDS = 3600.0  # at most; the answer's TTL when shorter is ignored on purpose
FAILED_LOOKUP_SECONDS = 300.0  # a domain DNS could not place counts as "other" this long


def provider_of_mx(hosts: Iterable[str], patterns: dict[str, tuple[str, ...]] = KNOWN_MX) -> str:
    """The provider whose MX suffixes match the best MX host, else ``other``."""
    for host in hosts:
        host = host.lower().rstrip(".")
        for provider, suffixes in patterns.items():
            if any(host == suffix or host.endswith("." + suffix) for suffix in suffixes):
                return provider
        return OTHER  # only the preferred host decides
    return OTHER


class ProviderResolver:
    """Maps recipient domains to providers, asking DNS once per domain per hour."""

    def __init__(
        self,
        dns_settings: DnsSettings,
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dns_settings = dns_settings
        self._resolver = resolver
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}

    async def providers(self, domains: Iterable[str]) -> dict[str, str]:
        """The provider of each domain (lookups of unknown domains run concurrently)."""
        now = self._clock()
        found: dict[str, str] = {}
        missing: list[str] = []
        for domain in set(domains):
            key = domain.lower().rstrip(".")
            known = KNOWN_DOMAINS.get(key)
            cached = self._cache.get(key)
            if known is not None:
                found[domain] = known
            elif cached is not None and cached[0] > now:
                found[domain] = cached[1]
            else:
                missing.append(domain)
        if missing:
            looked_up = await asyncio.gather(*(self._lookup(d.lower()) for d in missing))
            found.update(zip(missing, looked_up, strict=True))
        return found

    async def _lookup(self, domain: str) -> str:
        if self._resolver is None:
            self._resolver = make_resolver(self.dns_settings)
        answer = await mx_hosts(self._resolver, domain, timeout=self.dns_settings.timeout_seconds)
        if answer is None:
            provider, ttl = OTHER, FAILED_LOOKUP_SECONDS
        else:
            provider, ttl = provider_of_mx(answer[0]), MX_CACHE_SECONDS
        self._cache[domain] = (self._clock() + ttl, provider)
        return provider


class TokenBucket:
    """A rate limit: ``rate`` tokens a second, bursts of up to ``burst``; rate 0 = none."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self) -> None:
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)


BACKOFF_FIRST = 30.0
BACKOFF_MAX = 900.0
RECOVER_AFTER = 60.0  # seconds without a slow-down reply that restore the configured rate
UNLIMITED_SLOW_RATE = 20.0  # messages/s a provider without a rate gets after a slow-down


@dataclass(slots=True)
class ProviderState:
    """One provider's limits and how it has treated us lately (per worker process)."""

    name: str
    limits: ProviderLimits
    clock: Callable[[], float] = time.monotonic
    slots: asyncio.Semaphore = field(init=False)
    bucket: TokenBucket = field(init=False)
    backoff_until: float = 0.0
    backoff_level: int = 0
    last_slowdown: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.limits.connections)
        self.bucket = TokenBucket(self.limits.rate, clock=self.clock)

    def held_back(self) -> str | None:
        """Why this provider's messages must wait now, or None."""
        now = self.clock()
        if now < self.backoff_until:
            return f"{self.name} asked us to slow down ({self.reason}); held back"
        if self.backoff_level and now - self.last_slowdown > RECOVER_AFTER:
            self.backoff_level = 0
            self.bucket.rate = self.limits.rate
        return None

    async def pace(self) -> str | None:
        reason = self.held_back()
        if reason is None:
            await self.bucket.take()
        return reason

    def slow_down(self, reason: str) -> float:
        """A "slow down" reply: pause, halve the rate; returns when sending may resume."""
        now = self.clock()
        if now < self.backoff_until:
            return self.backoff_until  # the same burst of replies: one step only
        pause = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self.backoff_level)
        self.backoff_level += 1
        self.backoff_until = now + pause
        self.last_slowdown = now
        self.reason = reason[:200]
        current = self.bucket.rate or UNLIMITED_SLOW_RATE * 2
        self.bucket.rate = max(0.1, current / 2)
        return self.backoff_until
