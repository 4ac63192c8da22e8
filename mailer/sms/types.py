"""The values SMS transports take and give, and the gateway port.

A gateway moves :class:`SmsOutbound` messages and answers, per message, a
:class:`SubmitResult` (submitted with the provider's ids, deferred with a retry delay, or
rejected with the code).  What it hears later comes back through the callbacks given to
:meth:`SmsGateway.start`: a :class:`Receipt` per part and an :class:`Inbound` per reply.
Nothing here knows about ledger rows, accounts or allowances; ``ref`` is the caller's id.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from mailer.core.errors import MailerError

__all__ = [
    "FINAL_STATES",
    "GatewayUnavailable",
    "Inbound",
    "OnInbound",
    "OnReceipt",
    "Receipt",
    "ReceiptState",
    "SmsGateway",
    "SmsGatewayError",
    "SmsOutbound",
    "SubmitResult",
    "SubmitStatus",
    "decimal_id_to_hex",
    "hex_id_to_decimal",
    "normalise_provider_id",
]

SubmitStatus = Literal["submitted", "deferred", "rejected"]
ReceiptState = Literal[
    "delivered", "undelivered", "expired", "rejected", "deleted", "accepted", "enroute", "unknown"
]
FINAL_STATES: frozenset[str] = frozenset(
    {"delivered", "undelivered", "expired", "rejected", "deleted"}
)
"""Receipt states after which the message's fate does not change."""


class SmsGatewayError(MailerError):
    code = "sms_gateway_error"


class GatewayUnavailable(SmsGatewayError):
    """The gateway is not bound / not reachable (configuration or network)."""

    code = "sms_gateway_unavailable"


@dataclass(frozen=True, slots=True)
class SmsOutbound:
    """One SMS to send.  ``to`` is E.164 (``+51987654321``); ``sender`` a short code, an
    E.164 number or an alphanumeric sender id (at most 11 characters)."""

    ref: int  # the caller's id (the ledger row); echoed in the result
    to: str
    sender: str
    text: str
    validity_seconds: int | None = None  # None: the gateway's default
    receipt: bool = True  # ask for a delivery receipt


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the gateway said about one :class:`SmsOutbound`.

    ``provider_ids`` are normalised (:func:`normalise_provider_id`), one per part, in part
    order; a receipt names one of them.  On ``rejected`` after some parts were accepted, the
    accepted parts' ids are still given (their receipts will come).  ``retry_after`` is in
    seconds, set on ``deferred``."""

    ref: int
    status: SubmitStatus
    provider_ids: tuple[str, ...] = ()
    code: int | None = None
    text: str = ""
    retry_after: float | None = None
    parts: int = 1


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery receipt for one part.

    ``provider_id`` is normalised.  ``alt_ids`` are other normalised forms the same message
    id may have been given in at submit time, set only when the id was read from the
    receipt text rather than the ``receipted_message_id`` TLV (some SMSCs answer
    ``submit_sm`` with a hexadecimal id and write it in decimal in the receipt text): look
    ``provider_id`` up first, then each of ``alt_ids``."""

    provider_id: str
    state: ReceiptState
    final: bool
    error: str = ""  # the SMSC's error code ("err:" or network_error_code), as text
    text: str = ""  # the whole receipt text as received (decoded leniently)
    gateway: str = ""
    done_at: datetime | None = None
    alt_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from a handset (MO), reassembled when it came in several parts.

    ``sender`` is E.164 when the SMSC said it was an international number (or wrote the
    ``+``); otherwise as received: the caller normalises it (``cleaning.phones``)."""

    sender: str
    to: str
    text: str
    gateway: str
    received_at: datetime
    parts: int = 1
    complete: bool = True  # False: some parts never came before the reassembly timeout
    data_coding: int = 0


OnReceipt = Callable[[Receipt], Awaitable[None]]
OnInbound = Callable[[Inbound], Awaitable[None]]


@runtime_checkable
class SmsGateway(Protocol):
    """An SMS transport: SMPP bind, HTTP provider, or a fake in tests."""

    name: str

    async def start(self, on_receipt: OnReceipt, on_inbound: OnInbound) -> None:
        """Connect (or get ready) and deliver what the provider reports to the callbacks.

        A callback that returns has taken responsibility for the value; one that raises
        makes the gateway ask the provider to send it again (where the protocol allows)."""
        ...

    async def submit(
        self, messages: Sequence[SmsOutbound], *, timeout: float | None = None
    ) -> list[SubmitResult]:
        """Send *messages*; one result per message, same order.  Never raises for one
        message's failure.  Parts not yet sent after *timeout* seconds come back deferred."""
        ...

    async def stop(self) -> None:
        """Stop sending and receiving, release connections."""
        ...


_ID_JUNK = re.compile(r"[\s\x00]+")


def normalise_provider_id(value: str) -> str:
    """The form provider message ids are stored and compared in.

    Rule: surrounding whitespace and NUL bytes removed, lower-cased, leading zeros removed
    (an id of only zeros is ``"0"``).  So ``"0000A1F3"``, ``"a1f3"`` and ``" A1F3\\x00"``
    are one id.  Hexadecimal and decimal writings of a number are *not* merged here (``"10"``
    could be either): a gateway that knows its SMSC writes receipts in decimal converts with
    :func:`decimal_id_to_hex` first, and receipts read from text carry the other writing in
    ``Receipt.alt_ids``."""
    text = _ID_JUNK.sub("", value).lower()
    stripped = text.lstrip("0")
    if not stripped and text:
        return "0"
    return stripped


def decimal_id_to_hex(value: str) -> str | None:
    """The normalised hexadecimal writing of a decimal id (``"41459"`` -> ``"a1f3"``), or
    None when *value* is not a decimal number."""
    text = normalise_provider_id(value)
    if not text.isdigit() or not text.isascii():
        return None
    return format(int(text), "x")


def hex_id_to_decimal(value: str) -> str | None:
    """The decimal writing of a hexadecimal id (``"A1F3"`` -> ``"41459"``), or None."""
    text = normalise_provider_id(value)
    if not text or not all(c in "0123456789abcdef" for c in text):
        return None
    return str(int(text, 16))
