"""DomainChecker and clean_addresses against a real resolver (unbound serving test zones)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import dns.rdatatype
import pytest

from mailer.cleaning.dns import DomainChecker, clean_addresses
from mailer.cleaning.verdicts import DomainVerdict, Reason, Verdict
from mailer.core.config import DnsSettings
from tests.unbound import (
    A_ONLY_DOMAIN,
    AAAA_ONLY_DOMAIN,
    DISPOSABLE_DOMAIN,
    GMAIL,
    IDN_ASCII,
    IDN_DOMAIN,
    LONG_TTL_DOMAIN,
    MANY_MX_DOMAIN,
    MX_DOMAIN,
    MX_HOSTS,
    MX_ONE_DEAD,
    MX_TO_NODATA,
    MX_TO_NXDOMAIN,
    MX_TO_TIMEOUT,
    NEGATIVE_TTL,
    NODATA_DOMAIN,
    NULL_MX_DOMAIN,
    NXDOMAIN_DOMAIN,
    REFUSED_DOMAIN,
    SERVFAIL_DOMAIN,
    SHORT_TTL,
    TIMEOUT_DOMAIN,
    TYPO_NXDOMAIN,
    TYPO_WITH_MX,
    UnboundServer,
)

TIMEOUT = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class QueryLog:
    """Wraps the checker's resolver: every question asked, and how many were in flight."""

    def __init__(self, checker: DomainChecker, delay: float = 0.0) -> None:
        self.asked: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        original = checker.resolver.resolve

        async def resolve(qname: Any, rdtype: Any, *args: Any, **kwargs: Any) -> Any:
            self.asked[str(qname).rstrip(".").lower(), dns.rdatatype.to_text(rdtype)] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if delay:
                    await asyncio.sleep(delay)
                return await original(qname, rdtype, *args, **kwargs)
            finally:
                self.in_flight -= 1

        checker.resolver.resolve = resolve  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(self.asked.values())


def make_checker(
    server: UnboundServer, clock: FakeClock | None = None, **settings: Any
) -> DomainChecker:
    dns_settings = DnsSettings(
        **{"servers": [server.address], "timeout_seconds": TIMEOUT, **settings}
    )
    if clock is None:
        return DomainChecker(dns_settings)
    return DomainChecker(dns_settings, clock=clock)


def check(checker: DomainChecker, domain: str) -> DomainVerdict:
    return asyncio.run(checker.check(domain))


# --- one verdict per kind of domain ---------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "verdict", "reason", "detail"),
    [
        (MX_DOMAIN, Verdict.VALID, Reason.MX, ""),
        (MANY_MX_DOMAIN, Verdict.VALID, Reason.MX, ""),
        (MX_ONE_DEAD, Verdict.VALID, Reason.MX, ""),
        (A_ONLY_DOMAIN, Verdict.VALID, Reason.IMPLICIT_MX, ""),
        (AAAA_ONLY_DOMAIN, Verdict.VALID, Reason.IMPLICIT_MX, ""),
        (NULL_MX_DOMAIN, Verdict.INVALID, Reason.NULL_MX, ""),
        (NXDOMAIN_DOMAIN, Verdict.INVALID, Reason.NXDOMAIN, ""),
        (NODATA_DOMAIN, Verdict.INVALID, Reason.NO_MAIL_HOST, "no MX, A or AAAA records"),
        (MX_TO_NXDOMAIN, Verdict.INVALID, Reason.NO_MAIL_HOST, "mx hosts do not resolve"),
        (MX_TO_NODATA, Verdict.INVALID, Reason.NO_MAIL_HOST, "mx hosts do not resolve"),
        (MX_TO_TIMEOUT, Verdict.VALID, Reason.MX, "mx hosts not resolved"),
        (IDN_DOMAIN, Verdict.VALID, Reason.MX, ""),
        (TIMEOUT_DOMAIN, Verdict.UNKNOWN, Reason.DNS_ERROR, "timeout"),
        (REFUSED_DOMAIN, Verdict.UNKNOWN, Reason.DNS_ERROR, "refused"),
        (SERVFAIL_DOMAIN, Verdict.UNKNOWN, Reason.DNS_ERROR, "servfail"),
        ("sin-zona.com", Verdict.UNKNOWN, Reason.DNS_ERROR, "servfail"),
        (TYPO_WITH_MX, Verdict.VALID, Reason.MX, ""),
        (TYPO_NXDOMAIN, Verdict.INVALID, Reason.NXDOMAIN, ""),
        (DISPOSABLE_DOMAIN, Verdict.VALID, Reason.MX, ""),
    ],
)
def test_domain_verdicts(
    dns_server: UnboundServer, domain: str, verdict: Verdict, reason: Reason, detail: str
) -> None:
    result = check(make_checker(dns_server), domain)
    assert (result.domain, result.verdict, result.reasons, result.detail) == (
        domain,
        verdict,
        (reason,),
        detail,
    )


def test_mail_hosts_in_preference_order(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    assert asyncio.run(checker.mx_hosts(MX_DOMAIN)) == MX_HOSTS
    assert asyncio.run(checker.mx_hosts(A_ONLY_DOMAIN)) == (A_ONLY_DOMAIN,)
    assert asyncio.run(checker.mx_hosts(NULL_MX_DOMAIN)) == ()
    assert asyncio.run(checker.mx_hosts(NXDOMAIN_DOMAIN)) == ()


def test_mx_hosts_are_tried_past_the_first_round(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    log = QueryLog(checker)
    assert check(checker, MANY_MX_DOMAIN).verdict is Verdict.VALID
    # The three best MX hosts have no address; the fourth (preference 40) decides.
    assert log.asked["uno.fantasma.casos.pe", "A"] == 1
    assert log.asked[MX_HOSTS[0], "A"] == 1


def test_internationalised_domains_are_asked_as_a_labels(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    log = QueryLog(checker)
    verdicts = asyncio.run(checker.check_many([IDN_DOMAIN, IDN_ASCII, "Correo.ESPAÑA.pe"]))
    assert list(verdicts) == [IDN_DOMAIN]
    assert verdicts[IDN_DOMAIN].verdict is Verdict.VALID
    assert log.asked[IDN_ASCII, "MX"] == 1
    assert check(checker, "not a domain").reasons == (Reason.SYNTAX,)


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.5, 1.0])
def test_a_dropped_query_is_unknown_within_the_timeout(
    dns_server: UnboundServer, timeout: float
) -> None:
    checker = make_checker(dns_server, timeout_seconds=timeout)
    started = time.monotonic()
    verdict = check(checker, TIMEOUT_DOMAIN)
    elapsed = time.monotonic() - started
    assert (verdict.verdict, verdict.detail) == (Verdict.UNKNOWN, "timeout")
    assert timeout * 0.9 <= elapsed < timeout + 0.15


# --- one lookup per domain, cached for its TTL ----------------------------------------------


def test_one_lookup_per_domain_cached_for_the_answer_ttl(dns_server: UnboundServer) -> None:
    clock = FakeClock()
    checker = make_checker(dns_server, clock)
    log = QueryLog(checker)
    first = checker.check_many_sync([MX_DOMAIN, MX_DOMAIN.upper(), f"{MX_DOMAIN}.", MX_DOMAIN])
    assert list(first) == [MX_DOMAIN]
    assert log.asked[MX_DOMAIN, "MX"] == 1
    asked = log.total

    clock.now += SHORT_TTL - 1
    assert checker.check_many_sync([MX_DOMAIN]) == first
    assert log.total == asked  # still cached: nothing asked

    clock.now += 2  # past the records' TTL
    assert checker.check_many_sync([MX_DOMAIN]) == first
    assert log.asked[MX_DOMAIN, "MX"] == 2


def test_long_ttls_are_capped_by_cache_seconds(dns_server: UnboundServer) -> None:
    clock = FakeClock()
    checker = make_checker(dns_server, clock, cache_seconds=300)
    log = QueryLog(checker)
    check(checker, LONG_TTL_DOMAIN)
    clock.now += 299
    check(checker, LONG_TTL_DOMAIN)
    assert log.asked[LONG_TTL_DOMAIN, "MX"] == 1
    clock.now += 2  # the answer's TTL is a day; the cap is 300 s
    check(checker, LONG_TTL_DOMAIN)
    assert log.asked[LONG_TTL_DOMAIN, "MX"] == 2


def test_negative_answers_are_cached_for_the_soa_minimum(dns_server: UnboundServer) -> None:
    clock = FakeClock()
    checker = make_checker(dns_server, clock)
    log = QueryLog(checker)
    for domain in (NXDOMAIN_DOMAIN, NODATA_DOMAIN):
        check(checker, domain)
    clock.now += NEGATIVE_TTL - 1
    for domain in (NXDOMAIN_DOMAIN, NODATA_DOMAIN):
        check(checker, domain)
    assert (log.asked[NXDOMAIN_DOMAIN, "MX"], log.asked[NODATA_DOMAIN, "MX"]) == (1, 1)
    clock.now += 2
    for domain in (NXDOMAIN_DOMAIN, NODATA_DOMAIN):
        check(checker, domain)
    assert (log.asked[NXDOMAIN_DOMAIN, "MX"], log.asked[NODATA_DOMAIN, "MX"]) == (2, 2)


def test_dns_trouble_is_cached_only_briefly(dns_server: UnboundServer) -> None:
    clock = FakeClock()
    checker = make_checker(dns_server, clock)
    log = QueryLog(checker)
    check(checker, REFUSED_DOMAIN)
    clock.now += 29
    check(checker, REFUSED_DOMAIN)
    assert log.asked[REFUSED_DOMAIN, "MX"] == 1
    clock.now += 2
    assert check(checker, REFUSED_DOMAIN).verdict is Verdict.UNKNOWN
    assert log.asked[REFUSED_DOMAIN, "MX"] == 2


def test_concurrent_checks_share_one_lookup(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    log = QueryLog(checker, delay=0.05)

    async def many() -> list[DomainVerdict]:
        return await asyncio.gather(*(checker.check(MX_DOMAIN) for _ in range(20)))

    verdicts = asyncio.run(many())
    assert len(set(verdicts)) == 1
    assert log.asked[MX_DOMAIN, "MX"] == 1
    assert log.asked[MX_HOSTS[0], "A"] == 1


def test_mail_hosts_shared_by_domains_are_resolved_once(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    log = QueryLog(checker)
    verdicts = checker.check_many_sync([MX_DOMAIN, IDN_DOMAIN, MANY_MX_DOMAIN])
    assert {v.verdict for v in verdicts.values()} == {Verdict.VALID}
    assert log.asked[MX_HOSTS[0], "A"] == 1


# --- concurrency ----------------------------------------------------------------------------


def test_queries_in_flight_never_exceed_the_limit(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server, concurrency=3)
    log = QueryLog(checker, delay=0.02)
    domains = [f"n{i}.casos.pe" for i in range(12)] + [MX_DOMAIN, MANY_MX_DOMAIN, MX_ONE_DEAD]

    async def each_on_its_own() -> list[DomainVerdict]:
        return await asyncio.gather(*(checker.check(domain) for domain in domains))

    asyncio.run(each_on_its_own())
    assert log.max_in_flight == 3

    checker = make_checker(dns_server, concurrency=3)
    log = QueryLog(checker, delay=0.02)
    verdicts = checker.check_many_sync(domains)
    assert len(verdicts) == len(domains)
    assert log.max_in_flight == 3


def test_check_many_sync_from_a_thread_and_from_async_code(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    results: list[dict[str, DomainVerdict]] = []
    worker = threading.Thread(target=lambda: results.append(checker.check_many_sync([GMAIL])))
    worker.start()
    worker.join(timeout=10)
    assert results[0][GMAIL].verdict is Verdict.VALID

    async def inside_a_loop() -> dict[str, DomainVerdict]:
        return checker.check_many_sync([A_ONLY_DOMAIN])

    assert asyncio.run(inside_a_loop())[A_ONLY_DOMAIN].reasons == (Reason.IMPLICIT_MX,)


# --- whole addresses ------------------------------------------------------------------------


def test_clean_addresses_on_a_mixed_list(dns_server: UnboundServer) -> None:
    checker = make_checker(dns_server)
    log = QueryLog(checker)
    addresses = [
        "Juan.Perez@gmail.com",
        "ventas@mx.casos.pe",
        "ana@gmial.com",
        "ana@hotmial.com",
        "temporal@mailinator.com",
        "x@nulo.casos.pe",
        "x@inexistente.casos.pe",
        "x@lento.pe",
        "juan@@gmail.com",
        "JUAN.PEREZ@GMAIL.COM",
        "ana@correo.españa.pe",
        "ana@solo-aaaa.casos.pe",
    ]
    verdicts = clean_addresses(addresses, checker)
    summary = [(v.address, v.verdict, v.reasons, v.suggestion) for v in verdicts]
    assert summary == [
        ("juan.perez@gmail.com", Verdict.VALID, (Reason.MX,), None),
        ("ventas@mx.casos.pe", Verdict.RISKY, (Reason.MX, Reason.ROLE), None),
        (
            "ana@gmial.com",
            Verdict.RISKY,
            (Reason.MX, Reason.DISPOSABLE, Reason.TYPO),  # typo squatters are on the list too
            "ana@gmail.com",
        ),
        (
            "ana@hotmial.com",
            Verdict.INVALID,
            (Reason.NXDOMAIN, Reason.DISPOSABLE, Reason.TYPO),
            "ana@hotmail.com",
        ),
        ("temporal@mailinator.com", Verdict.RISKY, (Reason.MX, Reason.DISPOSABLE), None),
        ("x@nulo.casos.pe", Verdict.INVALID, (Reason.NULL_MX,), None),
        ("x@inexistente.casos.pe", Verdict.INVALID, (Reason.NXDOMAIN,), None),
        ("x@lento.pe", Verdict.UNKNOWN, (Reason.DNS_ERROR,), None),
        ("juan@@gmail.com", Verdict.INVALID, (Reason.SYNTAX,), None),
        ("juan.perez@gmail.com", Verdict.VALID, (Reason.MX,), None),
        ("ana@correo.españa.pe", Verdict.VALID, (Reason.MX,), None),
        ("ana@solo-aaaa.casos.pe", Verdict.VALID, (Reason.IMPLICIT_MX,), None),
    ]
    assert verdicts[7].detail == "timeout"
    assert log.asked[GMAIL, "MX"] == 1
    assert all(count == 1 for (_, rdtype), count in log.asked.items() if rdtype == "MX")
