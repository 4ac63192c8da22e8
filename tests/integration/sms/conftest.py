"""Fixtures of the SMS transport tests: the scripted SMSC (``tests/smsc.py``) and gateways
running on a ``GatewayLoop`` whose callbacks collect what they are given.

A test that needs the SMSC skips locally when node or ``tests/smsc/node_modules`` is
missing, and fails under CI=true (where ``.ci/run`` installs them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from mailer.sms.runner import GatewayLoop
from mailer.sms.smpp import SmppGateway
from mailer.sms.types import Inbound, Receipt, SmsGateway
from tests.conftest import IN_CI
from tests.smsc import Smsc, smsc_missing


def require_smsc() -> None:
    missing = smsc_missing()
    if missing is None:
        return
    if IN_CI:
        pytest.fail(f"the test SMSC cannot run: {missing} (required under CI=true)")
    pytest.skip(f"the test SMSC cannot run: {missing}")


@pytest.fixture
def smsc() -> Iterator[Smsc]:
    """A fresh SMSC on a free port: receipts after 20 ms, ids "0000A1F0", "0000A1F1", ..."""
    require_smsc()
    with Smsc(receipt_delay_ms=20) as server:
        yield server


class Collected:
    """The callbacks of a GatewayLoop: keeps receipts and inbound messages; can be told
    to fail the next calls (the gateway then refuses them with a temporary error)."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.inbound: list[Inbound] = []
        self.fail_receipts = 0
        self.fail_inbound = 0
        self.calls = 0
        self._lock = threading.Lock()

    def on_receipts(self, batch: Sequence[Receipt]) -> None:
        with self._lock:
            self.calls += 1
            if self.fail_receipts:
                self.fail_receipts -= 1
                raise RuntimeError("the database is down")
            self.receipts.extend(batch)

    def on_inbound(self, batch: Sequence[Inbound]) -> None:
        with self._lock:
            if self.fail_inbound:
                self.fail_inbound -= 1
                raise RuntimeError("the database is down")
            self.inbound.extend(batch)

    def wait(self, what: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out: {len(self.receipts)} receipts, {len(self.inbound)} inbound"
                )
            time.sleep(0.02)

    def wait_receipts(self, count: int, timeout: float = 15.0) -> list[Receipt]:
        self.wait(lambda: len(self.receipts) >= count, timeout)
        return list(self.receipts)

    def wait_inbound(self, count: int, timeout: float = 15.0) -> list[Inbound]:
        self.wait(lambda: len(self.inbound) >= count, timeout)
        return list(self.inbound)


class Running:
    """One gateway on its loop, with what it reported."""

    def __init__(self, gateway: SmsGateway, collected: Collected) -> None:
        self.gateway = gateway
        self.collected = collected
        self.loop = GatewayLoop(
            {gateway.name: gateway}, collected.on_receipts, collected.on_inbound
        )

    def submit(self, messages: Sequence[Any], timeout: float | None = 60.0) -> list[Any]:
        return self.loop.submit(self.gateway.name, messages, timeout=timeout)

    def wait_bound(self, timeout: float = 10.0) -> None:
        assert isinstance(self.gateway, SmppGateway)
        self.loop.run(self.gateway.wait_bound(timeout))

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def run_gateway() -> Iterator[Callable[[SmsGateway], Running]]:
    """``run_gateway(gateway)``: start it on a GatewayLoop; stopped after the test."""
    started: list[Running] = []

    def start(gateway: SmsGateway) -> Running:
        running = Running(gateway, Collected())
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture
def smpp(smsc: Smsc, run_gateway: Callable[[SmsGateway], Running]) -> Callable[..., Running]:
    """``smpp(**settings)``: an SmppGateway bound to the SMSC, running."""

    def make(**overrides: Any) -> Running:
        running = run_gateway(SmppGateway(smsc.gateway_settings(**overrides)))
        return running

    return make
