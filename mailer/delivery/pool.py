"""The relay pool: every campaign message of a worker process leaves through here.

- **Relays** (``settings.relays``, or the single ``settings.relay``): each with its own
  connection limit, rate and kept-open connections.  A relay that cannot be reached (or
  drops connections) is taken out for ``delivery.relay_down_seconds``, doubling while it
  keeps failing, and its messages go to the others at once; it is tried again after.
- **Daily caps and warm-up** are decided above, against the ledger (workers share them):
  a batch comes with a *budget* per relay, and what no budget covers is held (``HELD``).
- **Destinations**: recipients are grouped by mailbox provider (``shaping.py``); each
  provider's limits bound the transactions in flight and the rate, its messages get their
  own connections (so its ``messages_per_connection`` holds), and a "slow down" reply
  pauses that provider only: its messages are held, not failed.

Connections live on one event loop per process, :class:`DeliveryLoop`, which worker threads
hand their batches to; the connections stay open between batches.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from mailer.core.clock import utcnow
from mailer.core.config import DnsSettings, ProviderLimits, RelaySettings
from mailer.core.types import DeliveryResult, DeliveryStatus, Envelope
from mailer.delivery.shaping import OTHER, ProviderResolver, ProviderState, TokenBucket
from mailer.delivery.smtp import OnResult, SmtpTransport

__all__ = ["DeliveryLoop", "RelayPool", "SlowDown", "looks_like_slow_down"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
SlowDown = Callable[[int | None, str], bool]
"""Whether a 4xx reply means "you are sending too fast" (bounces.is_rate_limited)."""

MAX_DOWN_SECONDS = 900.0
_PACED = "; held back"  # the end of every text of an envelope the pace did not let go
REROUTE_ROUNDS = 3
_SLOW_DOWN = re.compile(
    r"rate.?limit|too many (?:messages|connections|recipients|concurrent)|try (?:again )?later"
    r"|throttl|slow down|\b4\.7\.(?:0|28)\b|exceeded",
    re.IGNORECASE,
)


def looks_like_slow_down(code: int | None, text: str) -> bool:
    """A small default for :data:`SlowDown`: 421, or a 4xx that says so."""
    if code is None or not 400 <= code < 500:
        return False
    return code == 421 or bool(_SLOW_DOWN.search(text))


@dataclass(slots=True)
class _Relay:
    settings: RelaySettings
    down_seconds: float
    tls_validate: bool
    clock: Callable[[], float]
    label: str = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    bucket: TokenBucket = field(init=False)
    transports: dict[str, SmtpTransport] = field(default_factory=dict)
    down_until: float = 0.0
    failures: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.label = self.settings.label
        self.slots = asyncio.Semaphore(self.settings.max_connections)
        self.bucket = TokenBucket(self.settings.max_rate, clock=self.clock)

    def up(self) -> bool:
        return self.clock() >= self.down_until

    def failed(self, error: str) -> None:
        self.failures += 1
        pause = min(MAX_DOWN_SECONDS, self.down_seconds * 2 ** (self.failures - 1))
        self.down_until = self.clock() + pause
        self.last_error = error
        log.warning("relay %s taken out for %.0f s: %s", self.label, pause, error)

    def worked(self) -> None:
        self.failures = 0

    def transport(self, provider: str, limits: ProviderLimits) -> SmtpTransport:
        """This relay's connections for one provider's messages."""
        transport = self.transports.get(provider)
        if transport is None:
            relay = self.settings
            transport = SmtpTransport.for_relay(
                relay,
                max_connections=min(relay.max_connections, limits.connections),
                messages_per_connection=min(
                    relay.messages_per_connection, limits.messages_per_connection
                ),
                validate_certs=self.tls_validate,
                retry_delay=timedelta(0),
            )
            transport.relay = self.label
            self.transports[provider] = transport
        return transport

    def status(self) -> dict[str, Any]:
        return {
            "relay": self.label,
            "up": self.up(),
            "down_for_seconds": max(0.0, round(self.down_until - self.clock(), 1)),
            "failures": self.failures,
            "last_error": self.last_error,
        }


def _relay_trouble(result: DeliveryResult) -> bool:
    """The relay, not the message or its destination, is the problem: the connection
    failed or was held back, the relay is closing the channel (421, at any command), or it
    refused our MAIL FROM for now.  Such messages go to another relay at once."""
    if result.status is not DeliveryStatus.DEFERRED:
        return False
    return result.code is None or result.code == 421 or result.text.startswith("MAIL:")


class RelayPool:
    """Sends batches through the relays, shaped per destination; one per worker process."""

    def __init__(
        self,
        relays: Sequence[RelaySettings],
        providers: dict[str, ProviderLimits],
        dns: DnsSettings,
        *,
        down_seconds: float = 30.0,
        slow_down: SlowDown = looks_like_slow_down,
        validate_certs: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
        resolver: ProviderResolver | None = None,
    ) -> None:
        if not relays:
            raise ValueError("a relay pool needs at least one relay")
        self._clock = clock
        self._wall_clock = wall_clock
        self._relays = [_Relay(r, down_seconds, validate_certs, clock) for r in relays]
        self._limits = providers
        self._providers: dict[str, ProviderState] = {}
        self._resolver = resolver or ProviderResolver(dns, clock=clock)
        self._slow_down = slow_down
        self._turn = 0

    @property
    def relay_labels(self) -> list[str]:
        return [relay.label for relay in self._relays]

    def status(self) -> list[dict[str, Any]]:
        return [relay.status() for relay in self._relays]

    def _provider(self, name: str) -> ProviderState:
        state = self._providers.get(name)
        if state is None:
            limits = self._limits.get(name) or self._limits.get(OTHER) or ProviderLimits()
            state = self._providers[name] = ProviderState(name, limits, clock=self._clock)
        return state

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        budgets: dict[str, int | None] | None = None,
        on_result: OnResult | None = None,
    ) -> list[DeliveryResult]:
        """Deliver *envelopes*; one result per envelope, in order.

        *budgets* caps the messages each relay (by label) may take in this call (None or a
        missing label: no cap).  Every result is also passed to *on_result* as soon as it
        is known (see ``SmtpTransport.send_many``).
        """
        results: dict[int, DeliveryResult] = {}
        left: dict[str, int | None] = {r.label: (budgets or {}).get(r.label) for r in self._relays}

        def settle(result: DeliveryResult) -> None:
            results[result.message_id] = result
            if on_result is not None:
                on_result(result)

        by_id = {envelope.message_id: envelope for envelope in envelopes}
        provider_of = await self._resolver.providers(
            {e.rcpt_to.rpartition("@")[2] for e in envelopes}
        )
        provider_by_id = {
            e.message_id: provider_of[e.rcpt_to.rpartition("@")[2]] for e in envelopes
        }
        groups: dict[str, list[Envelope]] = {}
        for envelope in envelopes:
            groups.setdefault(provider_by_id[envelope.message_id], []).append(envelope)
        for _round in range(REROUTE_ROUNDS + 1):
            sends: list[Coroutine[Any, Any, list[tuple[_Relay, DeliveryResult]]]] = []
            for provider, items in groups.items():
                sends.extend(self._plan(provider, items, left, settle))
            if not sends:
                break
            outcomes = await asyncio.gather(*sends)
            groups = {}
            for chunk in outcomes:
                for _relay, result in chunk:
                    if _relay_trouble(result) and result.message_id not in results:
                        groups.setdefault(provider_by_id[result.message_id], []).append(
                            by_id[result.message_id]
                        )
        # What is left after the last round: no relay could take it.
        for items in groups.values():
            for envelope in items:
                if envelope.message_id not in results:
                    settle(self._held(envelope, "no relay could be reached", None))
        return [results[e.message_id] for e in envelopes]

    def _plan(
        self,
        provider: str,
        items: list[Envelope],
        left: dict[str, int | None],
        settle: Callable[[DeliveryResult], None],
    ) -> list[Coroutine[Any, Any, list[tuple[_Relay, DeliveryResult]]]]:
        """Split one provider's envelopes over the relays that are up and have budget."""
        state = self._provider(provider)
        reason = state.held_back()
        if reason is not None:
            retry_at = self._wall_time(state.backoff_until)
            for envelope in items:
                settle(self._held(envelope, reason, retry_at))
            return []
        usable = [r for r in self._relays if r.up() and (left[r.label] is None or left[r.label])]
        if not usable:
            capped = all(r.up() for r in self._relays)
            text = (
                "the relays' daily quota (cap or warm-up) is used up"
                if capped
                else "every relay is down: " + "; ".join(r.last_error for r in self._relays)
            )
            back: datetime | None = None
            if not capped:
                back = self._wall_time(min(r.down_until for r in self._relays))
            for envelope in items:
                settle(self._held(envelope, text, back))
            return []
        # Round-robin start, weighted by connection limits, capped by budgets.
        self._turn = (self._turn + 1) % len(usable)
        usable = usable[self._turn :] + usable[: self._turn]
        weights = [r.settings.max_connections for r in usable]
        total_weight = sum(weights)
        chunks: list[tuple[_Relay, list[Envelope]]] = []
        start = 0
        for i, relay in enumerate(usable):
            share = (
                len(items) - start
                if i == len(usable) - 1
                else -(-len(items) * weights[i] // total_weight)
            )
            budget = left[relay.label]
            if budget is not None:
                share = min(share, budget)
            chunk = items[start : start + share]
            start += len(chunk)
            if chunk:
                chunks.append((relay, chunk))
                if budget is not None:
                    left[relay.label] = budget - len(chunk)
        # Relays with budget to spare take what the capped ones could not.
        for relay in usable:
            if start >= len(items):
                break
            budget = left[relay.label]
            extra = len(items) - start if budget is None else min(budget, len(items) - start)
            if extra > 0:
                chunks.append((relay, items[start : start + extra]))
                start += extra
                if budget is not None:
                    left[relay.label] = budget - extra
        for envelope in items[start:]:
            settle(
                self._held(envelope, "the relays' daily quota (cap or warm-up) is used up", None)
            )
        return [self._send_chunk(relay, state, chunk, settle) for relay, chunk in chunks]

    async def _send_chunk(
        self,
        relay: _Relay,
        state: ProviderState,
        envelopes: list[Envelope],
        settle: Callable[[DeliveryResult], None],
    ) -> list[tuple[_Relay, DeliveryResult]]:
        transport = relay.transport(state.name, state.limits)

        async def pace() -> str | None:
            if not relay.up():
                return f"relay {relay.label} is down; held back"
            held = await state.pace()
            if held is None:
                await relay.bucket.take()
            return held

        def seen(result: DeliveryResult) -> None:
            if _relay_trouble(result):
                if not result.text.endswith(_PACED) and relay.up():
                    said = f"{result.code} {result.text}" if result.code else result.text
                    relay.failed(said)  # the rest of the chunk is held back at once
                return  # rerouted by send(); settled there if no relay takes it
            slow = result.status is DeliveryStatus.DEFERRED and result.code is not None
            if slow and self._slow_down(result.code, result.text):
                until = state.slow_down(result.text)
                result = _with(result, status=DeliveryStatus.HELD, retry_at=self._wall_time(until))
            settle(result)

        chunk = await transport.send_many(
            envelopes, gates=(relay.slots, state.slots), pace=pace, on_result=seen
        )
        if chunk and not any(_relay_trouble(r) for r in chunk):
            relay.worked()
        return [(relay, result) for result in chunk]

    def _held(self, envelope: Envelope, text: str, retry_at: datetime | None) -> DeliveryResult:
        return DeliveryResult(
            message_id=envelope.message_id,
            status=DeliveryStatus.HELD,
            text=text,
            retry_at=retry_at,
        )

    def _wall_time(self, monotonic_deadline: float) -> datetime:
        return self._wall_clock() + timedelta(seconds=max(0.0, monotonic_deadline - self._clock()))

    async def aclose(self) -> None:
        await asyncio.gather(
            *(t.aclose() for relay in self._relays for t in relay.transports.values())
        )


def _with(result: DeliveryResult, **changes: Any) -> DeliveryResult:
    values = {name: getattr(result, name) for name in result.__dataclass_fields__}
    return DeliveryResult(**{**values, **changes})


class DeliveryLoop:
    """An event loop in a daemon thread: the home of a process's SMTP connections.

    Worker threads call :meth:`run` with a coroutine and wait for its result; meanwhile
    the loop serves every thread's batches, so connections are shared and kept open.
    """

    def __init__(self, name: str = "mailer-delivery") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
