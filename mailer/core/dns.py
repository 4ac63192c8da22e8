"""The DNS resolver every package shares: built from ``settings.dns`` (resolvers, timeout).

Cleaning judges recipient domains with it (``mailer.cleaning.dns``); delivery asks it for
the MX hosts that tell which mailbox provider a domain belongs to
(``mailer.delivery.shaping``).  Each user keeps its own cache, with its own rules.
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from mailer.core.config import DnsSettings
from mailer.core.errors import ConfigError


def make_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    """An async resolver on ``settings.servers``, or the system's when that is empty."""
    try:
        resolver = dns.asyncresolver.Resolver(configure=not settings.servers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            "no system DNS resolver ({error}): set dns.servers", field="dns.servers", error=exc
        ) from None
    if settings.servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in settings.nameservers
        ]
    resolver.lifetime = settings.timeout_seconds
    # Two tries per server within the lifetime, so one lost UDP packet is not an error.
    resolver.timeout = settings.timeout_seconds / 2
    resolver.cache = None  # callers cache with their own TTL rules
    return resolver


async def mx_hosts(
    resolver: dns.asyncresolver.Resolver, domain: str, *, timeout: float
) -> tuple[tuple[str, ...], float] | None:
    """The MX hosts of *domain*, best preference first, and the answer's TTL.

    ``((), ttl)`` when the domain has no MX records (or a null MX); ``None`` when DNS
    could not say (timeout, SERVFAIL, refused, unreachable).
    """
    try:
        async with asyncio.timeout(timeout):
            answer = await resolver.resolve(
                f"{domain}.", dns.rdatatype.MX, raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN:
        return (), 300.0
    except (TimeoutError, dns.exception.DNSException):
        return None
    if answer.rrset is None:
        return (), 300.0
    records = sorted(
        (r for r in answer.rrset if isinstance(r, MX)), key=lambda record: record.preference
    )
    hosts = tuple(
        dict.fromkeys(
            r.exchange.to_text(omit_final_dot=True).lower()
            for r in records
            if r.exchange != dns.name.root
        )
    )
    return hosts, float(answer.rrset.ttl)
