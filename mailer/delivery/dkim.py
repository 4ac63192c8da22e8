"""DKIM signing (RFC 6376) with relaxed/relaxed canonicalisation, at OpenSSL speed.

A :class:`DkimSigner` is built once per campaign (the key is parsed once) and signs each
message's wire bytes: it canonicalises the body and the chosen header fields itself (RFC 6376
§3.4.2 and §3.4.4) and signs with ``cryptography``: ``rsa-sha256`` (PKCS#1 v1.5) or
``ed25519-sha256`` (RFC 8463).  :class:`MultiSigner` adds several signatures (typically RSA
and Ed25519) while canonicalising the message once.

Also here: key generation and the DNS records a sending domain publishes (DKIM, SPF,
DMARC).  Where keys are stored and how domains are managed is ``domains.py``'s business.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailer.core.errors import ConfigError, ValidationFailed

__all__ = [
    "DEFAULT_OVERSIGNED_HEADERS",
    "DEFAULT_SIGNED_HEADERS",
    "DkimSigner",
    "MultiSigner",
    "dns_records",
    "dns_txt_value",
    "generate_ed25519_key",
    "generate_rsa_key",
]

# Signed when present, in this order.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)
# Named once more than they occur, so that a copy added in transit (a second From, a
# forged Reply-To or List-Unsubscribe) breaks the signature (RFC 6376 §8.15).
DEFAULT_OVERSIGNED_HEADERS: tuple[str, ...] = DEFAULT_SIGNED_HEADERS

MIN_RSA_BITS = 1024  # RFC 8301 §3.2
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_SPACE_RUN = re.compile(rb"  +")  # a literal prefix: much faster to scan than [ \t]+
_HEADER_WSP = re.compile(rb"[ \t]+")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FOLD_WIDTH = 76

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class _Canonical:
    """A message prepared for signing: normalised wire bytes, header fields, body hash."""

    message: bytes
    fields: dict[bytes, list[bytes]]  # lower-cased name -> raw values, top to bottom
    body_hash: str


class DkimSigner:
    """Signs messages for one domain and selector with one RSA or Ed25519 key."""

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key: PrivateKey,
        *,
        signed_headers: Iterable[str] = DEFAULT_SIGNED_HEADERS,
        oversigned_headers: Iterable[str] = DEFAULT_OVERSIGNED_HEADERS,
        expire_seconds: int | None = None,
    ) -> None:
        self.domain = _dns_name(domain, "domain")
        self.selector = _dns_name(selector, "selector")
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < MIN_RSA_BITS:
                raise ConfigError(
                    f"DKIM RSA key of {private_key.key_size} bits is too short "
                    f"(at least {MIN_RSA_BITS}, 2048 recommended)",
                    field="dkim_key",
                )
            self.algorithm = "rsa-sha256"
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
        else:
            raise ConfigError("DKIM keys must be RSA or Ed25519", field="dkim_key")
        self._key = private_key
        self.signed_headers = tuple(name.lower() for name in signed_headers)
        if "from" not in self.signed_headers:
            raise ConfigError("DKIM must sign the From header (RFC 6376 §5.4)", field="headers")
        self.oversigned_headers = frozenset(name.lower() for name in oversigned_headers)
        self.expire_seconds = expire_seconds
        self._header_prefix = f"v=1; a={self.algorithm}; c=relaxed/relaxed; d={self.domain};"

    @classmethod
    def from_pem(
        cls,
        domain: str,
        selector: str,
        private_pem: bytes,
        *,
        password: bytes | None = None,
        signed_headers: Iterable[str] = DEFAULT_SIGNED_HEADERS,
        oversigned_headers: Iterable[str] = DEFAULT_OVERSIGNED_HEADERS,
        expire_seconds: int | None = None,
    ) -> DkimSigner:
        """A signer from a PEM private key (PKCS#8 or traditional RSA; RSA or Ed25519)."""
        return cls(
            domain,
            selector,
            _load_private_key(private_pem, password),
            signed_headers=signed_headers,
            oversigned_headers=oversigned_headers,
            expire_seconds=expire_seconds,
        )

    @property
    def dns_name(self) -> str:
        """Where the public key is published: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """*message* (its wire bytes) with a ``DKIM-Signature`` header prepended.

        Line endings are normalised to CRLF and a final CRLF is added if missing, as an
        SMTP client does on the wire, so what is signed is what is sent.
        """
        canonical = _canonicalise(message)
        return self._signature_field(canonical, timestamp) + canonical.message

    def _signature_field(self, canonical: _Canonical, timestamp: int | None) -> bytes:
        names: list[str] = []
        signed: list[bytes] = []
        for name in self.signed_headers:
            values = canonical.fields.get(name.encode())
            if not values:
                continue
            for value in reversed(values):  # RFC 6376 §5.4.2: the last instance first
                names.append(name)
                signed.append(b"%s:%s" % (name.encode(), _relaxed_value(value)))
            if name in self.oversigned_headers:
                names.append(name)
        if "from" not in names:
            raise ValidationFailed("cannot DKIM-sign a message without From", field="message")
        now = int(time.time()) if timestamp is None else timestamp
        tags = [f"s={self.selector};", f"t={now};"]
        if self.expire_seconds is not None:
            tags.append(f"x={now + self.expire_seconds};")
        unsigned = _fold_tags(
            f"DKIM-Signature: {self._header_prefix}",
            [*tags, *_fold_header_list(names), f"bh={canonical.body_hash};", "b="],
        )
        value = unsigned.encode()[len("DKIM-Signature:") :]
        # RFC 6376 §3.7: the signature field itself is hashed without its final CRLF.
        signed.append(b"dkim-signature:" + _relaxed_value(value)[:-2])
        signature = self._sign_bytes(b"".join(signed))
        folded = _fold_base64(signature, _last_line_length(unsigned))
        return f"{unsigned}{folded}\r\n".encode()

    def _sign_bytes(self, data: bytes) -> str:
        if isinstance(self._key, rsa.RSAPrivateKey):
            raw = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:  # RFC 8463 §3: Ed25519 signs the SHA-256 digest
            raw = self._key.sign(hashlib.sha256(data).digest())
        return base64.b64encode(raw).decode()


class MultiSigner:
    """Several DKIM signatures on one message (e.g. RSA and Ed25519, RFC 8463 §4),
    canonicalising the message once."""

    def __init__(self, signers: Sequence[DkimSigner]) -> None:
        if not signers:
            raise ConfigError("MultiSigner needs at least one signer", field="dkim_key")
        self.signers = tuple(signers)

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        canonical = _canonicalise(message)
        now = int(time.time()) if timestamp is None else timestamp
        fields = [signer._signature_field(canonical, now) for signer in self.signers]
        return b"".join(fields) + canonical.message


# -- canonicalisation (RFC 6376 §3.4.2, §3.4.4) -------------------------------------------


def _canonicalise(message: bytes) -> _Canonical:
    # A bare CR or LF would be turned into CRLF by the SMTP client after signing.
    line_ends = message.count(b"\n")
    if line_ends != message.count(b"\r") or line_ends != message.count(b"\r\n"):
        message = _LINE_END.sub(b"\r\n", message)
    end = message.find(b"\r\n\r\n")
    if end == -1:  # headers only, no body
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
        header_block, body = message[:-2], b""
    else:
        header_block, body = message[:end], message[end + 4 :]
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
            message += b"\r\n"
    return _Canonical(message, _header_fields(header_block), _body_hash(body))


def _header_fields(header_block: bytes) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current[-1] += b"\r\n" + line
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            current = None  # not a header field; leave it to the receiver to judge
            continue
        current = fields.setdefault(name.rstrip(b" \t").lower(), [])
        current.append(value)
    return fields


def _relaxed_value(value: bytes) -> bytes:
    """Relaxed header value: unfold, compress WSP to one SP, trim both ends (§3.4.2)."""
    return _HEADER_WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ") + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    """Relaxed body (§3.4.4) of a CRLF-normalised body: WSP runs become one SP, WSP at line
    ends goes, empty lines at the end go; a non-empty body ends with one CRLF."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    body = _SPACE_RUN.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _body_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()


# -- formatting ---------------------------------------------------------------------------


def _fold_header_list(names: list[str]) -> list[str]:
    """The ``h=`` tag as pieces to fold on (FWS is allowed around its colons)."""
    pieces = [f"h={names[0]}"]
    for name in names[1:]:
        pieces.append(f":{name}")
    pieces[-1] += ";"
    return pieces


def _fold_tags(first: str, pieces: list[str]) -> str:
    lines = [first]
    for piece in pieces:
        glue = "" if piece.startswith(":") else " "
        if len(lines[-1]) + len(glue) + len(piece) > _FOLD_WIDTH:
            lines.append("\t" + piece)
        else:
            lines[-1] += glue + piece
    return "\r\n".join(lines)


def _last_line_length(text: str) -> int:
    return len(text) - text.rfind("\n") - 1


def _fold_base64(value: str, used: int) -> str:
    """*value* continued on a line already *used* characters long, then on tab-led lines
    (the verifier drops the whole ``b=`` value, folding whitespace included)."""
    room = max(_FOLD_WIDTH - used, 0)
    step = _FOLD_WIDTH - 1
    chunks = [value[:room], *(value[i : i + step] for i in range(room, len(value), step))]
    return "\r\n\t".join(chunks)


# -- keys and DNS -------------------------------------------------------------------------


def generate_rsa_key(bits: int = 2048) -> bytes:
    """A new RSA private key, PEM PKCS#8, unencrypted."""
    if bits < MIN_RSA_BITS:
        raise ConfigError(f"RSA keys need at least {MIN_RSA_BITS} bits", field="bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _private_pem(key)


def generate_ed25519_key() -> bytes:
    """A new Ed25519 private key, PEM PKCS#8, unencrypted."""
    return _private_pem(ed25519.Ed25519PrivateKey.generate())


def dns_txt_value(private_pem: bytes) -> str:
    """The DKIM key record for *private_pem*: ``v=DKIM1; k=rsa; p=...`` (or ``k=ed25519``).

    An RSA-2048 record is longer than 255 characters: DNS providers split it into several
    strings of one TXT record, which DKIM verifiers join.
    """
    key = _load_private_key(private_pem, None)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def dns_records(
    domain: str, selector: str, private_pem: bytes, *, spf_include: str | None = None
) -> list[tuple[str, str, str]]:
    """(name, type, value) of the records a sending domain publishes: the DKIM key, SPF and
    a DMARC starting policy (monitor only, reports to ``dmarc@domain``, relaxed alignment).
    """
    domain = _dns_name(domain, "domain")
    selector = _dns_name(selector, "selector")
    spf = "v=spf1 mx ~all"
    if spf_include:
        spf = f"v=spf1 mx include:{_dns_name(spf_include, 'spf_include')} ~all"
    return [
        (f"{selector}._domainkey.{domain}", "TXT", dns_txt_value(private_pem)),
        (domain, "TXT", spf),
        (
            f"_dmarc.{domain}",
            "TXT",
            f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}; adkim=r; aspf=r",
        ),
    ]


def _private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(private_pem: bytes, password: bytes | None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"cannot read the DKIM private key: {exc}", field="dkim_key") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError("DKIM keys must be RSA or Ed25519", field="dkim_key")
    return key


def _dns_name(name: str, field_name: str) -> str:
    """An ASCII (IDNA) domain name, without a trailing dot, checked label by label."""
    candidate = name.strip().rstrip(".")
    try:
        candidate = candidate.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ConfigError(f"invalid {field_name}: {name!r}", field=field_name) from exc
    if not candidate or not all(_LABEL.match(label) for label in candidate.split(".")):
        raise ConfigError(f"invalid {field_name}: {name!r}", field=field_name)
    return candidate.lower()
