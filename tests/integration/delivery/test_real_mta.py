"""The delivery engine against real MTAs: Postfix and smtp-sink (Debian's) on 127.0.0.1, with
signatures checked by two independent verifiers (opendkim and dkimpy).

What arrives is what Postfix stored in its Maildir (with its Return-Path, Delivered-To and
Received headers on top); refusals come back as DeliveryResults; a recipient that Postfix
cannot deliver produces a real DSN, delivered to the VERP return path at a stand-in for the
inbound receiver.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import re
import types
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from mailer.core.types import DeliveryResult, DeliveryStatus, Envelope
from mailer.delivery.dkim import MultiSigner
from mailer.delivery.domains import SendingDomain, add_domain
from mailer.delivery.mime import MessageHeaders, assemble, new_message_id
from mailer.delivery.smtp import SmtpTransport
from tests.mta import (
    PostfixServer,
    ReceivedMessage,
    SinkFactory,
    SmtpReceiver,
    SmtpSink,
    process_running,
)
from tests.opendkim import OpendkimVerifier

DOMAIN = "news.test"
VERP = "bounces+{token}@bounce.test"
SUBJECT = "Convocatoria pública n.º 7: adquisición de útiles escolares, año fiscal — señor Núñez"
HTML_LINE = (
    '<p style="font-family:Arial,sans-serif;font-size:15px;color:#1a1a1a">Estimado proveedor: '
    "la Municipalidad informa que la recepción de propuestas técnicas y económicas se "
    "realizará en la sede central (Jr. de la Unión 300, Lima), según el cronograma "
    "publicado; la información adicional está en "
    '<a href="https://news.test/c/abc123?utm_source=boletín&amp;utm_campaign=licitación">'
    "el portal de contrataciones</a>.</p>"
)
HTML = (
    '<!DOCTYPE html><html lang="es"><head><meta charset="utf-8"></head><body>'
    + HTML_LINE * 6
    + "<p>Atentamente,<br>Oficina de Logística — Área de Adquisiciones</p></body></html>"
)
TEXT = "Estimado proveedor:\n\nLa recepción de propuestas será en la sede central.\n\nÑandú.\n"
HEADERS = MessageHeaders(
    from_name="Municipalidad de Lima — Logística",
    from_email=f"boletin@{DOMAIN}",
    reply_to=f"consultas@{DOMAIN}",
    extra=(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),),
)


# --- the sending domain and its messages ------------------------------------------------------


@pytest.fixture(scope="module")
def sending_domain(tmp_path_factory: pytest.TempPathFactory) -> SendingDomain:
    return add_domain(tmp_path_factory.mktemp("sending_domains"), DOMAIN, ed25519=True)


@pytest.fixture(scope="module")
def public_keys(sending_domain: SendingDomain) -> dict[str, str]:
    """``selector._domainkey.domain`` -> TXT value, as the domain's DNS would publish."""
    return {
        name: value
        for name, kind, value in sending_domain.records()
        if kind == "TXT" and "._domainkey." in name
    }


@pytest.fixture(scope="module")
def signer(sending_domain: SendingDomain) -> MultiSigner:
    return MultiSigner(sending_domain.signers())


class _VerifyKey:
    """PyNaCl's VerifyKey as far as dkimpy uses it, on ``cryptography`` (as in the DKIM
    unit tests: PyNaCl is not a project dependency)."""

    def __init__(self, key: bytes, encoder: object = None) -> None:
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

    def verify(self, message: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise _BadSignature from exc
        return message


class _BadSignature(Exception):
    pass


@pytest.fixture
def dkimpy_ed25519(monkeypatch: pytest.MonkeyPatch) -> None:
    shim = types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=_VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=None),
        exceptions=types.SimpleNamespace(ValueError=ValueError, BadSignatureError=_BadSignature),
    )
    monkeypatch.setattr(dkim, "nacl", shim, raising=False)


def _signed_message(signer: MultiSigner, rcpt: str, *, subject: str = SUBJECT) -> bytes:
    message = assemble(
        HEADERS,
        to_email=rcpt,
        to_name="José Núñez Ñahui",
        subject=subject,
        html=HTML,
        text=TEXT,
        message_id=new_message_id(DOMAIN),
        date=dt.datetime.now(dt.UTC),
        list_unsubscribe=f"https://{DOMAIN}/u/tok123",
    )
    return signer.sign(message)


def _envelope(signer: MultiSigner, index: int, rcpt: str) -> Envelope:
    return Envelope(
        message_id=index,
        mail_from=VERP.format(token=f"m{index}"),
        rcpt_to=rcpt,
        data=_signed_message(signer, rcpt),
    )


def _send(port: int, envelopes: list[Envelope], **options: Any) -> list[DeliveryResult]:
    transport = SmtpTransport(
        "127.0.0.1", port, timeout=10.0, local_hostname="worker.news.test", **options
    )

    async def run() -> list[DeliveryResult]:
        try:
            return await transport.send_many(envelopes)
        finally:
            await transport.aclose()

    return asyncio.run(run())


def _dkimpy(message: bytes, public_keys: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return public_keys.get(name.decode().rstrip("."), "").encode()

    def verify(index: int) -> bool:
        try:
            return bool(dkim.DKIM(message).verify(index, dnsfunc=dnsfunc))
        except dkim.DKIMException:  # what dkim.verify() reports as False
            return False

    count = message.split(b"\n\n", 1)[0].count(b"DKIM-Signature:")
    return [verify(index) for index in range(count)]


# --- Postfix: delivery, signatures, MIME --------------------------------------------------------


@pytest.fixture(scope="module")
def delivered(postfix_server: PostfixServer, signer: MultiSigner) -> tuple[DeliveryResult, bytes]:
    """One message sent through SmtpTransport to Postfix, and the file its Maildir holds."""
    results = _send(postfix_server.port, [_envelope(signer, 1, "ana.maria@mta.test")])
    stored = postfix_server.wait_for_messages("ana.maria", 1)
    return results[0], stored[0]


def test_postfix_accepts_and_stores_the_message(
    delivered: tuple[DeliveryResult, bytes], postfix_server: PostfixServer
) -> None:
    result, stored = delivered
    assert result.status is DeliveryStatus.ACCEPTED, result
    assert result.code == 250
    assert result.provider_id and result.provider_id in stored.decode()  # Postfix's queue id
    assert stored.startswith(b"Return-Path: <bounces+m1@bounce.test>\n")
    assert b"\nReceived: from worker.news.test" in stored


def test_both_signatures_pass_opendkim_on_the_stored_message(
    delivered: tuple[DeliveryResult, bytes],
    public_keys: dict[str, str],
    opendkim: OpendkimVerifier,
) -> None:
    results = opendkim(delivered[1], public_keys)
    assert [(r.result, r.algorithm, r.domain) for r in results] == [
        ("pass", "rsa-sha256", DOMAIN),
        ("pass", "ed25519-sha256", DOMAIN),
    ], [str(r) for r in results]
    assert {r.selector for r in results} == {name.split(".", 1)[0] for name in public_keys}


@pytest.mark.usefixtures("dkimpy_ed25519")
def test_both_signatures_pass_dkimpy_on_the_stored_message(
    delivered: tuple[DeliveryResult, bytes], public_keys: dict[str, str]
) -> None:
    assert _dkimpy(delivered[1], public_keys) == [True, True]


def _change_body(message: bytes) -> bytes:
    original = b"La recepci=C3=B3n de propuestas"
    assert original in message, "the body text to change is not where the test expects it"
    return message.replace(original, b"La recepci=C3=B3n de denuncias", 1)


def _change_subject(message: bytes) -> bytes:
    changed, count = re.subn(
        rb"^Subject: \S+", b"Subject: =?utf-8?q?Aviso_falso?=", message, count=1, flags=re.M
    )
    assert count == 1
    return changed


@pytest.mark.parametrize("change", [_change_body, _change_subject], ids=["body", "subject"])
@pytest.mark.usefixtures("dkimpy_ed25519")
def test_a_message_changed_after_signing_fails_both_verifiers(
    delivered: tuple[DeliveryResult, bytes],
    public_keys: dict[str, str],
    opendkim: OpendkimVerifier,
    change: Callable[[bytes], bytes],
) -> None:
    tampered = change(delivered[1])
    assert tampered != delivered[1]
    results = opendkim(tampered, public_keys)
    assert len(results) == 2
    assert not any(r.passed for r in results), [str(r) for r in results]
    assert {r.result for r in results} == {"fail"}
    assert _dkimpy(tampered, public_keys) == [False, False]


def test_opendkim_reports_an_unsigned_message_as_such(
    public_keys: dict[str, str], opendkim: OpendkimVerifier
) -> None:
    unsigned = assemble(
        HEADERS,
        to_email="ana@mta.test",
        to_name=None,
        subject="Sin firma",
        html="<p>hola</p>",
        text="hola",
        message_id=new_message_id(DOMAIN),
        date=dt.datetime.now(dt.UTC),
    )
    assert opendkim(unsigned, public_keys) == []


def test_the_stored_message_reads_back_as_sent(delivered: tuple[DeliveryResult, bytes]) -> None:
    message = email.message_from_bytes(delivered[1], policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == SUBJECT
    assert str(message["To"]) == "José Núñez Ñahui <ana.maria@mta.test>"
    assert str(message["From"]) == f"Municipalidad de Lima — Logística <boletin@{DOMAIN}>"
    assert message.get_content_type() == "multipart/alternative"
    assert not message.defects
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == TEXT
    assert html.get_content().rstrip("\n") == HTML
    assert max(len(line) for line in delivered[1].split(b"\n")) <= 998


# --- Postfix: refusals at RCPT --------------------------------------------------------------------


def test_recipient_refusals_become_results(
    postfix_server: PostfixServer, signer: MultiSigner
) -> None:
    envelopes = [
        _envelope(signer, 10, "reject-luis@mta.test"),
        _envelope(signer, 11, "defer-rosa@mta.test"),
        _envelope(signer, 12, "full-pedro@mta.test"),
        _envelope(signer, 13, "carmen@mta.test"),
    ]
    rejected, deferred, full, accepted = _send(postfix_server.port, envelopes, max_connections=1)

    assert rejected.status is DeliveryStatus.REJECTED
    assert rejected.code == 550
    assert rejected.text.startswith("RCPT: "), rejected.text
    assert "5.1.1" in rejected.text and "User unknown" in rejected.text

    assert deferred.status is DeliveryStatus.DEFERRED
    assert deferred.code == 450
    assert deferred.text.startswith("RCPT: ") and "Try again later" in deferred.text
    assert deferred.retry_at is not None

    assert full.status is DeliveryStatus.DEFERRED
    assert full.code == 452
    assert full.text.startswith("RCPT: ") and "Mailbox full" in full.text

    # The refusals left the connection usable for the next transaction.
    assert accepted.status is DeliveryStatus.ACCEPTED, accepted
    assert len(postfix_server.wait_for_messages("carmen", 1)) == 1
    assert postfix_server.messages("reject-luis") == []


# --- Postfix: real DSNs to the VERP return path ---------------------------------------------------


def _dsn_for(receiver: SmtpReceiver, verp: str) -> tuple[ReceivedMessage, EmailMessage]:
    received = receiver.wait_for(lambda message: verp in message.rcpt_tos, timeout=15)
    dsn = email.message_from_bytes(received.data, policy=email.policy.default)
    assert isinstance(dsn, EmailMessage)
    return received, dsn


def _delivery_status(dsn: EmailMessage) -> str:
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = {part.get_content_type(): part for part in dsn.iter_parts()}
    status = parts["message/delivery-status"]
    # The per-recipient fields, as text (the stdlib parses them as header blocks).
    return "\n".join(str(block) for block in status.get_payload())


def test_a_recipient_the_next_hop_rejects_produces_a_dsn_to_the_verp_address(
    postfix_server: PostfixServer, dsn_receiver: SmtpReceiver, signer: MultiSigner
) -> None:
    envelope = _envelope(signer, 20, "bounce-julio@mta.test")
    (result,) = _send(postfix_server.port, [envelope])
    assert result.status is DeliveryStatus.ACCEPTED  # Postfix took it; the next hop refuses

    received, dsn = _dsn_for(dsn_receiver, envelope.mail_from)
    assert received.mail_from == ""  # a DSN has the null return path
    assert received.rcpt_tos == [envelope.mail_from]
    fields = _delivery_status(dsn)
    assert "Final-Recipient: rfc822; bounce-julio@mta.test" in fields
    assert "Action: failed" in fields
    assert "Status: 5.1.1" in fields
    assert "550 5.1.1 User unknown" in fields  # the sink's reply, as Diagnostic-Code
    message_id = email.message_from_bytes(envelope.data)["Message-ID"]
    assert message_id in received.data.decode()  # the original's headers come back


def test_a_recipient_deferred_past_the_queue_lifetime_produces_a_dsn(
    postfix_server: PostfixServer, dsn_receiver: SmtpReceiver, signer: MultiSigner
) -> None:
    envelope = _envelope(signer, 21, "delay-marta@mta.test")
    (result,) = _send(postfix_server.port, [envelope])
    assert result.status is DeliveryStatus.ACCEPTED

    received, dsn = _dsn_for(dsn_receiver, envelope.mail_from)
    assert received.mail_from == ""
    fields = _delivery_status(dsn)
    assert "Final-Recipient: rfc822; delay-marta@mta.test" in fields
    assert "Action: failed" in fields
    assert "Status: 4.2.0" in fields
    assert "450 4.2.0 Try again later" in fields


# --- smtp-sink ------------------------------------------------------------------------------------


def test_a_batch_of_200_is_accepted_and_counted_at_the_sink(
    smtp_sink_factory: SinkFactory, signer: MultiSigner
) -> None:
    sink = smtp_sink_factory()
    envelopes = [_envelope(signer, index, f"vecino{index}@mta.test") for index in range(200)]
    results = _send(sink.port, envelopes)
    assert [result.status for result in results] == [DeliveryStatus.ACCEPTED] * 200
    assert [result.message_id for result in results] == list(range(200))
    assert sink.wait_for(200) == 200


def test_the_sink_keeps_what_it_received(
    smtp_sink: SmtpSink,
    signer: MultiSigner,
    public_keys: dict[str, str],
    opendkim: OpendkimVerifier,
) -> None:
    envelope = _envelope(signer, 30, "rosa@mta.test")
    (result,) = _send(smtp_sink.port, [envelope])
    assert result.status is DeliveryStatus.ACCEPTED
    assert smtp_sink.wait_for(1) == 1
    (kept,) = smtp_sink.messages()
    assert kept.mail_from == envelope.mail_from
    assert kept.rcpt_tos == [envelope.rcpt_to]
    assert kept.data == envelope.data.replace(b"\r\n", b"\n")
    results = opendkim(kept.data, public_keys)
    assert len(results) == 2 and all(r.passed for r in results), [str(r) for r in results]


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("reject", DeliveryStatus.REJECTED, 550),
        ("defer", DeliveryStatus.DEFERRED, 450),
    ],
)
def test_a_sink_refusing_every_rcpt(
    smtp_sink_factory: SinkFactory,
    signer: MultiSigner,
    mode: str,
    status: DeliveryStatus,
    code: int,
) -> None:
    sink = smtp_sink_factory(**{mode: ("RCPT",)})
    envelopes = [_envelope(signer, index, f"vecino{index}@mta.test") for index in range(5)]
    results = _send(sink.port, envelopes, max_connections=2)
    assert [result.status for result in results] == [status] * 5
    assert {result.code for result in results} == {code}
    assert all(result.text.startswith("RCPT: ") for result in results), results
    assert sink.received == 0


@pytest.mark.usefixtures("postfix_available")
def test_stopping_the_peers_leaves_no_process_behind() -> None:
    with SmtpSink() as sink:
        process = sink.process
        assert process is not None and process.poll() is None
    assert process.poll() is not None
    server = PostfixServer().start()
    master = server.master_pid
    assert master is not None and process_running(master)
    server.stop()
    assert not process_running(master)
