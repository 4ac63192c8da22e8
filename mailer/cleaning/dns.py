"""What DNS says about recipient domains: MX, implicit MX (A/AAAA), null MX, NXDOMAIN, no mail
host, or trouble (timeout, SERVFAIL, REFUSED) that makes the verdict ``unknown``, never
``invalid``.

``DomainChecker`` asks each domain once: answers are cached for their TTL (capped by
``settings.dns.cache_seconds``), negative answers for the SOA's negative TTL, DNS trouble only
briefly; concurrent checks of one domain share one lookup; a semaphore bounds the queries in
flight.  ``clean_addresses`` is the synchronous whole: syntax, one check per distinct
domain, ``judge``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from mailer.cleaning.service import (
    check_syntax,
    domain_forms,
    judge,
    split_address,
)
from mailer.cleaning.verdicts import DomainVerdict, EmailVerdict, Reason, Verdict
from mailer.core.config import DnsSettings
from mailer.core.dns import make_resolver

UNKNOWN_CACHE_SECONDS = 30.0  # DNS trouble is asked again soon
MX_TARGETS_PER_ROUND = 3  # MX hosts resolved at once, best preference first
CACHE_LIMIT = 200_000  # entries per cache before the oldest are dropped

_T = TypeVar("_T")


class _Status(StrEnum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    ERROR = "error"  # timeout, SERVFAIL, REFUSED, unreachable: nobody knows


@dataclass(frozen=True, slots=True)
class _Lookup:
    status: _Status
    ttl: float
    records: tuple[object, ...] = ()
    detail: str = ""


@dataclass(slots=True)
class _LoopState:
    """What cannot outlive an event loop (``check_many_sync`` runs one per call)."""

    semaphore: asyncio.Semaphore
    domains: dict[str, asyncio.Future[DomainVerdict]] = field(default_factory=dict)
    hosts: dict[str, asyncio.Future[_Lookup]] = field(default_factory=dict)


class _TtlCache:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, object]] = {}

    def get(self, key: str) -> object | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: str, value: object, ttl: float) -> None:
        if len(self._entries) >= CACHE_LIMIT:
            self._prune()
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + ttl, value)

    def _prune(self) -> None:
        now = self._clock()
        for key in [key for key, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]
        for key in list(self._entries)[: max(0, len(self._entries) - CACHE_LIMIT // 2)]:
            del self._entries[key]  # oldest first: dicts keep insertion order


class DomainChecker:
    """Checks recipient domains against DNS, once each.  Safe to share between threads: the
    caches are shared, the concurrency limit applies per event loop."""

    def __init__(
        self, settings: DnsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.resolver = make_resolver(settings)
        self._domains = _TtlCache(clock)
        self._hosts = _TtlCache(clock)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()

    # --- public API -------------------------------------------------------------------------

    async def check(self, domain: str) -> DomainVerdict:
        """The verdict on *domain* (any case, U-label or A-label)."""
        forms = domain_forms(domain)
        if forms is None:
            name = domain.strip().rstrip(".").lower()
            return DomainVerdict(name, Verdict.INVALID, (Reason.SYNTAX,), detail="invalid domain")
        key, ascii_name = forms
        cached = self._domains.get(key)
        if isinstance(cached, DomainVerdict):
            return cached
        state = self._state()
        return await self._shared(state.domains, key, lambda: self._check_uncached(key, ascii_name))

    async def check_many(self, domains: Iterable[str]) -> dict[str, DomainVerdict]:
        """Verdicts keyed by the normalised domain (lower case, U-label, as ``split_address``
        returns it); each distinct domain is looked up once."""
        keys = list(dict.fromkeys(_normalised(domain) for domain in domains))
        results: dict[str, DomainVerdict] = {}
        pending = iter(keys)

        async def work() -> None:
            for key in pending:
                results[key] = await self.check(key)

        workers = min(self.settings.concurrency, len(keys))
        await asyncio.gather(*(work() for _ in range(workers)))
        return {key: results[key] for key in keys}

    def check_many_sync(self, domains: Iterable[str]) -> dict[str, DomainVerdict]:
        """``check_many`` for synchronous callers (workers, CLI), from any thread."""
        domain_list = list(domains)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.check_many(domain_list))
        # Called from async code: a loop cannot be nested, so run ours in a thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.check_many(domain_list)).result()

    async def mx_hosts(self, domain: str) -> tuple[str, ...]:
        """The hosts that take *domain*'s mail, best preference first (empty if none)."""
        return (await self.check(domain)).mx

    # --- the decision -----------------------------------------------------------------------

    async def _check_uncached(self, key: str, name: str) -> DomainVerdict:
        verdict, ttl = await self._decide(key, name)
        self._domains.put(key, verdict, ttl)
        return verdict

    async def _decide(self, key: str, name: str) -> tuple[DomainVerdict, float]:
        mx = await self._lookup(name, dns.rdatatype.MX)
        if mx.status is _Status.NXDOMAIN:
            return DomainVerdict(key, Verdict.INVALID, (Reason.NXDOMAIN,)), mx.ttl
        if mx.status is _Status.ERROR:
            return _dns_error(key, mx.detail), mx.ttl
        if mx.status is _Status.NODATA:
            return await self._implicit_mx(key, name, mx.ttl)
        records = sorted((r for r in mx.records if isinstance(r, MX)), key=_preference)
        hosts = tuple(
            dict.fromkeys(
                r.exchange.to_text(omit_final_dot=True).lower()
                for r in records
                if r.exchange != dns.name.root
            )
        )
        if not hosts:  # "MX 0 ." (RFC 7505): this domain says it takes no mail
            return DomainVerdict(key, Verdict.INVALID, (Reason.NULL_MX,)), mx.ttl
        return await self._mx_targets(key, hosts, mx.ttl)

    async def _implicit_mx(self, key: str, name: str, ttl: float) -> tuple[DomainVerdict, float]:
        # RFC 5321 5.1: without MX records the domain's own address is the mail host.
        host = await self._host(name)
        ttl = min(ttl, host.ttl)
        if host.status is _Status.ANSWER:
            return DomainVerdict(key, Verdict.VALID, (Reason.IMPLICIT_MX,), mx=(name,)), ttl
        if host.status is _Status.ERROR:
            return _dns_error(key, host.detail), host.ttl
        if host.status is _Status.NXDOMAIN:
            return DomainVerdict(key, Verdict.INVALID, (Reason.NXDOMAIN,)), ttl
        verdict = DomainVerdict(
            key, Verdict.INVALID, (Reason.NO_MAIL_HOST,), detail="no MX, A or AAAA records"
        )
        return verdict, ttl

    async def _mx_targets(
        self, key: str, hosts: tuple[str, ...], ttl: float
    ) -> tuple[DomainVerdict, float]:
        unresolved = False
        for start in range(0, len(hosts), MX_TARGETS_PER_ROUND):
            batch = hosts[start : start + MX_TARGETS_PER_ROUND]
            lookups = await asyncio.gather(*(self._host(host) for host in batch))
            ttl = min([ttl, *(lookup.ttl for lookup in lookups)])
            if any(lookup.status is _Status.ANSWER for lookup in lookups):
                return DomainVerdict(key, Verdict.VALID, (Reason.MX,), mx=hosts), ttl
            unresolved = unresolved or any(lookup.status is _Status.ERROR for lookup in lookups)
        if unresolved:
            # A slow MX host is not a dead one: keep the domain, ask again soon.
            verdict = DomainVerdict(
                key, Verdict.VALID, (Reason.MX,), mx=hosts, detail="mx hosts not resolved"
            )
            return verdict, min(ttl, UNKNOWN_CACHE_SECONDS)
        verdict = DomainVerdict(
            key, Verdict.INVALID, (Reason.NO_MAIL_HOST,), detail="mx hosts do not resolve"
        )
        return verdict, ttl

    # --- lookups ----------------------------------------------------------------------------

    async def _host(self, name: str) -> _Lookup:
        """Whether *name* has an address: A, else AAAA; cached, shared while in flight."""
        cached = self._hosts.get(name)
        if isinstance(cached, _Lookup):
            return cached
        state = self._state()
        return await self._shared(state.hosts, name, lambda: self._host_uncached(name))

    async def _host_uncached(self, name: str) -> _Lookup:
        lookup = await self._lookup(name, dns.rdatatype.A)
        if lookup.status is _Status.NODATA:
            aaaa = await self._lookup(name, dns.rdatatype.AAAA)
            lookup = _Lookup(aaaa.status, min(lookup.ttl, aaaa.ttl), aaaa.records, aaaa.detail)
        self._hosts.put(name, lookup, lookup.ttl)
        return lookup

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        """One DNS question, within the concurrency limit, as a value."""
        cap = float(self.settings.cache_seconds)
        unknown_ttl = min(cap, UNKNOWN_CACHE_SECONDS)
        async with self._state().semaphore:
            try:
                # dnspython may back off past its lifetime before giving up; the setting is
                # a promise to callers, so hold it here.
                async with asyncio.timeout(self.settings.timeout_seconds):
                    answer = await self.resolver.resolve(
                        f"{name}.", rdtype, raise_on_no_answer=False, search=False
                    )
            except TimeoutError:
                return _Lookup(_Status.ERROR, unknown_ttl, detail="timeout")
            except dns.resolver.NXDOMAIN as exc:
                responses = exc.kwargs.get("responses") or {}
                ttl = _negative_ttl(next(iter(responses.values()), None))
                return _Lookup(_Status.NXDOMAIN, min(cap, ttl if ttl is not None else cap))
            except dns.resolver.NoNameservers as exc:
                return _Lookup(_Status.ERROR, unknown_ttl, detail=_failure(exc))
            except dns.exception.Timeout:
                return _Lookup(_Status.ERROR, unknown_ttl, detail="timeout")
            except dns.exception.DNSException as exc:
                return _Lookup(_Status.ERROR, unknown_ttl, detail=type(exc).__name__.lower())
        if answer.rrset is None:
            ttl = _negative_ttl(answer.response)
            return _Lookup(_Status.NODATA, min(cap, ttl if ttl is not None else cap))
        return _Lookup(_Status.ANSWER, min(cap, float(answer.rrset.ttl)), tuple(answer.rrset))

    # --- per-loop plumbing ------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            state = self._loops.get(loop)
            if state is None:
                state = _LoopState(asyncio.Semaphore(self.settings.concurrency))
                self._loops[loop] = state
            return state

    @staticmethod
    async def _shared(
        inflight: dict[str, asyncio.Future[_T]],
        key: str,
        start: Callable[[], Coroutine[Any, Any, _T]],
    ) -> _T:
        """Await the lookup for *key* already in flight, or start it: one query per name even
        when many addresses of one domain are checked at once."""
        future = inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(start())
            inflight[key] = future

            def forget(done: asyncio.Future[_T], key: str = key) -> None:
                if inflight.get(key) is done:
                    del inflight[key]

            future.add_done_callback(forget)
        # One caller giving up must not cancel the lookup the others wait for.
        return await asyncio.shield(future)


def _normalised(domain: str) -> str:
    forms = domain_forms(domain)
    return forms[0] if forms is not None else domain.strip().rstrip(".").lower()


def _preference(record: MX) -> int:
    return int(record.preference)


def _dns_error(key: str, detail: str) -> DomainVerdict:
    return DomainVerdict(key, Verdict.UNKNOWN, (Reason.DNS_ERROR,), detail=detail)


def _negative_ttl(response: dns.message.Message | None) -> float | None:
    """The negative-caching TTL of a NXDOMAIN/NODATA response (RFC 2308: the SOA's TTL,
    at most its MINIMUM field), or None if it carries no SOA."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return None


def _failure(exc: dns.resolver.NoNameservers) -> str:
    """servfail, refused, unreachable, ... from the first resolver's error."""
    for error in exc.kwargs.get("errors") or []:
        problem, response = error[3], error[4]
        if isinstance(response, dns.message.Message):
            return dns.rcode.to_text(response.rcode()).lower()
        if isinstance(problem, dns.exception.Timeout):
            return "timeout"
        if isinstance(problem, OSError):
            return "unreachable"
        if problem is not None:
            return type(problem).__name__.lower()
    return "no nameservers"


def clean_addresses(addresses: Iterable[str], checker: DomainChecker) -> list[EmailVerdict]:
    """A verdict per address, in order: syntax, one DNS check per distinct domain, judge."""
    syntaxes = [check_syntax(address) for address in addresses]
    domains = {split_address(s.normalized)[1] for s in syntaxes if s.ok}
    verdicts = checker.check_many_sync(domains)
    return [
        judge(s, verdicts.get(split_address(s.normalized)[1]) if s.ok else None) for s in syntaxes
    ]
