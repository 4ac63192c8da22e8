"""The home of a process's SMS gateways: one event loop in a daemon thread.

Like ``delivery.pool.DeliveryLoop`` for SMTP connections: worker threads call
:meth:`GatewayLoop.submit` and wait for the results while the loop serves every thread's
messages over the same binds, which stay open between batches.

What the gateways hear (receipts, inbound messages) is passed to plain synchronous
callables, run in a thread of their own so they can use a normal database session, and in
**batches**: what arrived while the previous batch was being handled (up to ``batch_size``,
waiting at most ``batch_wait`` seconds from idle) goes in one call, so the caller writes
many rows per commit.  A receipt is acknowledged to the SMSC only after the call that
carried it returned; if it raised, every item of that batch is refused with a temporary
error and the provider sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from mailer.core.config import Settings, SmsGatewaySettings
from mailer.core.errors import ConfigError
from mailer.sms.http import HttpGateway
from mailer.sms.smpp import SmppGateway
from mailer.sms.types import (
    Inbound,
    Receipt,
    SmsGateway,
    SmsGatewayError,
    SmsOutbound,
    SubmitResult,
)

__all__ = ["GatewayLoop", "gateway_from_settings", "gateways_from_settings"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Item = TypeVar("_Item")
SUBMIT_GRACE_SECONDS = 120.0


def gateway_from_settings(settings: SmsGatewaySettings) -> SmsGateway:
    if settings.kind == "smpp":
        return SmppGateway(settings)
    return HttpGateway(settings)


def gateways_from_settings(settings: Settings) -> dict[str, SmsGateway]:
    """A gateway per ``sms_gateways`` entry, by name (not started)."""
    gateways: dict[str, SmsGateway] = {}
    for gateway_settings in settings.sms_gateways:
        if gateway_settings.name in gateways:
            raise ConfigError(
                "SMS gateway names must be unique: {name} is used twice",
                field="sms_gateways",
                name=gateway_settings.name,
            )
        gateways[gateway_settings.name] = gateway_from_settings(gateway_settings)
    return gateways


class _Batcher(Generic[_Item]):
    """Collects items on the loop and hands them to a sync callable in batches."""

    def __init__(
        self,
        handle: Callable[[Sequence[_Item]], None],
        executor: ThreadPoolExecutor,
        batch_size: int,
        batch_wait: float,
    ) -> None:
        self._handle = handle
        self._executor = executor
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._items: list[tuple[_Item, asyncio.Future[None]]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def put(self, item: _Item) -> None:
        """Wait until a batch holding *item* was handled; raise what the handler raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        self._arrived.set()
        if len(self._items) >= self._batch_size:
            self._full.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                self._arrived.clear()
                await self._arrived.wait()
                # From idle: give the batch a moment to fill.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._batch_wait)
            batch = self._items[: self._batch_size]
            del self._items[: self._batch_size]
            if len(self._items) < self._batch_size:
                self._full.clear()
            try:
                await loop.run_in_executor(self._executor, self._handle, [i for i, _ in batch])
            except Exception as error:
                log.exception("SMS callback failed on a batch of %d", len(batch))
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(error)
            else:
                for _item, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class GatewayLoop:
    """Starts *gateways* on an event loop in a daemon thread and serves worker threads.

    *on_receipts* and *on_inbound* are called (in a thread of their own, never on the
    loop) with lists of :class:`Receipt` / :class:`Inbound`.  A gateway that cannot bind
    at start is not an error: it keeps trying, and meanwhile its submits come back
    deferred."""

    def __init__(
        self,
        gateways: Mapping[str, SmsGateway],
        on_receipts: Callable[[Sequence[Receipt]], None],
        on_inbound: Callable[[Sequence[Inbound]], None],
        *,
        name: str = "mailer-sms",
        batch_size: int = 500,
        batch_wait: float = 0.05,
        start_timeout: float = 30.0,
    ) -> None:
        self._gateways = dict(gateways)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._receipt_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-receipts")
        self._inbound_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-inbound")
        self._closed = False

        async def make() -> tuple[_Batcher[Receipt], _Batcher[Inbound]]:
            return (
                _Batcher(on_receipts, self._receipt_thread, batch_size, batch_wait),
                _Batcher(on_inbound, self._inbound_thread, batch_size, batch_wait),
            )

        self._receipts, self._inbound = self.run(make(), timeout=start_timeout)
        try:
            self.run(self._start_all(), timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    async def _start_all(self) -> None:
        for gateway in self._gateways.values():
            await gateway.start(self._receipts.put, self._inbound.put)

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run *coroutine* on the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def names(self) -> list[str]:
        return list(self._gateways)

    def gateway(self, name: str) -> SmsGateway:
        try:
            return self._gateways[name]
        except KeyError:
            raise SmsGatewayError("no SMS gateway named {name}", name=name) from None

    def submit(
        self, gateway: str, messages: Sequence[SmsOutbound], timeout: float | None = None
    ) -> list[SubmitResult]:
        """Send *messages* through the gateway named *gateway*; one result per message.

        Messages not sent within *timeout* seconds come back deferred; the call returns
        shortly after (in-flight answers are awaited, bounded by the gateway's response
        timeout)."""
        if self._closed:
            raise SmsGatewayError("the SMS gateway loop is closed")
        target = self.gateway(gateway)
        wait = None if timeout is None else timeout + SUBMIT_GRACE_SECONDS
        return self.run(target.submit(list(messages), timeout=timeout), timeout=wait)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for gateway in self._gateways.values():
            status = getattr(gateway, "status", None)
            out.append(status() if callable(status) else {"name": gateway.name})
        return out

    def close(self, timeout: float = 15.0) -> None:
        """Stop the gateways (unbind), then the loop and the callback threads."""
        if self._closed:
            return
        self._closed = True

        async def stop_all() -> None:
            for gateway in self._gateways.values():
                try:
                    await gateway.stop()
                except Exception:
                    log.exception("SMS gateway %s did not stop cleanly", gateway.name)
            await self._receipts.aclose()
            await self._inbound.aclose()

        if self._loop.is_running():
            try:
                self.run(stop_all(), timeout=timeout)
            except Exception:
                log.exception("stopping the SMS gateways")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._receipt_thread.shutdown(wait=True)
        self._inbound_thread.shutdown(wait=True)
        if not self._thread.is_alive():
            self._loop.close()
