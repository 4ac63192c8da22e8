"""Real SMTP peers for the delivery tests (see ``tests/mta.py``): ``smtp-sink`` and a Postfix
of the suite's own on 127.0.0.1, with an aiosmtpd server standing in for the inbound
receiver that takes Postfix's DSNs.  Like every real server in this suite, a missing
binary (or, for Postfix, missing root) skips the test locally and fails it under CI=true.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.mta import (
    POSTFIX,
    PostfixServer,
    SinkFactory,
    SmtpReceiver,
    SmtpSink,
    smtp_sink_binary,
)
from tests.opendkim import OPENDKIM, OpendkimVerifier, verify_with_opendkim


def require(what: str, present: bool) -> None:
    """Skip (locally) or fail (under CI=true) a test whose *what* is missing."""
    if present:
        return
    message = f"{what} is missing"
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


def require_smtp_sink() -> Path:
    binary = smtp_sink_binary()
    require("smtp-sink (Debian package postfix)", binary is not None)
    assert binary is not None
    return binary


def require_postfix() -> None:
    require("postfix (Debian package postfix)", POSTFIX.exists())
    require_smtp_sink()
    require("root, to start a Postfix instance", os.geteuid() == 0)


@pytest.fixture
def opendkim() -> OpendkimVerifier:
    """``opendkim(message, public_keys)``: opendkim's result for each signature."""
    require("opendkim (Debian package opendkim)", OPENDKIM.exists())
    return verify_with_opendkim


@pytest.fixture
def postfix_available() -> None:
    """For a test that starts a Postfix of its own."""
    require_postfix()


@pytest.fixture
def smtp_sink_factory() -> Iterator[SinkFactory]:
    """``smtp_sink_factory(reject=("RCPT",))``: a started ``SmtpSink``, stopped after the
    test."""
    require_smtp_sink()
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> SmtpSink:
            return stack.enter_context(SmtpSink(**options))

        yield start


@pytest.fixture
def smtp_sink(smtp_sink_factory: SinkFactory) -> SmtpSink:
    """An ``smtp-sink`` that accepts everything and keeps each message."""
    return smtp_sink_factory(dump=True)


@pytest.fixture(scope="module")
def dsn_receiver() -> Iterator[SmtpReceiver]:
    """Stands in for the inbound receiver: where Postfix delivers DSNs for the bounce
    domain."""
    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def postfix_server(dsn_receiver: SmtpReceiver) -> Iterator[PostfixServer]:
    """A running Postfix for the module: ``bounce-*`` recipients go to an smtp-sink that
    refuses RCPT with 550, ``delay-*`` to one that answers 450; DSNs go to
    ``dsn_receiver``."""
    require_postfix()
    with (
        SmtpSink(reject=("RCPT",)) as rejecting,
        SmtpSink(defer=("RCPT",)) as deferring,
        PostfixServer(
            sink_port=rejecting.port,
            defer_sink_port=deferring.port,
            inbound_port=dsn_receiver.port,
        ) as server,
    ):
        yield server
