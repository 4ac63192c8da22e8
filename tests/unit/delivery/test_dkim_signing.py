"""DKIM: our signatures verify with dkimpy (an independent implementation), for RSA and
Ed25519, on assembled and on awkward messages; tampering breaks them."""

from __future__ import annotations

import base64
import re
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed

from mailer.core.errors import ConfigError, ValidationFailed
from mailer.delivery.dkim import (
    DkimSigner,
    MultiSigner,
    _relaxed_body,
    _relaxed_value,
    dns_records,
    dns_txt_value,
    generate_ed25519_key,
    generate_rsa_key,
)
from mailer.delivery.mime import MessageHeaders, assemble

DOMAIN = "munilima.gob.pe"
DnsFunc = Callable[..., bytes | None]


class _BadSignature(Exception):
    pass


class _VerifyKey:
    """PyNaCl's VerifyKey, as far as dkimpy uses it, on top of ``cryptography``."""

    def __init__(self, key: bytes, encoder: object = None) -> None:
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

    def verify(self, message: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise _BadSignature from exc
        return message


@pytest.fixture(autouse=True)
def _ed25519_for_dkimpy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """dkimpy verifies Ed25519 with PyNaCl, which is not a project dependency: give it a
    stand-in for its four names, backed by ``cryptography``.  The rest of dkimpy's
    verification (parsing, canonicalisation, hashing) is its own."""
    shim = types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=_VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=None),
        exceptions=types.SimpleNamespace(ValueError=ValueError, BadSignatureError=_BadSignature),
    )
    monkeypatch.setattr(dkim, "nacl", shim, raising=False)
    yield


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return generate_rsa_key()


@pytest.fixture(scope="module")
def ed_pem() -> bytes:
    return generate_ed25519_key()


@pytest.fixture(scope="module")
def dnsfunc(rsa_pem: bytes, ed_pem: bytes) -> DnsFunc:
    records = {
        f"rsa._domainkey.{DOMAIN}.".encode(): dns_txt_value(rsa_pem).encode(),
        f"ed._domainkey.{DOMAIN}.".encode(): dns_txt_value(ed_pem).encode(),
    }

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return lookup


@pytest.fixture(scope="module")
def rsa_signer(rsa_pem: bytes) -> DkimSigner:
    return DkimSigner.from_pem(DOMAIN, "rsa", rsa_pem)


@pytest.fixture(scope="module")
def ed_signer(ed_pem: bytes) -> DkimSigner:
    return DkimSigner.from_pem(DOMAIN, "ed", ed_pem)


def _campaign_message() -> bytes:
    headers = MessageHeaders(
        from_name="Municipalidad de Lima — Área de Logística",
        from_email=f"avisos@{DOMAIN}",
        reply_to=f"mesa@{DOMAIN}",
        extra=(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),),
    )
    return assemble(
        headers,
        to_email="juan.nunez@example.pe",
        to_name="Juan Núñez",
        subject="Comunicado: ¿Qué tal, señor Núñez? Plazo ñandú €",
        html="<p>Hola  señor\tNúñez</p>\n" * 400 + "<p>" + "x" * 500 + "</p>\n",
        text="Hola señor Núñez\n\nPlazo: 30 de noviembre   \n.\nFrom here\n",
        message_id=f"abc@{DOMAIN}",
        date=datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC),
        list_unsubscribe="<https://t.munilima.gob.pe/u/abc>",
    )


AWKWARD_MESSAGES = [
    pytest.param(
        b"From: Ana <ana@munilima.gob.pe>\r\n"
        b"To:   juan@example.pe  \r\n"
        b"Subject:\tHola\t \t mundo  \r\n  con  pliegue\r\n\ty otro\r\n"
        b"Date: Fri, 14 Mar 2025 15:09:26 +0000\r\n"
        b"\r\n"
        b"linea  con \t espacios  \r\n"
        b"\tsangria con tab\r\n"
        b"fin con espacios y tab \t\r\n"
        b"\r\n\r\n\r\n",
        id="tabs-trailing-spaces-folded-empty-lines",
    ),
    pytest.param(
        b"from: ana@munilima.gob.pe\r\nSUBJECT: mayusculas\r\nTo: a@example.pe\r\n"
        b"To: b@example.pe\r\n\r\nbody",
        id="case-duplicates-no-final-crlf",
    ),
    pytest.param(
        b"From: ana@munilima.gob.pe\r\nSubject: vacio\r\n\r\n",
        id="empty-body",
    ),
    pytest.param(
        b"From: ana@munilima.gob.pe\nSubject: solo LF\n\nlinea 1\nlinea 2 \n\n",
        id="lf-line-endings",
    ),
    pytest.param(
        b"From: ana@munilima.gob.pe\r\nSubject: solo espacios\r\n\r\n   \r\n\t\r\n",
        id="whitespace-only-body",
    ),
    pytest.param(
        b"From: ana@munilima.gob.pe\r\nSubject:x\r\n\r\n.\r\n..\r\nFrom x\r\n",
        id="no-space-after-colon-and-dots",
    ),
]


def test_rsa_signature_of_an_assembled_message_verifies(
    rsa_signer: DkimSigner, dnsfunc: DnsFunc
) -> None:
    signed = rsa_signer.sign(_campaign_message())
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_ed25519_signature_of_an_assembled_message_verifies(
    ed_signer: DkimSigner, dnsfunc: DnsFunc
) -> None:
    signed = ed_signer.sign(_campaign_message())
    assert b"a=ed25519-sha256;" in signed.split(b"\r\n")[0]
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_multi_signer_adds_both_signatures(
    rsa_signer: DkimSigner, ed_signer: DkimSigner, dnsfunc: DnsFunc
) -> None:
    signed = MultiSigner([rsa_signer, ed_signer]).sign(_campaign_message())
    assert signed.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(signed)
    assert verifier.verify(0, dnsfunc=dnsfunc)
    assert verifier.verify(1, dnsfunc=dnsfunc)


@pytest.mark.parametrize("message", AWKWARD_MESSAGES)
@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_awkward_messages_verify(
    message: bytes,
    selector: str,
    rsa_signer: DkimSigner,
    ed_signer: DkimSigner,
    dnsfunc: DnsFunc,
) -> None:
    signer = rsa_signer if selector == "rsa" else ed_signer
    signed = signer.sign(message)
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert b"\n" not in signed.replace(b"\r\n", b"")  # what is signed is what is sent


def test_relaxed_changes_in_transit_still_verify(rsa_signer: DkimSigner, dnsfunc: DnsFunc) -> None:
    signed = rsa_signer.sign(_campaign_message())
    header_end = signed.index(b"\r\n\r\n")
    reflowed = (
        signed[:header_end].replace(b"Subject: ", b"Subject:  \t ", 1)
        + signed[header_end:].replace(b"Hola", b"Hola  ", 3)
        + b"\r\n\r\n"
    )
    assert dkim.verify(reflowed, dnsfunc=dnsfunc)


@pytest.mark.parametrize("selector", ["rsa", "ed"])
def test_tampering_breaks_the_signature(
    selector: str, rsa_signer: DkimSigner, ed_signer: DkimSigner, dnsfunc: DnsFunc
) -> None:
    signer = rsa_signer if selector == "rsa" else ed_signer
    signed = signer.sign(_campaign_message())
    header_end = signed.index(b"\r\n\r\n")
    body_tampered = signed[:header_end] + signed[header_end:].replace(b"Hola", b"Hole", 1)
    subject_tampered = re.sub(rb"\r\nSubject: [^\r]*", b"\r\nSubject: =?utf-8?q?Oferta?=", signed)
    added_from = signed.replace(b"\r\nFrom: ", b"\r\nFrom: evil@example.com\r\nFrom: ", 1)
    added_reply_to = signed[:header_end] + b"\r\nReply-To: evil@example.com" + signed[header_end:]
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    for tampered in (body_tampered, subject_tampered, added_from, added_reply_to):
        assert tampered != signed
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_signature_header_fields(rsa_signer: DkimSigner) -> None:
    signed = rsa_signer.sign(_campaign_message(), timestamp=1_741_964_966)
    field_lines: list[bytes] = []
    for line in signed.split(b"\r\n"):
        if field_lines and not line[:1].isspace():
            break
        field_lines.append(line)
    assert all(len(line) <= 78 for line in field_lines)
    value = b"".join(field_lines).decode()
    tags = dict(
        (tag.strip().split("=", 1)[0], tag.strip().split("=", 1)[1])
        for tag in re.sub(r"\s+", "", value.partition(":")[2]).split(";")
        if tag.strip()
    )
    assert tags["d"] == DOMAIN
    assert tags["s"] == "rsa"
    assert tags["t"] == "1741964966"
    assert tags["c"] == "relaxed/relaxed"
    signed_names = tags["h"].split(":")
    assert signed_names.count("from") == 2  # oversigned
    assert {"to", "subject", "date", "message-id", "mime-version", "content-type"} <= set(
        signed_names
    )
    assert {"reply-to", "list-unsubscribe", "list-unsubscribe-post"} <= set(signed_names)
    assert "cc" not in signed_names  # only headers the message has
    assert len(base64.b64decode(tags["b"])) == 256


def test_expiry_tag(rsa_pem: bytes, dnsfunc: DnsFunc) -> None:
    signer = DkimSigner.from_pem(DOMAIN, "rsa", rsa_pem, expire_seconds=3600)
    signed = signer.sign(_campaign_message(), timestamp=2_000_000_000)
    assert b" x=2000003600;" in signed


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"a\r\n",
        b"a  b\t\tc \t \r\n\r\n",
        b" leading\r\n\ttab\r\n  \r\n",
        b"x\r\n \r\n\t\r\n",
        b"=20\r\n.\r\n..\r\n",
        b"a\r\n\r\nb\r\n\r\n\r\n",
    ],
)
def test_body_canonicalisation_matches_dkimpy(body: bytes) -> None:
    assert _relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize(
    "value",
    [b" plain", b"\t tabs\t and  spaces \t", b" folded\r\n  line\r\n\tthree ", b"", b"  "],
)
def test_header_canonicalisation_matches_dkimpy(value: bytes) -> None:
    [(_, expected)] = Relaxed.canonicalize_headers([(b"Subject", value)])
    assert _relaxed_value(value) == expected


def test_dns_txt_values(rsa_pem: bytes, ed_pem: bytes) -> None:
    rsa_txt = dns_txt_value(rsa_pem)
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(rsa_txt.split("p=")[1]))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    ed_txt = dns_txt_value(ed_pem)
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_txt.split("p=")[1])) == 32


def test_dns_records(rsa_pem: bytes) -> None:
    records = dns_records(DOMAIN, "m202503", rsa_pem)
    assert records == [
        (f"m202503._domainkey.{DOMAIN}", "TXT", dns_txt_value(rsa_pem)),
        (DOMAIN, "TXT", "v=spf1 mx ~all"),
        (
            f"_dmarc.{DOMAIN}",
            "TXT",
            f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}; adkim=r; aspf=r",
        ),
    ]
    with_include = dns_records(DOMAIN, "m202503", rsa_pem, spf_include="_spf.relay.pe")
    assert with_include[1] == (DOMAIN, "TXT", "v=spf1 mx include:_spf.relay.pe ~all")


def test_generated_keys_are_pkcs8_pem() -> None:
    assert generate_ed25519_key().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(generate_rsa_key(1024), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 1024


def test_traditional_rsa_pem_is_accepted(rsa_pem: bytes, dnsfunc: DnsFunc) -> None:
    key = serialization.load_pem_private_key(rsa_pem, password=None)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert traditional.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    signer = DkimSigner.from_pem(DOMAIN, "rsa", traditional)
    assert dkim.verify(signer.sign(_campaign_message()), dnsfunc=dnsfunc)


def test_bad_keys_and_names_are_config_errors(rsa_pem: bytes) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ConfigError):
        DkimSigner.from_pem(DOMAIN, "rsa", b"not a key")
    with pytest.raises(ConfigError):
        DkimSigner.from_pem(DOMAIN, "ec", ec_pem)
    with pytest.raises(ConfigError):
        generate_rsa_key(512)
    with pytest.raises(ConfigError):
        DkimSigner.from_pem("bad domain", "rsa", rsa_pem)
    with pytest.raises(ConfigError):
        DkimSigner.from_pem(DOMAIN, "sel;x=1", rsa_pem)
    with pytest.raises(ConfigError):
        DkimSigner.from_pem(DOMAIN, "rsa", rsa_pem, signed_headers=["subject"])
    with pytest.raises(ConfigError):
        MultiSigner([])


def test_message_without_from_is_refused(rsa_signer: DkimSigner) -> None:
    with pytest.raises(ValidationFailed):
        rsa_signer.sign(b"Subject: no from\r\n\r\nbody\r\n")


def test_dns_name(rsa_signer: DkimSigner) -> None:
    assert rsa_signer.dns_name == f"rsa._domainkey.{DOMAIN}"
