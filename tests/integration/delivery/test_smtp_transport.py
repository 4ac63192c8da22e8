"""SmtpTransport against real SMTP servers (aiosmtpd) on 127.0.0.1: the capture relay and
small scripted servers that refuse, drop or stall."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailer.core.errors import ConfigError
from mailer.core.ports import Transport
from mailer.core.types import DeliveryStatus, Envelope
from mailer.delivery.capture import CaptureRelay, PortZeroController
from mailer.delivery.mime import MessageHeaders, assemble, new_message_id
from mailer.delivery.smtp import SmtpTransport

HEADERS = MessageHeaders(
    from_name="Municipalidad de Lima", from_email="avisos@munilima.gob.pe", reply_to=None
)
NOW = dt.datetime(2025, 3, 14, 15, 0, tzinfo=dt.UTC)


class Captured:
    """A thread-safe sink: the relay calls it from its own thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], bytes]] = []

    def __call__(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self.lock:
            self.messages.append((mail_from, rcpt_tos, data))


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
def relay(captured: Captured) -> Iterator[CaptureRelay]:
    with CaptureRelay("127.0.0.1", 0, sink=captured) as running:
        yield running


def _envelope(index: int, rcpt: str | None = None, *, text: str = "") -> Envelope:
    rcpt = rcpt or f"vecino{index}@example.pe"
    data = assemble(
        HEADERS,
        to_email=rcpt,
        to_name=None,
        subject=f"Aviso {index}: señor Núñez",
        html=f"<p>Mensaje {index}</p>\n.\n<p>ñandú</p>",
        text=text or f"Mensaje {index}\n.\nFrom here\n",
        message_id=new_message_id("munilima.gob.pe"),
        date=NOW,
    )
    return Envelope(message_id=index, mail_from="rebotes@munilima.gob.pe", rcpt_to=rcpt, data=data)


def _transport(port: int, **options: Any) -> SmtpTransport:
    options.setdefault("timeout", 5.0)
    options.setdefault("local_hostname", "worker.test")
    return SmtpTransport("127.0.0.1", port, **options)


async def _send(transport: SmtpTransport, envelopes: list[Envelope]) -> list[Any]:
    try:
        return await transport.send_many(envelopes)
    finally:
        await transport.aclose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ScriptedHandler:
    """An aiosmtpd handler that records sessions and can misbehave on purpose."""

    def __init__(self, *, drop_data: set[int] | None = None, drop_rcpt_prefix: str = "") -> None:
        self.lock = threading.Lock()
        self.peers: set[object] = set()
        self.delivered: list[str] = []
        self.data_attempts = 0
        self.drop_data = drop_data or set()  # abort the connection at these DATA attempts
        self.drop_rcpt_prefix = drop_rcpt_prefix  # and at DATA for these recipients

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        with self.lock:
            self.data_attempts += 1
            attempt = self.data_attempts
        rcpt = envelope.rcpt_tos[0]
        if attempt in self.drop_data or (
            self.drop_rcpt_prefix and rcpt.startswith(self.drop_rcpt_prefix)
        ):
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 OK never seen"
        with self.lock:
            self.peers.add(session.peer)
            self.delivered.append(rcpt)
        return f"250 2.0.0 Ok: queued as Q{attempt:05d}"


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedHandler, PortZeroController]]:
    handler = ScriptedHandler()
    controller = PortZeroController(handler, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield handler, controller
    finally:
        controller.stop()


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.test")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


# -- the happy path -----------------------------------------------------------------------


def test_200_envelopes_over_4_connections_arrive_exactly_once(
    relay: CaptureRelay, captured: Captured
) -> None:
    envelopes = [_envelope(i) for i in range(200)]
    transport = _transport(relay.port, max_connections=4)
    results = asyncio.run(_send(transport, envelopes))

    assert [result.message_id for result in results] == list(range(200))
    assert all(result.status is DeliveryStatus.ACCEPTED for result in results)
    assert all(
        result.code == 250 and result.relay == f"127.0.0.1:{relay.port}" for result in results
    )
    provider_ids = [result.provider_id for result in results]
    assert all(provider_ids) and len(set(provider_ids)) == 200
    assert all(result.text.startswith("OK queued as ") for result in results)

    assert len(captured.messages) == 200
    by_rcpt = {rcpt_tos[0]: data for _, rcpt_tos, data in captured.messages}
    assert len(by_rcpt) == 200
    for envelope in envelopes:
        assert by_rcpt[envelope.rcpt_to] == envelope.data  # byte for byte, dots and all
    assert {mail_from for mail_from, _, _ in captured.messages} == {"rebotes@munilima.gob.pe"}


def test_connections_are_reused_and_renewed(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    transport = _transport(controller.port, max_connections=4, messages_per_connection=25)
    results = asyncio.run(_send(transport, [_envelope(i) for i in range(200)]))
    assert all(result.accepted for result in results)
    assert len(handler.delivered) == 200
    assert len(handler.peers) == 8  # 4 connections, each renewed after 25 messages
    assert results[0].provider_id is not None and results[0].provider_id.startswith("Q")


def test_idle_connections_are_kept_between_batches(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    transport = _transport(controller.port, max_connections=2)

    async def two_batches() -> None:
        first = await transport.send_many([_envelope(i) for i in range(10)])
        second = await transport.send_many([_envelope(i) for i in range(10, 20)])
        assert all(result.accepted for result in first + second)
        await transport.aclose()
        await transport.aclose()  # idempotent

    asyncio.run(two_batches())
    assert len(handler.delivered) == 20
    assert len(handler.peers) == 2


def test_concurrent_batches_share_the_connection_limit(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    transport = _transport(controller.port, max_connections=3)

    async def three_batches() -> list[Any]:
        batches = [[_envelope(i) for i in range(start, start + 30)] for start in (0, 30, 60)]
        try:
            return await asyncio.gather(*(transport.send_many(batch) for batch in batches))
        finally:
            await transport.aclose()

    results = asyncio.run(three_batches())
    assert all(result.accepted for batch in results for result in batch)
    assert [result.message_id for result in results[1]] == list(range(30, 60))
    assert len(handler.delivered) == 90
    assert len(handler.peers) <= 3


def test_a_new_event_loop_gets_new_connections(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    transport = _transport(controller.port, max_connections=2)
    first = asyncio.run(transport.send_many([_envelope(i) for i in range(4)]))
    second = asyncio.run(transport.send_many([_envelope(i) for i in range(4, 8)]))
    asyncio.run(transport.aclose())
    assert all(result.accepted for result in first + second)
    assert len(handler.delivered) == 8
    assert len(handler.peers) == 4  # the first loop's connections were not reused


def test_it_is_a_transport() -> None:
    assert isinstance(_transport(25), Transport)
    assert asyncio.run(_transport(25).send_many([])) == []


def test_utf8_addresses_use_smtputf8(relay: CaptureRelay, captured: Captured) -> None:
    envelope = _envelope(1, "josé.núñez@example.pe")
    [result] = asyncio.run(_send(_transport(relay.port), [envelope]))
    assert result.status is DeliveryStatus.ACCEPTED, result
    assert captured.messages[0][1] == ["josé.núñez@example.pe"]


# -- refusals -----------------------------------------------------------------------------


def test_reject_and_defer_recipients(relay: CaptureRelay, captured: Captured) -> None:
    envelopes = [
        _envelope(0),
        _envelope(1, "reject-ana@example.pe"),
        _envelope(2),
        _envelope(3, "defer-luis@example.pe"),
        _envelope(4),
    ]
    before = dt.datetime.now(dt.UTC)
    results = asyncio.run(_send(_transport(relay.port, max_connections=1), envelopes))

    accepted = [results[0], results[2], results[4]]
    assert all(result.status is DeliveryStatus.ACCEPTED for result in accepted)

    rejected = results[1]
    assert rejected.status is DeliveryStatus.REJECTED
    assert rejected.code == 550
    assert rejected.text == "RCPT: 5.1.1 user unknown"
    assert rejected.retry_at is None

    deferred = results[3]
    assert deferred.status is DeliveryStatus.DEFERRED
    assert deferred.code == 450
    assert deferred.text == "RCPT: 4.2.1 mailbox temporarily unavailable"
    assert deferred.retry_at is not None
    assert deferred.retry_at - before >= dt.timedelta(minutes=4, seconds=59)

    assert sorted(rcpt for _, (rcpt,), _ in captured.messages) == [
        "vecino0@example.pe",
        "vecino2@example.pe",
        "vecino4@example.pe",
    ]


def test_a_failing_sink_answers_451(relay: CaptureRelay) -> None:
    def broken_sink(mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        raise RuntimeError("disk full")

    with CaptureRelay("127.0.0.1", 0, sink=broken_sink) as failing:
        [result] = asyncio.run(_send(_transport(failing.port), [_envelope(1)]))
    assert result.status is DeliveryStatus.DEFERRED
    assert result.code == 451
    assert result.text.startswith("DATA: 4.3.0")


# -- connection trouble -------------------------------------------------------------------


def test_nobody_listening_gives_deferred_results() -> None:
    port = _free_port()
    envelopes = [_envelope(i) for i in range(5)]
    results = asyncio.run(_send(_transport(port, max_connections=3), envelopes))
    assert [result.message_id for result in results] == list(range(5))
    for result in results:
        assert result.status is DeliveryStatus.DEFERRED
        assert result.code is None
        assert result.retry_at is not None
        assert result.text.startswith(f"cannot connect to 127.0.0.1:{port}")


def test_a_silent_server_times_out_into_deferred_results() -> None:
    with socket.socket() as silent:  # accepts TCP connections, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        results = asyncio.run(_send(_transport(port, timeout=0.5), [_envelope(1), _envelope(2)]))
    for result in results:
        assert result.status is DeliveryStatus.DEFERRED
        assert result.code is None
        assert "timed out" in result.text.lower()


def test_a_connection_broken_mid_batch_is_retried_on_a_fresh_one(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    handler.drop_data = {3}  # the third DATA loses its connection before the reply
    results = asyncio.run(
        _send(_transport(controller.port, max_connections=1), [_envelope(i) for i in range(6)])
    )
    assert all(result.accepted for result in results)
    assert sorted(handler.delivered) == sorted(f"vecino{i}@example.pe" for i in range(6))
    assert len(handler.peers) == 2


def test_an_envelope_that_breaks_two_connections_is_deferred(
    scripted: tuple[ScriptedHandler, PortZeroController],
) -> None:
    handler, controller = scripted
    handler.drop_rcpt_prefix = "drop-"
    envelopes = [_envelope(0), _envelope(1, "drop-me@example.pe"), _envelope(2)]
    results = asyncio.run(_send(_transport(controller.port, max_connections=1), envelopes))
    assert results[0].accepted and results[2].accepted
    broken = results[1]
    assert broken.status is DeliveryStatus.DEFERRED
    assert broken.code is None
    assert "lost at DATA" in broken.text
    assert handler.data_attempts == 4  # 3 envelopes + one retry of the dropped one
    assert sorted(handler.delivered) == ["vecino0@example.pe", "vecino2@example.pe"]


def test_auth_against_a_relay_without_auth_is_deferred(relay: CaptureRelay) -> None:
    transport = _transport(relay.port, username="user", password="secret")
    [result] = asyncio.run(_send(transport, [_envelope(1)]))
    assert result.status is DeliveryStatus.DEFERRED
    assert result.code is None
    assert "AUTH" in result.text


# -- TLS ----------------------------------------------------------------------------------


def test_starttls_with_a_self_signed_certificate(tmp_path: Path, captured: Captured) -> None:
    context, _ = _self_signed(tmp_path)
    with CaptureRelay(
        "127.0.0.1", 0, sink=captured, tls_context=context, require_starttls=True
    ) as secure:
        plain = asyncio.run(_send(_transport(secure.port), [_envelope(0)]))
        verified = asyncio.run(_send(_transport(secure.port, starttls=True), [_envelope(1)]))
        tls = asyncio.run(
            _send(
                _transport(secure.port, starttls=True, validate_certs=False),
                [_envelope(i) for i in range(2, 12)],
            )
        )
    # Without STARTTLS the relay refuses the transaction (it requires TLS).
    assert plain[0].status is DeliveryStatus.REJECTED and plain[0].code == 530
    # With certificate validation the self-signed certificate is refused: a relay problem.
    assert verified[0].status is DeliveryStatus.DEFERRED
    assert "certificate" in verified[0].text.lower()
    assert all(result.accepted for result in tls)
    assert sorted(rcpt for _, (rcpt,), _ in captured.messages) == sorted(
        f"vecino{i}@example.pe" for i in range(2, 12)
    )


def test_implicit_tls_with_a_trusted_certificate(tmp_path: Path, captured: Captured) -> None:
    context, cert_path = _self_signed(tmp_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    client_context.check_hostname = False  # the certificate names relay.test, we dial an IP
    with CaptureRelay(
        "127.0.0.1", 0, sink=captured, tls_context=context, implicit_tls=True
    ) as secure:
        results = asyncio.run(
            _send(
                _transport(secure.port, implicit_tls=True, tls_context=client_context),
                [_envelope(i) for i in range(3)],
            )
        )
    assert all(result.accepted for result in results)
    message = email.message_from_bytes(captured.messages[0][2], policy=email.policy.default)
    assert message["Subject"].startswith("Aviso ")


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        SmtpTransport("127.0.0.1", 25, starttls=True, implicit_tls=True)
    with pytest.raises(ConfigError):
        SmtpTransport("127.0.0.1", 25, username="only-user")
    with pytest.raises(ConfigError):
        SmtpTransport("127.0.0.1", 25, max_connections=0)
