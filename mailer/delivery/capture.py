"""The built-in capture relay: an SMTP server that accepts mail and hands it to a sink.

:class:`CaptureRelay` runs an aiosmtpd server in its own thread (aiosmtpd's
``Controller``) on ``host:port`` (port 0 picks a free port; :attr:`CaptureRelay.port` then
tells which).  Every accepted message goes to ``sink(mail_from, rcpt_tos, data)``, called in
the relay's thread, and is answered ``250 OK queued as <id>``.  It speaks ESMTP with
8BITMIME and SMTPUTF8, STARTTLS or implicit TLS when given a TLS context, and serves many
connections at once.

Test behaviour (``recipient_rules=True``, the default): a recipient whose local part starts
with ``reject-`` is refused with ``550 5.1.1 user unknown`` and one starting with ``defer-``
with ``450 4.2.1 mailbox temporarily unavailable`` (a plain deferral), one starting with
``full-`` with ``552 5.2.2 mailbox full`` (a soft bounce) and one starting with ``slow-``
with ``451 4.7.1 rate limited, slow down`` (a destination asking us to slow down), so that
rejections, deferrals and shaping can be produced on purpose.  Everything else is
captured.  What the sink does with a message (store it for the portal, count it in a test)
is not this module's business.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["CaptureRelay", "PortZeroController", "Sink"]

log = logging.getLogger(__name__)

Sink = Callable[[str, list[str], bytes], None]

REJECT_PREFIX = "reject-"
DEFER_PREFIX = "defer-"
RULES = (
    (REJECT_PREFIX, "550 5.1.1 user unknown"),
    (DEFER_PREFIX, "450 4.2.1 mailbox temporarily unavailable"),
    ("full-", "552 5.2.2 mailbox full"),
    ("slow-", "451 4.7.1 rate limited, slow down"),
)


class _CaptureHandler:
    """aiosmtpd handler: recipient rules at RCPT, the sink at DATA."""

    def __init__(self, sink: Sink, recipient_rules: bool) -> None:
        self.sink = sink
        self.recipient_rules = recipient_rules
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(2).upper()  # distinguishes relay restarts

    async def handle_RCPT(  # aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.recipient_rules:
            local_part = address.rpartition("@")[0].lower()
            for prefix, reply in RULES:
                if local_part.startswith(prefix):
                    return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        data = envelope.content or b""
        if isinstance(data, str):  # only with decode_data=True, which we do not set
            data = data.encode("utf-8", "surrogateescape")
        try:
            self.sink(envelope.mail_from or "", list(envelope.rcpt_tos), data)
        except Exception:  # the client must not think the message is safe
            log.exception("capture sink failed; answering 451")
            return "451 4.3.0 capture failed, try again later"
        return f"250 OK queued as C{self._id_prefix}{next(self._ids):08X}"


class PortZeroController(Controller):
    """aiosmtpd's Controller, able to listen on port 0 (it assumes a fixed port)."""

    def _trigger_server(self) -> None:
        # Called once the server listens, before the first connection is made to it.
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class CaptureRelay:
    """An SMTP server that captures every message it accepts.  ``start()`` / ``stop()``,
    or use it as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2525,
        *,
        sink: Sink,
        recipient_rules: bool = True,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        server_hostname: str | None = None,
        data_size_limit: int = 64 * 1024 * 1024,
        idle_timeout: float = 300.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._handler = _CaptureHandler(sink, recipient_rules)
        smtp_options: dict[str, Any] = {
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "data_size_limit": data_size_limit,
            "timeout": idle_timeout,
        }
        if tls_context is not None and not implicit_tls:
            smtp_options["tls_context"] = tls_context
            smtp_options["require_starttls"] = require_starttls
        self._controller = PortZeroController(
            self._handler,
            hostname=host,
            port=port,
            ssl_context=tls_context if implicit_tls else None,
            server_hostname=server_hostname,
            **smtp_options,
        )
        self._running = False

    @property
    def port(self) -> int:
        """The port listened on (the bound one when asked for port 0 and started)."""
        return int(self._controller.port)

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            return
        self._controller.port = self._requested_port
        self._controller.start()
        self._running = True
        log.info("capture relay listening on %s:%s", self.host, self.port)

    def stop(self) -> None:
        if not self._running:
            return
        self._controller.stop()
        self._running = False

    def __enter__(self) -> CaptureRelay:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
