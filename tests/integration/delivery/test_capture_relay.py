"""The capture relay as an SMTP server, driven by plain aiosmtplib clients."""

from __future__ import annotations

import asyncio
import socket
import threading

import aiosmtplib
import pytest

from mailer.delivery.capture import CaptureRelay


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.threads: set[int] = set()

    def __call__(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self.lock:
            self.messages.append((mail_from, rcpt_tos, data))
            self.threads.add(threading.get_ident())


def test_port_zero_binds_a_free_port_and_stop_releases_it() -> None:
    relay = CaptureRelay("127.0.0.1", 0, sink=Sink())
    relay.start()
    try:
        assert relay.running and relay.port > 0
        with socket.create_connection(("127.0.0.1", relay.port), timeout=2) as client:
            assert client.recv(1024).startswith(b"220 ")
    finally:
        relay.stop()
    assert not relay.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", relay.port), timeout=2):
        pass


def test_many_concurrent_connections() -> None:
    sink = Sink()

    async def one(port: int, index: int) -> None:
        message = f"Subject: {index}\r\n\r\nbody {index}\r\n".encode()
        await aiosmtplib.send(
            message,
            sender="a@munilima.gob.pe",
            recipients=[f"r{index}@example.pe"],
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            local_hostname="client.test",
            timeout=10,
        )

    async def many(port: int) -> None:
        await asyncio.gather(*(one(port, index) for index in range(100)))

    with CaptureRelay("127.0.0.1", 0, sink=sink) as relay:
        asyncio.run(many(relay.port))
    assert len(sink.messages) == 100
    assert {rcpt_tos[0] for _, rcpt_tos, _ in sink.messages} == {
        f"r{index}@example.pe" for index in range(100)
    }
    assert len(sink.threads) == 1  # called in the relay's thread


def test_recipient_rules_per_recipient_and_queue_id() -> None:
    sink = Sink()

    async def send(port: int) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test"
        ) as client:
            return await client.sendmail(
                "a@munilima.gob.pe",
                ["ok@example.pe", "reject-x@example.pe", "Defer-y@example.pe"],
                b"Subject: x\r\n\r\nbody\r\n",
            )

    with CaptureRelay("127.0.0.1", 0, sink=sink) as relay:
        refused, reply = asyncio.run(send(relay.port))
    assert refused["reject-x@example.pe"].code == 550
    assert refused["reject-x@example.pe"].message == "5.1.1 user unknown"
    assert refused["Defer-y@example.pe"].code == 450
    assert reply.startswith("OK queued as C")
    assert [rcpt_tos for _, rcpt_tos, _ in sink.messages] == [["ok@example.pe"]]


def test_rules_can_be_switched_off() -> None:
    sink = Sink()

    async def send(port: int) -> None:
        await aiosmtplib.send(
            b"Subject: x\r\n\r\nbody\r\n",
            sender="a@munilima.gob.pe",
            recipients=["reject-x@example.pe"],
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            local_hostname="client.test",
        )

    with CaptureRelay("127.0.0.1", 0, sink=sink, recipient_rules=False) as relay:
        asyncio.run(send(relay.port))
    assert sink.messages[0][1] == ["reject-x@example.pe"]


def test_smtputf8_and_8bitmime() -> None:
    sink = Sink()
    data = "From: josé@munilima.gob.pe\r\nSubject: ñandú\r\n\r\nCuerpo en UTF-8: ñ € 😀\r\n"

    async def send(port: int) -> set[str]:
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname="client.test"
        ) as client:
            await client.ehlo()
            extensions = set(client.esmtp_extensions)
            await client.sendmail(
                "josé@munilima.gob.pe",
                ["núñez@example.pe"],
                data.encode(),
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )
            return extensions

    with CaptureRelay("127.0.0.1", 0, sink=sink) as relay:
        extensions = asyncio.run(send(relay.port))
    assert {"smtputf8", "8bitmime"} <= extensions
    mail_from, rcpt_tos, captured = sink.messages[0]
    assert mail_from == "josé@munilima.gob.pe"
    assert rcpt_tos == ["núñez@example.pe"]
    assert captured == data.encode()
