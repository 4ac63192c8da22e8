"""The fast paths the SMTP transport puts into aiosmtplib's DATA preparation change nothing
but speed."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

import mailer.delivery.smtp as smtp

ORIGINAL_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
ORIGINAL_PERIODS = re.compile(rb"(?m)^\.")

MESSAGES = st.lists(
    st.sampled_from([b"a", b".", b"\r\n", b"\n", b"\r", b"..", b" ", b"\r\n."]), max_size=60
).map(b"".join)


def reference_normalize(message: bytes) -> bytes:
    message = ORIGINAL_LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


@given(MESSAGES)
def test_line_endings_as_aiosmtplib_does(message: bytes) -> None:
    assert smtp._normalize_line_endings(message) == reference_normalize(message)


@given(MESSAGES)
def test_dot_stuffing_as_aiosmtplib_does(message: bytes) -> None:
    assert smtp._LeadingPeriods().sub(b"..", message) == ORIGINAL_PERIODS.sub(b"..", message)


def test_the_fast_paths_are_installed() -> None:
    import aiosmtplib.protocol

    assert aiosmtplib.protocol.normalize_message_line_endings is smtp._normalize_line_endings
    assert isinstance(aiosmtplib.protocol.PERIOD_REGEX, smtp._LeadingPeriods)
