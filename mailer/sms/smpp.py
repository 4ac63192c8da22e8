"""The SMPP 3.4 gateway: one transceiver bind to an SMSC, as an ``SmsGateway``.

aiosmpplib 0.7.4 does the session layer: TCP connection, bind, enquire_link, reconnecting
with back-off, the PDU header and ``submit_sm`` encoding.  What it does not do well is
replaced here, by a subclass of its ``ESME`` (:class:`_Session`) and by this module:

- **Window**: at most ``window`` requests in flight; 20,000 messages submitted at once wait
  their turn instead of timing out.  Its broker queue is not used: ``submit`` hands each
  part to the session and waits for that part's own answer.
- **Answers**: ``submit_sm_resp`` is matched to its request by sequence number in a plain
  dictionary (its correlator, which sweeps every entry on every PDU, is replaced by a no-op).
  The provider ids go back in :class:`~mailer.sms.types.SubmitResult`; keeping them (in
  the database) so that receipts match after a restart is the caller's part.
- **Parts**: long messages are split by ``encoding.split`` (septets, escape and surrogate
  pairs respected) and sent as separate ``submit_sm`` with a UDH (IE 0x00, 8-bit
  reference, ``esm_class`` 0x40); the library never splits.
- **Pace**: a token bucket per bind (``rate_per_second``); ``ESME_RTHROTTLED`` and
  ``ESME_RMSGQFUL`` pause the bucket (doubling up to 30 s) and the part is sent again;
  other transient statuses and lost connections are retried ``max_retries`` times, then the
  message is ``deferred``; any other status is ``rejected`` with its code.
- **deliver_sm**: parsed by ``deliver.py`` (leniently: a receipt with bytes that are not
  GSM-7 is still a receipt), handed to the callback, and answered *after* the callback
  returns: ``ESME_ROK``, or ``ESME_RX_T_APPN`` (0x64, a temporary error: the SMSC sends it
  again) when the callback raised, so a receipt or reply the caller could not keep is
  redelivered rather than lost.  A ``deliver_sm`` that cannot be read at all is logged
  with its bytes and answered ``ESME_RX_P_APPN`` (0x65), so it is not redelivered forever.
  Parts of an inbound concatenated message (8- or 16-bit references, or SAR TLVs) are
  answered as they come and handed over as one :class:`~mailer.sms.types.Inbound` when
  complete (or, incomplete, after ``inbound_parts_timeout_seconds``).
- **Leniency**: unknown command statuses (vendor codes) and unknown commands no longer
  break the connection: the first keep their raw code, the second get ``generic_nack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from asyncio import IncompleteReadError
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from struct import pack, unpack, unpack_from
from typing import Any, Final

from aiosmpplib import ESME as _ESME
from aiosmpplib import (
    NPI,
    TON,
    AbstractCorrelator,
    AbstractHook,
    AbstractRetryTimer,
    DeliverSmResp,
    PduHeader,
    PhoneNumber,
    SmppCommand,
    SmppCommandStatus,
    SmppError,
    SubmitSm,
)

from mailer.core.clock import utcnow
from mailer.core.config import SmsGatewaySettings
from mailer.sms.deliver import (
    DeliverSm,
    PduError,
    Reassembler,
    ReassemblyKey,
    inbound_sender,
    parse_deliver_sm,
    receipt_from_deliver,
    split_udh,
)
from mailer.sms.encoding import DATA_CODING_UCS2, MessageTooLong, Segment, decode_payload, split
from mailer.sms.pacing import TokenBucket
from mailer.sms.types import (
    GatewayUnavailable,
    Inbound,
    OnInbound,
    OnReceipt,
    SmsGatewayError,
    SmsOutbound,
    SubmitResult,
    SubmitStatus,
    normalise_provider_id,
)

__all__ = [
    "ESME_RMSGQFUL",
    "ESME_RTHROTTLED",
    "ESME_RX_P_APPN",
    "ESME_RX_T_APPN",
    "TRANSIENT_STATUSES",
    "SmppGateway",
    "status_name",
]

log = logging.getLogger(__name__)
_library_log = logging.getLogger(__name__ + ".aiosmpplib")

ESME_ROK: Final = 0x00
ESME_RINVCMDID: Final = 0x03
ESME_RSYSERR: Final = 0x08
ESME_RMSGQFUL: Final = 0x14
ESME_RSUBMITFAIL: Final = 0x45
ESME_RTHROTTLED: Final = 0x58
ESME_RX_T_APPN: Final = 0x64
ESME_RX_P_APPN: Final = 0x65
THROTTLE_STATUSES: Final = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})
TRANSIENT_STATUSES: Final = frozenset({ESME_RSYSERR, ESME_RSUBMITFAIL, ESME_RX_T_APPN})
"""Statuses retried ``max_retries`` times before the message is deferred."""
MAX_THROTTLE_PAUSE: Final = 30.0
MAX_PDU_LENGTH: Final = 2**16 + 1024
GENERIC_NACK: Final = 0x80000000
ESM_UDHI: Final = 0x40
MAX_SENDER_ID: Final = 11


def status_name(code: int) -> str:
    """``ESME_RTHROTTLED (0x58)``, or ``0x0000040B`` for a vendor code."""
    try:
        return f"{SmppCommandStatus(code).name} (0x{code:02X})"
    except ValueError:
        return f"0x{code:08X}"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    message_id: str


@dataclass(frozen=True, slots=True)
class _PartOutcome:
    status: SubmitStatus
    message_id: str = ""
    code: int | None = None
    text: str = ""
    retry_after: float | None = None


class _ConnectionLost(ConnectionError):
    """The connection ended while a request waited for its answer."""


class _NoCorrelator(AbstractCorrelator):  # type: ignore[misc]
    """aiosmpplib's correlator interface, doing nothing: answers are matched by
    :class:`SmppGateway` itself, and receipts by the caller's database."""

    async def put(self, smpp_message: Any) -> None:
        return None

    async def get(self, response: Any) -> None:
        return None

    async def put_delivery(self, smsc_message_id: str, submit_sm: Any) -> None:
        return None

    async def get_delivery(self, receipt: Any) -> None:
        return None

    async def put_delivery_segmented(self, deliver_sm: Any) -> Any:
        return deliver_sm

    async def get_segmented(self, sequence_num: int, remove: bool = False) -> tuple[None, int]:
        return None, 0

    async def expired(self, smpp_message: Any) -> None:
        return None

    def get_cumulated_status(self, ref_num: int) -> int:
        return 0


class _Backoff(AbstractRetryTimer):  # type: ignore[misc]
    """Waits between binds: *first* seconds, doubling up to *longest*; reset on a bind."""

    def __init__(self, first: float, longest: float) -> None:
        self._first = first
        self._longest = max(first, longest)
        self._next = first

    async def wait(self) -> None:
        delay = self._next
        self._next = min(self._longest, self._next * 2)
        await asyncio.sleep(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self._next = self._first

    def next_delay(self) -> float:
        return float(self._next)


class _Hook(AbstractHook):  # type: ignore[misc]
    def __init__(self, gateway: SmppGateway) -> None:
        self._gateway = gateway

    async def sending(self, smpp_message: Any, pdu: bytes, client_id: str) -> None:
        # Called after the sequence number is set and before the bytes are written: the
        # moment to expect the answer (which may arrive before the write "returns").
        if isinstance(smpp_message, SubmitSm):
            self._gateway._expect(smpp_message)

    async def received(self, smpp_message: Any, pdu: bytes, client_id: str) -> None:
        return None

    async def send_error(self, smpp_message: Any, error: Exception, client_id: str) -> None:
        return None


class _LogForward(logging.Handler):
    """aiosmpplib logs through a logger of its own; pass its records to ours."""

    def emit(self, record: logging.LogRecord) -> None:
        if _library_log.isEnabledFor(record.levelno):
            _library_log.log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)


class _Session(_ESME):  # type: ignore[misc]
    """aiosmpplib's ESME with the pieces :class:`SmppGateway` replaces (see the module)."""

    _reader: asyncio.StreamReader | None
    _writer: asyncio.StreamWriter | None

    def __init__(self, gateway: SmppGateway, **options: Any) -> None:
        super().__init__(**options)
        self.gateway = gateway
        self.receiving = False
        self.generation = 0
        self.last_status = 0

    async def _get_pdu(self) -> tuple[bytes, PduHeader]:
        reader = self._reader
        assert reader is not None
        while True:
            header_data = await reader.readexactly(16)
            length, command_id, status, sequence = unpack("!IIII", header_data)
            if not 16 <= length <= MAX_PDU_LENGTH:
                raise ValueError(f"SMPP framing lost: PDU length {length}")
            body = await reader.readexactly(length - 16)
            self.last_status = status
            try:
                command = SmppCommand(command_id)
            except ValueError:
                log.warning(
                    "SMS gateway %s: unknown SMPP command 0x%08X", self.gateway.name, command_id
                )
                if not command_id & GENERIC_NACK and self._writer is not None:
                    self._writer.write(pack("!IIII", 16, GENERIC_NACK, ESME_RINVCMDID, sequence))
                continue
            try:
                command_status = SmppCommandStatus(status)
            except ValueError:
                command_status = SmppCommandStatus.ESME_RUNKNOWNERR  # raw code: last_status
            return header_data + body, PduHeader(length, command, command_status, sequence)

    async def connect(self) -> None:
        self.last_status = 0
        try:
            await super().connect()
        except (SmppError, OSError, TimeoutError, IncompleteReadError, ValueError) as error:
            # A refusal often comes without a body, which aiosmpplib cannot parse (a
            # ValueError rather than its SmppError): the status says what happened.
            if self.last_status:
                self.gateway._bind_failed(
                    f"bind refused: {status_name(self.last_status)}", self.last_status
                )
            else:
                self.gateway._bind_failed(f"cannot bind: {error!r}", None)
            self._close_writer()
            raise
        self.generation += 1

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def _disconnect(self) -> None:
        if not self.receiving:  # nothing bound to unbind: just let the socket go
            self._close_writer()
            return
        try:
            await super()._disconnect()
        except (OSError, RuntimeError):
            self._close_writer()

    async def _receive_data(self) -> bytes | None:
        self.receiving = True
        self.gateway._session_up()
        try:
            result: bytes | None = await super()._receive_data()
            return result
        finally:
            self.receiving = False
            self.gateway._session_down()

    async def _handle_response(self, pdu: bytes, header: PduHeader) -> None:
        if header.smpp_command in (SmppCommand.SUBMIT_SM_RESP, SmppCommand.GENERIC_NACK):
            status = unpack_from("!I", pdu, 8)[0]
            message_id = pdu[16:].split(b"\x00", 1)[0].decode("latin-1")
            self.gateway._answered(header.sequence_num, status, message_id)
        return None

    async def _handle_request(self, pdu: bytes, header: PduHeader) -> Any:
        if header.smpp_command == SmppCommand.DELIVER_SM:
            await self.gateway._deliver_sm(pdu, header.sequence_num, self.generation)
            return None  # answered by the gateway once the callback has returned
        return await super()._handle_request(pdu, header)

    async def answer_deliver_sm(self, sequence: int, status: int, generation: int) -> bool:
        """Send ``deliver_sm_resp``, if the connection the request came on is still up."""
        if generation != self.generation or not self.receiving:
            return False
        try:
            command_status = SmppCommandStatus(status)
        except ValueError:
            command_status = SmppCommandStatus.ESME_RX_T_APPN
        await self._send_data(DeliverSmResp(sequence_num=sequence, command_status=command_status))
        return True


def _address(value: str, *, sender: bool) -> PhoneNumber:
    """An SMPP address: ``+51...`` international/ISDN, digits unknown/ISDN, and for a sender
    an alphanumeric id of at most 11 ASCII characters."""
    text = value.strip()
    if text.startswith("+") and text[1:].isdigit() and len(text) <= 21:
        return PhoneNumber(text[1:], TON.INTERNATIONAL, NPI.ISDN)
    if text.isdigit() and text.isascii() and len(text) <= 20:
        return PhoneNumber(text, TON.UNKNOWN, NPI.ISDN)
    if sender and text and len(text) <= MAX_SENDER_ID and text.isascii() and text.isprintable():
        return PhoneNumber(text, TON.ALPHANUMERIC, NPI.UNKNOWN)
    what = "sender" if sender else "destination"
    raise ValueError(f"{what} {value!r} is not a number or an alphanumeric id of 11 characters")


class SmppGateway:
    """One SMPP transceiver bind; see the module for what it does and why."""

    kind = "smpp"

    def __init__(self, settings: SmsGatewaySettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._session: _Session | None = None
        self._runner: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._on_receipt: OnReceipt | None = None
        self._on_inbound: OnInbound | None = None
        self._expecting: dict[int, asyncio.Future[_Answer]] = {}  # id(submit_sm) -> answer
        self._pending: dict[int, asyncio.Future[_Answer]] = {}  # sequence -> answer
        self._window = asyncio.Semaphore(settings.window)
        self._bucket = TokenBucket(settings.rate_per_second)
        self._throttle_pause = settings.throttle_backoff_seconds
        self._up = asyncio.Event()
        self._last_error = "not started"
        self._last_code: int | None = None
        self._reference = random.randrange(256)
        self._reassembler = Reassembler(settings.inbound_parts_timeout_seconds)
        self._deliver_slots = asyncio.Semaphore(settings.window)
        self._deliver_tasks: set[asyncio.Task[None]] = set()
        self.counters: Counter[str] = Counter()

    # --- life cycle -----------------------------------------------------------------------

    async def start(self, on_receipt: OnReceipt, on_inbound: OnInbound) -> None:
        """Start binding (in the background: an SMSC that is down is retried with back-off,
        and ``submit`` answers ``deferred`` meanwhile).  :meth:`wait_bound` waits for it."""
        if self._session is not None:
            raise SmsGatewayError("SMS gateway {name} is already started", name=self.name)
        settings = self.settings
        self._on_receipt = on_receipt
        self._on_inbound = on_inbound
        self._last_error = "binding"
        self._session = _Session(
            self,
            smsc_host=settings.host,
            smsc_port=settings.port,
            system_id=settings.system_id,
            password=settings.password.get_secret_value(),
            system_type=settings.system_type,
            client_id=f"mailer-{self.name}",
            enquire_link_interval=float(settings.enquire_link_seconds),
            log_level=logging.WARNING,
            log_handler=_LogForward(),
            log_metadata={"gateway": self.name},
            log_include_timestamp=False,
            hook=_Hook(self),
            correlator=_NoCorrelator(),
            retry_timer=_Backoff(settings.reconnect_min_seconds, settings.reconnect_max_seconds),
            socket_timeout=float(settings.response_timeout_seconds),
        )
        self._runner = asyncio.create_task(self._session.start(), name=f"smpp {self.name}")
        self._sweeper = asyncio.create_task(self._sweep_inbound(), name=f"smpp {self.name} mo")

    async def wait_bound(self, timeout: float) -> None:
        """Return once bound; raise :class:`GatewayUnavailable` with the last error after
        *timeout* seconds."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            raise GatewayUnavailable(
                "SMS gateway {name} is not bound: {error}",
                name=self.name,
                error=self._last_error,
            ) from None

    @property
    def bound(self) -> bool:
        return self._up.is_set()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bound": self.bound,
            "last_error": "" if self.bound else self._last_error,
            "last_code": self._last_code,
            "in_flight": len(self._pending),
            "throttle_pause": round(self._bucket.paused_for, 3),
            "inbound_parts_waiting": len(self._reassembler),
            **self.counters,
        }

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.stop(), 5)
        for task in (self._runner, self._sweeper):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._runner = self._sweeper = None
        if self._deliver_tasks:
            await asyncio.wait(set(self._deliver_tasks), timeout=5)
            for task in list(self._deliver_tasks):
                task.cancel()
        self._session_down()
        self._last_error = "stopped"

    # --- called by the session ------------------------------------------------------------

    def _session_up(self) -> None:
        self._last_error = ""
        self._last_code = None
        self._up.set()
        self.counters["binds"] += 1
        log.info("SMS gateway %s bound to %s:%s", self.name, self.settings.host, self.settings.port)

    def _session_down(self) -> None:
        if self._up.is_set() and self._session is not None:  # (None: we are stopping)
            log.warning("SMS gateway %s: connection to the SMSC lost", self.name)
            self._last_error = "connection lost"
        self._up.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_ConnectionLost("connection lost before the answer"))

    def _bind_failed(self, error: str, code: int | None) -> None:
        self._last_error = error
        self._last_code = code
        self.counters["bind_failures"] += 1
        log.warning("SMS gateway %s: %s", self.name, error)

    def _expect(self, submit_sm: SubmitSm) -> None:
        future = self._expecting.pop(id(submit_sm), None)
        if future is None:
            return
        session = self._session
        if session is None or not session.receiving:
            raise _ConnectionLost("not connected")
        self._pending[submit_sm.sequence_num] = future

    def _answered(self, sequence: int, status: int, message_id: str) -> None:
        future = self._pending.pop(sequence, None)
        if future is None or future.done():
            # Answered after we stopped waiting: the part was reported deferred and may be
            # sent again.  Say so, with the id, so a duplicate can be traced.
            log.warning(
                "SMS gateway %s: late answer to sequence %s: %s, message id %r",
                self.name,
                sequence,
                status_name(status),
                message_id,
            )
            return
        future.set_result(_Answer(status, message_id))

    # --- submitting -----------------------------------------------------------------------

    async def submit(
        self, messages: Sequence[SmsOutbound], *, timeout: float | None = None
    ) -> list[SubmitResult]:
        """Send *messages* (see :class:`~mailer.sms.types.SmsGateway`).

        A message whose first part is not sent within *timeout* seconds comes back
        ``deferred``; once its first part is accepted, its other parts are sent whatever
        the time (a recipient should not get half a message, then all of it again)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        results: list[SubmitResult | None] = [None] * len(messages)
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(messages):
                index = next_index
                next_index += 1
                results[index] = await self._submit_message(messages[index], deadline)

        workers = min(len(messages), self.settings.window)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return [result for result in results if result is not None]

    def _next_reference(self) -> int:
        self._reference = self._reference % 255 + 1
        return self._reference

    async def _submit_message(self, message: SmsOutbound, deadline: float | None) -> SubmitResult:
        def refused(text: str) -> SubmitResult:
            return SubmitResult(ref=message.ref, status="rejected", text=text)

        if self._session is None:
            return SubmitResult(
                ref=message.ref,
                status="deferred",
                text=f"SMS gateway {self.name} is not started",
                retry_after=self.settings.reconnect_min_seconds,
            )
        if not message.text:
            return refused("empty message")
        try:
            destination = _address(message.to, sender=False)
            source = _address(message.sender or self.settings.default_sender, sender=True)
            segments = split(message.text)
        except MessageTooLong as error:
            return refused(error.message)
        except ValueError as error:
            return refused(str(error))
        total = len(segments)
        reference = self._next_reference() if total > 1 else 0
        validity = message.validity_seconds or self.settings.validity_seconds
        ids: list[str] = []
        for number, segment in enumerate(segments, 1):
            submit_sm = self._submit_sm(
                segment, source, destination, reference, number, total, message.receipt, validity
            )
            outcome = await self._submit_part(submit_sm, deadline if number == 1 else None)
            if outcome.status == "submitted":
                ids.append(normalise_provider_id(outcome.message_id))
                continue
            text = outcome.text if total == 1 else f"part {number} of {total}: {outcome.text}"
            return SubmitResult(
                ref=message.ref,
                status=outcome.status,
                provider_ids=tuple(ids),
                code=outcome.code,
                text=text,
                retry_after=outcome.retry_after,
                parts=total,
            )
        self.counters["messages"] += 1
        return SubmitResult(
            ref=message.ref, status="submitted", provider_ids=tuple(ids), code=0, parts=total
        )

    @staticmethod
    def _submit_sm(
        segment: Segment,
        source: PhoneNumber,
        destination: PhoneNumber,
        reference: int,
        number: int,
        total: int,
        receipt: bool,
        validity: int | None,
    ) -> SubmitSm:
        udh = bytes((5, 0x00, 3, reference, total, number)) if total > 1 else b""
        submit_sm = SubmitSm(
            short_message=segment.text or " ",  # unused: the payload is set below
            source=source,
            destination=destination,
            esm_class=ESM_UDHI if total > 1 else 0,
            registered_delivery=1 if receipt else 0,
            validity_period=timedelta(seconds=validity) if validity else None,
            encoding="ucs2" if segment.data_coding == DATA_CODING_UCS2 else None,
            auto_message_payload=False,
        )
        submit_sm.set_encoded_message(udh + segment.payload)
        return submit_sm

    def _retry_after(self) -> float:
        return max(self._bucket.paused_for, self.settings.reconnect_min_seconds)

    async def _submit_part(self, submit_sm: SubmitSm, deadline: float | None) -> _PartOutcome:
        loop = asyncio.get_running_loop()
        settings = self.settings
        failures = 0
        while True:
            if deadline is not None and loop.time() >= deadline:
                return _PartOutcome(
                    "deferred",
                    text="not sent within the time given",
                    retry_after=self._retry_after(),
                )
            if not self._up.is_set():
                wait = settings.response_timeout_seconds
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - loop.time()))
                try:
                    await asyncio.wait_for(self._up.wait(), wait)
                except TimeoutError:
                    return _PartOutcome(
                        "deferred",
                        code=self._last_code,
                        text=f"not bound to the SMSC: {self._last_error}",
                        retry_after=self._retry_after(),
                    )
            async with self._window:
                if deadline is not None and loop.time() >= deadline:
                    continue  # answered "deferred" at the top
                await self._bucket.take()
                try:
                    answer: _Answer | None = await self._exchange(submit_sm)
                    problem = ""
                except (ConnectionError, OSError, TimeoutError, AssertionError) as error:
                    answer, problem = None, repr(error) if not str(error) else str(error)
            if answer is None:
                failures += 1
                self.counters["retries"] += 1
                if failures > settings.max_retries:
                    return _PartOutcome(
                        "deferred", text=f"no answer: {problem}", retry_after=self._retry_after()
                    )
                continue
            status = answer.status
            if status == ESME_ROK:
                self._throttle_pause = settings.throttle_backoff_seconds
                self.counters["parts"] += 1
                return _PartOutcome("submitted", message_id=answer.message_id, code=0)
            if status in THROTTLE_STATUSES:
                self.counters["throttled"] += 1
                if not self._bucket.paused_for:
                    self._bucket.pause(self._throttle_pause)
                    self._throttle_pause = min(MAX_THROTTLE_PAUSE, self._throttle_pause * 2)
                continue
            if status in TRANSIENT_STATUSES:
                failures += 1
                self.counters["retries"] += 1
                if failures > settings.max_retries:
                    return _PartOutcome(
                        "deferred",
                        code=status,
                        text=status_name(status),
                        retry_after=self._retry_after(),
                    )
                await asyncio.sleep(settings.throttle_backoff_seconds * failures)
                continue
            self.counters["rejected"] += 1
            return _PartOutcome("rejected", code=status, text=status_name(status))

    async def _exchange(self, submit_sm: SubmitSm) -> _Answer:
        """Write one ``submit_sm`` and wait for its answer."""
        session = self._session
        if session is None:
            raise _ConnectionLost("gateway stopped")
        timeout = self.settings.response_timeout_seconds
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._expecting[id(submit_sm)] = future
        try:
            await asyncio.wait_for(session._send_data(submit_sm), timeout)
            if id(submit_sm) in self._expecting:
                raise _ConnectionLost("request not sent")
            return await asyncio.wait_for(future, timeout)
        finally:
            self._expecting.pop(id(submit_sm), None)
            if self._pending.get(submit_sm.sequence_num) is future:
                del self._pending[submit_sm.sequence_num]

    # --- receiving ------------------------------------------------------------------------

    async def _deliver_sm(self, pdu: bytes, sequence: int, generation: int) -> None:
        # At most `window` deliver_sm being handled: past that, reading waits (backpressure
        # on the SMSC rather than unbounded tasks).
        await self._deliver_slots.acquire()
        task = asyncio.create_task(self._handle_deliver(pdu, sequence, generation))
        self._deliver_tasks.add(task)
        task.add_done_callback(self._deliver_done)

    def _deliver_done(self, task: asyncio.Task[None]) -> None:
        self._deliver_tasks.discard(task)
        self._deliver_slots.release()

    async def _handle_deliver(self, pdu: bytes, sequence: int, generation: int) -> None:
        status = ESME_ROK
        try:
            deliver = parse_deliver_sm(pdu)
        except PduError as error:
            log.error(
                "SMS gateway %s: unreadable deliver_sm (%s), answered %s: %s",
                self.name,
                error,
                status_name(ESME_RX_P_APPN),
                pdu.hex(),
            )
            status = ESME_RX_P_APPN
        else:
            try:
                if deliver.is_receipt:
                    await self._receipt(deliver)
                else:
                    await self._inbound(deliver)
            except Exception:
                log.exception(
                    "SMS gateway %s: the %s callback failed; answered %s so the SMSC sends it "
                    "again",
                    self.name,
                    "receipt" if deliver.is_receipt else "inbound",
                    status_name(ESME_RX_T_APPN),
                )
                status = ESME_RX_T_APPN
        self.counters["deliver_sm_errors" if status else "deliver_sm_ok"] += 1
        session = self._session
        try:
            if session is None or not await session.answer_deliver_sm(sequence, status, generation):
                log.warning(
                    "SMS gateway %s: connection gone before deliver_sm %s could be answered; "
                    "the SMSC will send it again",
                    self.name,
                    sequence,
                )
        except Exception:
            log.warning("SMS gateway %s: could not answer deliver_sm", self.name, exc_info=True)

    async def _receipt(self, deliver: DeliverSm) -> None:
        assert self._on_receipt is not None
        receipt = receipt_from_deliver(deliver, self.name, text_id=self.settings.receipt_text_id)
        self.counters["receipts"] += 1
        await self._on_receipt(receipt)

    def _inbound_value(
        self, sender: str, to: str, payloads: list[bytes], data_coding: int, total: int
    ) -> Inbound:
        return Inbound(
            sender=sender,
            to=to,
            text=decode_payload(b"".join(payloads), data_coding),
            gateway=self.name,
            received_at=utcnow(),
            parts=total,
            complete=len(payloads) == total,
            data_coding=data_coding,
        )

    async def _inbound(self, deliver: DeliverSm) -> None:
        assert self._on_inbound is not None
        concat, payload = split_udh(deliver)
        sender = inbound_sender(deliver.source, deliver.source_ton)
        if concat is None:
            self.counters["inbound"] += 1
            await self._on_inbound(
                self._inbound_value(sender, deliver.destination, [payload], deliver.data_coding, 1)
            )
            return
        key: ReassemblyKey = (
            sender,
            deliver.destination,
            concat.bits,
            concat.reference,
            concat.total,
        )
        payloads = self._reassembler.add(key, concat, payload, deliver.data_coding)
        if payloads is None:
            return  # a part: kept until the others come
        inbound = self._inbound_value(
            sender, deliver.destination, payloads, deliver.data_coding, concat.total
        )
        try:
            await self._on_inbound(inbound)
        except Exception:
            self._reassembler.failed(key)
            raise
        self._reassembler.done(key)
        self.counters["inbound"] += 1

    async def _sweep_inbound(self) -> None:
        """Hand over concatenated messages whose missing parts never came."""
        period = max(0.5, min(30.0, self.settings.inbound_parts_timeout_seconds / 4))
        while True:
            await asyncio.sleep(period)
            for key, payloads, total, data_coding in self._reassembler.expired():
                assert self._on_inbound is not None
                inbound = self._inbound_value(key[0], key[1], payloads, data_coding, total)
                try:
                    await self._on_inbound(inbound)
                except Exception:
                    log.exception("SMS gateway %s: inbound callback failed", self.name)
                    continue
                self._reassembler.done(key)
                self.counters["inbound_incomplete"] += 1
