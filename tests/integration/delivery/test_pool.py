"""The relay pool against real SMTP servers (aiosmtpd capture relays) on 127.0.0.1:
spreading, failover, a relay that dies mid-run, destinations that ask us to slow down,
daily budgets, and the result hook that the acceptance journal hangs on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from mailer.core.config import DnsSettings, ProviderLimits, RelaySettings
from mailer.core.types import DeliveryResult, DeliveryStatus, Envelope
from mailer.delivery.capture import CaptureRelay
from mailer.delivery.pool import RelayPool, looks_like_slow_down
from tests.conftest import CLOSED_DNS_PORT, free_port

DNS = DnsSettings(servers=[f"127.0.0.1:{CLOSED_DNS_PORT}"], timeout_seconds=0.5)
LIMITS = {"google": ProviderLimits(connections=2, messages_per_connection=5)}


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rcpts: list[str] = []

    def __call__(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self.lock:
            self.rcpts.extend(rcpt_tos)


@pytest.fixture
def relays() -> Iterator[list[tuple[CaptureRelay, Sink]]]:
    started = []
    for _ in range(2):
        sink = Sink()
        relay = CaptureRelay("127.0.0.1", 0, sink=sink)
        relay.start()
        started.append((relay, sink))
    yield started
    for relay, _ in started:
        relay.stop()


def settings_of(relay: CaptureRelay, name: str, **extra: object) -> RelaySettings:
    return RelaySettings(host="127.0.0.1", port=relay.port, name=name, **extra)  # type: ignore[arg-type]


def envelopes(addresses: list[str], first_id: int = 1) -> list[Envelope]:
    body = b"From: a@news.test\r\nTo: x@y\r\nSubject: t\r\n\r\nhola\r\n"
    return [
        Envelope(first_id + i, "bounces+1-abc@news.test", address, body)
        for i, address in enumerate(addresses)
    ]


def run(pool: RelayPool, batch: list[Envelope], **kwargs: object) -> list[DeliveryResult]:
    async def go() -> list[DeliveryResult]:
        try:
            return await pool.send(batch, **kwargs)  # type: ignore[arg-type]
        finally:
            await pool.aclose()

    return asyncio.run(go())


def test_a_batch_is_spread_over_the_relays_and_connections_are_kept(relays) -> None:  # type: ignore[no-untyped-def]
    (a, sink_a), (b, sink_b) = relays
    pool = RelayPool([settings_of(a, "a"), settings_of(b, "b")], LIMITS, DNS)
    seen: list[int] = []
    addresses = [f"u{i}@example.pe" for i in range(60)] + [f"g{i}@gmail.com" for i in range(20)]

    async def twice() -> tuple[list[DeliveryResult], list[DeliveryResult], int]:
        first = await pool.send(envelopes(addresses), on_result=lambda r: seen.append(r.message_id))
        kept = sum(len(t._idle) for r in pool._relays for t in r.transports.values())
        second = await pool.send(envelopes(addresses, first_id=1000))
        await pool.aclose()
        return first, second, kept

    first, second, kept = asyncio.run(twice())
    assert all(r.status is DeliveryStatus.ACCEPTED for r in first + second)
    assert sorted(seen) == list(range(1, 81))  # every result went through the hook
    assert kept > 0  # connections stay open for the next batch
    assert len(sink_a.rcpts) + len(sink_b.rcpts) == 160
    assert sink_a.rcpts and sink_b.rcpts  # both relays took a share
    # Google's recipients went over Google's own connections (limits of its own).
    assert {r.relay for r in first} == {"a", "b"}
    assert set(pool._relays[0].transports) == {"other", "google"}
    assert pool._relays[0].transports["google"].messages_per_connection == 5


def test_a_relay_that_cannot_be_reached_is_taken_out_and_the_others_take_over(relays) -> None:  # type: ignore[no-untyped-def]
    (a, sink_a), _ = relays
    dead = RelaySettings(host="127.0.0.1", port=free_port(), name="dead", max_connections=8)
    pool = RelayPool([dead, settings_of(a, "a", max_connections=2)], LIMITS, DNS)
    results = run(pool, envelopes([f"u{i}@example.pe" for i in range(30)]))
    assert [r.status for r in results] == [DeliveryStatus.ACCEPTED] * 30
    assert {r.relay for r in results} == {"a"}
    assert len(sink_a.rcpts) == 30
    status = {s["relay"]: s for s in pool.status()}
    assert status["dead"]["up"] is False and "cannot connect" in status["dead"]["last_error"]
    assert status["a"]["up"] is True


def test_a_relay_that_dies_between_batches_fails_over(relays) -> None:  # type: ignore[no-untyped-def]
    (a, _sink_a), (b, sink_b) = relays
    pool = RelayPool([settings_of(a, "a"), settings_of(b, "b")], LIMITS, DNS)

    async def scenario() -> list[DeliveryResult]:
        await pool.send(envelopes([f"u{i}@example.pe" for i in range(20)]))
        a.stop()  # its kept-open connections break under the next batch
        second = await pool.send(envelopes([f"v{i}@example.pe" for i in range(40)], 100))
        await pool.aclose()
        return second

    second = asyncio.run(scenario())
    assert [r.status for r in second] == [DeliveryStatus.ACCEPTED] * 40
    assert {r.relay for r in second} == {"b"}
    assert len([x for x in sink_b.rcpts if x.startswith("v")]) == 40


def test_every_relay_down_holds_the_messages_without_spending_attempts() -> None:
    dead = RelaySettings(host="127.0.0.1", port=free_port(), name="dead")
    pool = RelayPool([dead], LIMITS, DNS, down_seconds=60)
    results = run(pool, envelopes(["a@example.pe", "b@example.pe"]))
    assert {r.status for r in results} == {DeliveryStatus.HELD}
    assert all(r.retry_at is not None for r in results)
    assert "every relay is down" in results[0].text


def test_a_destination_that_says_slow_down_is_paused_alone(relays) -> None:  # type: ignore[no-untyped-def]
    (a, sink_a), _ = relays
    pool = RelayPool([settings_of(a, "a", max_connections=1)], LIMITS, DNS)

    async def scenario() -> tuple[list[DeliveryResult], list[DeliveryResult]]:
        first = await pool.send(envelopes(["slow-1@gmail.com", "g2@gmail.com", "u1@example.pe"]))
        later = await pool.send(envelopes(["g3@gmail.com", "u2@example.pe"], 10))
        await pool.aclose()
        return first, later

    first, later = asyncio.run(scenario())
    by_address = dict(zip(["slow-1", "g2", "u1"], first, strict=True))
    assert by_address["slow-1"].status is DeliveryStatus.HELD  # not failed, not an attempt
    assert by_address["slow-1"].retry_at is not None
    assert by_address["u1"].status is DeliveryStatus.ACCEPTED  # other destinations go on
    assert later[0].status is DeliveryStatus.HELD and "slow down" in later[0].text
    assert later[1].status is DeliveryStatus.ACCEPTED
    assert "g3@gmail.com" not in sink_a.rcpts


def test_budgets_cap_each_relay_and_hold_the_rest(relays) -> None:  # type: ignore[no-untyped-def]
    (a, sink_a), (b, sink_b) = relays
    pool = RelayPool([settings_of(a, "a"), settings_of(b, "b")], LIMITS, DNS)
    results = run(
        pool, envelopes([f"u{i}@example.pe" for i in range(10)]), budgets={"a": 3, "b": 4}
    )
    statuses = [r.status for r in results]
    assert statuses.count(DeliveryStatus.ACCEPTED) == 7
    assert statuses.count(DeliveryStatus.HELD) == 3
    assert len(sink_a.rcpts) == 3 and len(sink_b.rcpts) == 4
    held = [r for r in results if r.status is DeliveryStatus.HELD]
    assert all("quota" in r.text for r in held)


def test_the_default_slow_down_rule() -> None:
    assert looks_like_slow_down(421, "4.7.0 Try again later")
    assert looks_like_slow_down(451, "4.7.28 rate limited")
    assert not looks_like_slow_down(450, "4.2.1 mailbox temporarily unavailable")
    assert not looks_like_slow_down(550, "rate limited")


def test_a_relay_that_answers_421_is_left_out_and_its_messages_rerouted(relays) -> None:  # type: ignore[no-untyped-def]
    (a, sink_a), (b, sink_b) = relays

    class Refusing:
        async def handle_MAIL(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
            return "421 4.7.0 Try again later, closing connection"

    from aiosmtpd.controller import Controller

    port = free_port()
    refusing = Controller(Refusing(), hostname="127.0.0.1", port=port)
    refusing.start()
    try:
        busy = RelaySettings(host="127.0.0.1", port=port, name="busy", max_connections=4)
        pool = RelayPool([busy, settings_of(a, "a"), settings_of(b, "b")], LIMITS, DNS)
        results = run(pool, envelopes([f"u{i}@example.pe" for i in range(30)]))
    finally:
        refusing.stop()
    assert [r.status for r in results] == [DeliveryStatus.ACCEPTED] * 30
    assert {r.relay for r in results} <= {"a", "b"}
    assert len(sink_a.rcpts) + len(sink_b.rcpts) == 30
    status = {s["relay"]: s for s in pool.status()}
    assert status["busy"]["up"] is False and "421" in status["busy"]["last_error"]
