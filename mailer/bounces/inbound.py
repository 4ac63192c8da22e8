"""The inbound SMTP receiver (`mailer inbound`): where bounces, complaints and mailto
unsubscribes arrive.

:class:`InboundReceiver` runs an aiosmtpd server in its own thread.  It accepts, at RCPT,
only what is ours to receive: ``bounces+TOKEN@``, ``bounces@`` and ``unsubscribe+TOKEN@``
at the configured domains (``settings.inbound.domains``; empty = any domain) and the
feedback-loop address (``settings.inbound.fbl_address``); anything else is refused
``550 5.7.1`` (we are not a relay).  A message over ``max_bytes`` is refused ``552``.

Each message goes to :func:`mailer.bounces.service.handle_inbound` in a worker thread with a
database session of its own, and is answered ``250`` only once that session committed: a
DSN is never acknowledged before what it did is durable.  An internal error, or a report
about a row whose send is not recorded yet, is answered ``451``, so the sending MTA keeps
the message and tries again (handling is idempotent, so a retry after a commit whose
``250`` was lost records nothing twice).

What a report means and what it does is the service's business, not this module's.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType, TracebackType

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.bounces.service import (
    BOUNCE_LOCAL,
    UNSUBSCRIBE_LOCAL,
    InboundOutcome,
    handle_inbound,
)
from mailer.core.config import Settings
from mailer.delivery.capture import PortZeroController
from mailer.storage.db import load_models, session_scope

__all__ = ["InboundReceiver", "accepts_recipient", "run_inbound"]

log = logging.getLogger(__name__)

RELAY_DENIED = "550 5.7.1 relaying denied"
TRY_LATER = "451 4.3.0 temporary failure, try again later"


def accepts_recipient(settings: Settings, address: str) -> bool:
    """Whether the receiver takes mail for *address* (see the module docstring)."""
    address = address.strip().strip("<>").lower()
    fbl = settings.inbound.fbl_address.strip().lower()
    if fbl and address == fbl:
        return True
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return False
    domains = {d.strip().lower().rstrip(".") for d in settings.inbound.domains if d.strip()}
    if domains and domain.rstrip(".") not in domains:
        return False
    name, plus, token = local.partition("+")
    if name == BOUNCE_LOCAL:
        return True
    return name == UNSUBSCRIBE_LOCAL and bool(plus and token)


class _InboundHandler:
    """aiosmtpd handler: recipients checked at RCPT, messages handled at DATA."""

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.executor = executor

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not accepts_recipient(self.settings, address):
            return RELAY_DENIED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):  # only with decode_data=True, which we do not set
            data = data.encode("utf-8", "surrogateescape")
        mail_from = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the null return path's brackets
            mail_from = ""
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(
                self.executor, self._handle, mail_from, list(envelope.rcpt_tos), bytes(data)
            )
        except Exception:  # the sending MTA keeps the message and retries
            log.exception("inbound message from <%s> failed; answering 451", mail_from)
            return TRY_LATER
        if outcome.retry_later:
            return f"451 4.3.0 {outcome.note or 'not ready'}, try again later"
        return f"250 2.0.0 OK {outcome.route}: {outcome.kind}"

    def _handle(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> InboundOutcome:
        # One session per message, committed before the 250 goes out.
        with session_scope(self.settings) as db:
            return handle_inbound(db, self.settings, mail_from, rcpt_tos, data)


class InboundReceiver:
    """The inbound SMTP server: ``start()`` / ``stop()``, or a context manager.  *host* and
    *port* default to ``settings.inbound``; port 0 picks a free one (:attr:`port`).

    *workers* threads handle messages (one by default: reports are few, and one writer
    never meets another on SQLite); the SMTP side serves many connections at once."""

    def __init__(
        self,
        settings: Settings,
        host: str | None = None,
        port: int | None = None,
        *,
        workers: int = 1,
        idle_timeout: float = 300.0,
    ) -> None:
        self.settings = settings
        self.host = host if host is not None else settings.inbound.host
        self._requested_port = port if port is not None else settings.inbound.port
        self._workers = workers
        self._idle_timeout = idle_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._controller: PortZeroController | None = None

    @property
    def port(self) -> int:
        """The port listened on (the bound one when asked for port 0 and started)."""
        if self._controller is None:
            return self._requested_port
        return int(self._controller.port)

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> InboundReceiver:
        if self._controller is not None:
            return self
        load_models()  # every table the ledger's foreign keys name, in a process of its own
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="inbound")
        controller = PortZeroController(
            _InboundHandler(self.settings, self._executor),
            hostname=self.host,
            port=self._requested_port,
            data_size_limit=self.settings.inbound.max_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=self._idle_timeout,
            ready_timeout=10.0,
        )
        try:
            controller.start()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._controller = controller
        log.info("inbound receiver listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        executor, self._executor = self._executor, None
        if controller is not None:
            controller.stop()
        if executor is not None:
            # Messages being written finish; their senders, cut off before the 250, retry.
            executor.shutdown(wait=True)

    def __enter__(self) -> InboundReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def run_inbound(settings: Settings, *, stop: threading.Event | None = None) -> None:
    """Run the receiver on ``settings.inbound`` until SIGTERM or SIGINT (or *stop* is set,
    when given: signals are then the caller's)."""
    event = stop or threading.Event()
    previous: dict[int, object] = {}
    if stop is None:

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            log.info("inbound receiver: signal %d, stopping", signum)
            event.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
    try:
        with InboundReceiver(settings):
            while not event.wait(1.0):
                pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
