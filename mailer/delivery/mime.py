"""MIME assembly: the wire bytes of one campaign message, built directly, without email.message.

A campaign sends the same headers and nearly the same body to many recipients, so the work
is split in two: :class:`MessageHeaders` encodes what is constant (From, Reply-To, the
extra headers) once per campaign; :func:`assemble` adds what changes per recipient (To,
Subject, Message-ID, Date, List-Unsubscribe, the two bodies) with plain bytes operations.

The result follows RFC 5322 / 2045-2047: CRLF line endings; header lines folded at 78
characters where possible and never beyond 998; non-ASCII header text as RFC 2047
encoded-words; a ``multipart/alternative`` body with a text/plain and a text/html part,
both UTF-8 and quoted-printable (so every body line is at most 76 characters and the
message is 7-bit clean, except for an address whose local part is not ASCII, which needs
SMTPUTF8).  DKIM signing and sending live in ``dkim.py`` and ``smtp.py``.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from mailer.core.errors import ValidationFailed

__all__ = ["MessageHeaders", "assemble", "new_message_id"]

CRLF = "\r\n"
MAX_LINE = 78  # RFC 5322 §2.1.1: SHOULD
HARD_MAX_LINE = 998  # RFC 5322 §2.1.1: MUST
MAX_ENCODED_WORD = 75  # RFC 2047 §2
ENCODED_WORD_LINE = 76  # RFC 2047 §2: a line holding encoded-words
MIN_FIRST_WORD = 24  # an encoded-word carrying at least a few characters
MAX_ADDRESS = 320  # RFC 5321 §4.5.3.1: 64 for the local part, 255 for the domain

# Headers assemble() writes itself; callers may not add a second copy.
GENERATED_HEADERS = frozenset(
    {
        "date",
        "from",
        "reply-to",
        "to",
        "subject",
        "message-id",
        "mime-version",
        "list-unsubscribe",
        "content-type",
        "content-transfer-encoding",
    }
)

_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext
_UNSAFE_TEXT = re.compile(r"[^\t -~]|=\?")  # needs encoded-words (or looks like one)
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+\Z")  # atext and spaces
_ADDRESS = re.compile(r"[^\s<>,;:\"()\[\]\\@]+@[^\s<>,;:\"()\[\]\\@]+\Z")
_FOLD_TOKEN = re.compile(r"[ \t]*[^ \t]+|[ \t]+\Z")

# RFC 2047 §5(3): the characters a "Q" encoded-word may carry literally in a phrase;
# §5(1): in unstructured text (Subject) any printable ASCII but "=", "?" and "_".
_Q_PHRASE_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
_Q_PHRASE = {chr(c): chr(c) if chr(c) in _Q_PHRASE_LITERAL else f"={c:02X}" for c in range(128)}
_Q_TEXT = {
    chr(c): chr(c) if 32 < c < 127 and chr(c) not in "=?_" else f"={c:02X}" for c in range(128)
}
_Q_PHRASE[" "] = _Q_TEXT[" "] = "_"

_QP_UTF8 = b"; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
_TEXT_PART_HEADERS = b"Content-Type: text/plain" + _QP_UTF8
_HTML_PART_HEADERS = b"Content-Type: text/html" + _QP_UTF8


@dataclass(frozen=True)
class MessageHeaders:
    """The headers that are the same for every message of a campaign, encoded once.

    ``extra`` holds further constant headers, in order, such as
    ``("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")`` or ``("X-Campaign", "42")``.
    Invalid input (a bad address, a CR or LF in a value, a header that :func:`assemble`
    writes itself) raises :class:`ValidationFailed` here, at campaign start.
    """

    from_name: str
    from_email: str
    reply_to: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    _sender_lines: bytes = field(init=False, repr=False, compare=False)
    _extra_lines: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sender = _address_header("From", self.from_name, self.from_email)
        if self.reply_to is not None:
            sender += _address_header("Reply-To", None, self.reply_to)
        _check_header_names(name for name, _ in self.extra)
        extra = "".join(_unstructured_header(name, value) for name, value in self.extra)
        object.__setattr__(self, "_sender_lines", sender.encode())
        object.__setattr__(self, "_extra_lines", extra.encode())


def new_message_id(domain: str) -> str:
    """A new globally unique Message-ID for *domain*, without the angle brackets."""
    message_id = f"{uuid.uuid4().hex}@{_ascii_domain(domain)}"
    if not _ADDRESS.match(message_id):
        raise ValidationFailed(f"invalid Message-ID domain: {domain!r}", field="domain")
    return message_id


def assemble(
    headers: MessageHeaders,
    *,
    to_email: str,
    to_name: str | None,
    subject: str,
    html: str,
    text: str,
    message_id: str,
    date: datetime,
    list_unsubscribe: str | None = None,
    per_message_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The complete message (headers and multipart/alternative body) as wire bytes.

    ``message_id`` may be given with or without its angle brackets.  ``list_unsubscribe``
    is the header value (``<https://...>, <mailto:...>``); a bare URI is put in brackets.
    A naive ``date`` is taken as UTC.  Line breaks in ``text`` and ``html`` may be LF,
    CRLF or CR; they go out as CRLF.
    """
    message_id = message_id.removeprefix("<").removesuffix(">")
    if not _ADDRESS.match(message_id) or len(message_id) > MAX_ADDRESS:
        raise ValidationFailed(f"invalid Message-ID: {message_id!r}", field="message_id")
    if date.tzinfo is None:
        date = date.replace(tzinfo=UTC)
    variable = [
        _address_header("To", to_name, to_email),
        _unstructured_header("Subject", subject),
        f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n",
    ]
    if list_unsubscribe is not None:
        if not list_unsubscribe.startswith("<"):
            list_unsubscribe = f"<{list_unsubscribe}>"
        variable.append(_structured_header("List-Unsubscribe", list_unsubscribe))
    per_message = ""
    if per_message_headers:
        _check_header_names(name for name, _ in per_message_headers)
        per_message = "".join(_unstructured_header(n, v) for n, v in per_message_headers)
    # Quoted-printable never contains "=_", so this boundary cannot occur in either part.
    boundary = "=_" + hashlib.blake2b(message_id.encode(), digest_size=12).hexdigest()
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(
        (
            f"Date: {format_datetime(date)}\r\n".encode(),
            headers._sender_lines,
            "".join(variable).encode(),
            headers._extra_lines,
            per_message.encode(),
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'.encode(),
            delimiter,
            _TEXT_PART_HEADERS,
            _quoted_printable(text, "text"),
            b"\r\n",
            delimiter,
            _HTML_PART_HEADERS,
            _quoted_printable(html, "html"),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )


# -- bodies -------------------------------------------------------------------------------


def _quoted_printable(content: str, field_name: str) -> bytes:
    """*content* as UTF-8 quoted-printable with CRLF line ends (binascii does the work in C)."""
    try:
        data = content.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValidationFailed(
            f"{field_name} is not valid Unicode: {exc}", field=field_name
        ) from exc
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    # Quoted-printable is line-local (a hard line break ends every soft-wrapped line), and
    # most lines of a campaign's message are the same for every recipient: each line is
    # encoded once and looked up after.
    cache = _QP_LINES
    if len(cache) > _QP_CACHE_LIMIT:
        cache.clear()
    out = []
    for line in data.split(b"\n"):
        encoded = cache.get(line)
        if encoded is None:
            encoded = cache[line] = _qp_line(line)
        out.append(encoded)
    return b"\r\n".join(out)


_QP_LINES: dict[bytes, bytes] = {}
_QP_CACHE_LIMIT = 100_000  # lines (a few MB); cleared when full


_QP_UNSAFE = re.compile(rb"[^\t -~]")  # anything but tab and printable ASCII


def _qp_line(line: bytes) -> bytes:
    """One line (no line break in it) as quoted-printable, soft-wrapped with CRLF.

    Printable ASCII (most of an HTML message) only needs its "=" escaped, its trailing
    white space encoded and long lines wrapped, which bytes methods do several times faster
    than ``binascii.b2a_qp`` (18 ns a byte); anything else goes to ``b2a_qp``.
    """
    if not _QP_UNSAFE.search(line):
        return _qp_printable(line)
    encoded = binascii.b2a_qp(line, istext=True)
    if (
        encoded.startswith(b"From ")
        or b"\nFrom " in encoded
        or _ENCODED_TRAILING_WSP.search(encoded)
        or encoded.endswith((b"=20", b"=09"))
    ):
        encoded = _repair_lines(encoded)
    return encoded.replace(b"\n", b"\r\n")


def _qp_printable(line: bytes) -> bytes:
    """Quoted-printable of a line of printable ASCII and tabs (see :func:`_qp_line`)."""
    encoded = line.replace(b"=", b"=3D") if b"=" in line else line
    if encoded.endswith((b" ", b"\t")):  # white space before a hard line break is lost
        encoded = encoded[:-1] + (b"=20" if encoded[-1:] == b" " else b"=09")
    out = []
    while True:
        if encoded.startswith(b"From "):  # mbox stores would mangle it to ">From "
            encoded = b"=46" + encoded[1:]
        if len(encoded) <= 76:
            out.append(encoded)
            return b"=\r\n".join(out)
        cut = 75
        if encoded[cut - 1 : cut] == b"=":  # never cut an "=XX" escape
            cut -= 1
        elif encoded[cut - 2 : cut - 1] == b"=":
            cut -= 2
        out.append(encoded[:cut])
        encoded = encoded[cut:]


# binascii.b2a_qp does not count an encoded trailing space or tab ("=20", "=09") against
# the 76-character limit: such lines can reach 78.
_ENCODED_TRAILING_WSP = re.compile(rb"=(?:20|09)\n")


def _repair_lines(encoded: bytes) -> bytes:
    """Re-wrap lines longer than 76 characters and encode the F of lines starting "From "
    (mbox stores would mangle them to ">From "), never cutting an ``=XX`` escape.

    Both are rare, so this goes line by line.
    """
    out: list[bytes] = []
    for line in encoded.split(b"\n"):
        pending = [line]
        while pending:
            current = pending.pop()
            if current.startswith(b"From "):
                current = b"=46" + current[1:]
            if len(current) <= 76:
                out.append(current)
                continue
            soft = current.endswith(b"=")  # an escape ends in a hex digit, never in "="
            content = current[:-1] if soft else current
            cut = 75
            if content[cut - 1 : cut] == b"=":
                cut -= 1
            elif content[cut - 2 : cut - 1] == b"=":
                cut -= 2
            out.append(content[:cut] + b"=")
            pending.append(content[cut:] + (b"=" if soft else b""))
    return b"\n".join(out)


# -- headers ------------------------------------------------------------------------------


def _check_header_names(names: Iterable[str]) -> None:
    for name in names:
        if not _HEADER_NAME.match(name):
            raise ValidationFailed(f"invalid header name: {name!r}", field="headers")
        if name.lower() in GENERATED_HEADERS:
            raise ValidationFailed(f"header {name!r} is written by assemble()", field="headers")


def _check_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValidationFailed(f"{name} header contains a line break", field=name.lower())


def _unstructured_header(name: str, value: str) -> str:
    """``Name: value`` folded; as encoded-words when not plain printable ASCII."""
    _check_value(name, value)
    prefix = f"{name}: "
    if not _UNSAFE_TEXT.search(value):
        if len(prefix) + len(value) <= MAX_LINE:
            return f"{prefix}{value}\r\n"
        folded = _fold(prefix, value)
        if folded is not None and max(map(len, folded.split(CRLF))) <= MAX_LINE:
            return folded
        # A word too long for one line: encoded-words can be cut anywhere.
    first_room = ENCODED_WORD_LINE - len(prefix)
    if first_room < MIN_FIRST_WORD:  # a very long header name: start on the next line
        prefix, first_room = f"{name}:\r\n ", MAX_ENCODED_WORD
    return prefix + "\r\n ".join(_encoded_words(value, first_room)) + CRLF


def _structured_header(name: str, value: str) -> str:
    """A header that must stay literal ASCII (URIs): folded at whitespace, else refused."""
    _check_value(name, value)
    if not value.isascii():
        raise ValidationFailed(f"{name} must be ASCII (encode the URI)", field=name.lower())
    folded = _fold(f"{name}: ", value)
    if folded is None:
        raise ValidationFailed(f"{name} has a part longer than 998 characters", field=name.lower())
    return folded


def _fold(prefix: str, value: str, *, limit: int = MAX_LINE) -> str | None:
    """Fold before whitespace so lines stay within *limit* characters where the words
    allow; None if a single word would push a line past 998."""
    tokens = _FOLD_TOKEN.findall(value)
    if len(tokens) > 1 and not tokens[-1].strip():
        tokens[-2:] = [tokens[-2] + tokens[-1]]  # never leave a whitespace-only line
    lines: list[str] = []
    current = prefix
    for token in tokens:
        if len(current) + len(token) > limit and current != prefix:
            lines.append(current)
            current = token
        else:
            current += token
    lines.append(current)
    if any(len(line) > HARD_MAX_LINE for line in lines):
        return None
    return CRLF.join(lines) + CRLF


def _address_header(name: str, display_name: str | None, address: str) -> str:
    _check_value(name, address)
    address = _normalise_address(name, address)
    if not display_name:
        return f"{name}: {address}\r\n"
    _check_value(name, display_name)
    if _UNSAFE_TEXT.search(display_name):
        tokens = _encoded_phrase(display_name, ENCODED_WORD_LINE - len(name) - 2)
        tokens.append(f"<{address}>")
        folded = _fold(f"{name}: ", " ".join(tokens), limit=ENCODED_WORD_LINE)
        assert folded is not None  # every token is shorter than 76 characters
        return folded
    if _ATOM_PHRASE.match(display_name):
        phrase = display_name
    else:
        phrase = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    folded = _fold(f"{name}: ", f"{phrase} <{address}>")
    if folded is None:
        raise ValidationFailed(f"{name} display name is too long", field=name.lower())
    return folded


def _normalise_address(name: str, address: str) -> str:
    """Check an addr-spec; a non-ASCII domain goes out as IDNA, a non-ASCII local part
    stays UTF-8 (RFC 6532; the relay must offer SMTPUTF8)."""
    if not _ADDRESS.match(address) or len(address) > MAX_ADDRESS:
        raise ValidationFailed(f"invalid {name} address: {address!r}", field=name.lower())
    local, _, domain = address.rpartition("@")
    if not domain.isascii():
        domain = _ascii_domain(domain)
        address = f"{local}@{domain}"
    return address


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationFailed(f"invalid domain {domain!r}: {exc}", field="domain") from exc


def _encoded_phrase(display_name: str, max_word: int) -> list[str]:
    """A display name as phrase tokens: plain atoms stay literal, each run of words that
    need encoding becomes encoded-words of at most *max_word* characters.

    Encoding word runs rather than the whole name keeps the whitespace between a plain
    word and an encoded one significant, as RFC 2047 §6.2 wants; it also sidesteps the
    stdlib parser, which wrongly inserts a space between adjacent encoded-words in a
    phrase.  Only a run longer than one encoded-word is split between encoded-words.
    """
    tokens: list[str] = []
    run: list[str] = []
    for word in display_name.split():
        if _ATOM_PHRASE.match(word) and "=?" not in word:
            if run:
                tokens.extend(_encoded_words(" ".join(run), max_word, max_word, phrase=True))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens.extend(_encoded_words(" ".join(run), max_word, max_word, phrase=True))
    return tokens


def _encoded_words(
    value: str, first_room: int, room: int = MAX_ENCODED_WORD, *, phrase: bool = False
) -> list[str]:
    """RFC 2047 encoded-words for *value*, each holding whole characters.

    The first word fits in *first_room* characters, the others in *room* (both at most
    75 and at least 24).  Words are cut after a space where possible, inside a word only
    when it does not fit alone.  "Q" is chosen when it is shorter than "B" (mostly-Latin
    text such as Spanish), "B" otherwise.  In a *phrase* (display name) "Q" keeps fewer
    characters literal.
    """
    table = _Q_PHRASE if phrase else _Q_TEXT

    def q(text: str) -> str:
        return "".join([table.get(ch) or _q_char(ch) for ch in text])

    try:
        raw_len = len(value.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValidationFailed(f"header text is not valid Unicode: {exc}", field="headers") from exc
    if len(q(value)) <= -(-raw_len // 3) * 4:
        opener, encode = "=?utf-8?q?", q
    else:
        opener, encode = "=?utf-8?b?", _b
    words: list[str] = []
    limit = first_room - _OVERHEAD
    current = ""
    for token in _WORD_TOKEN.findall(value):
        if len(encode(current + token)) <= limit:
            current += token
            continue
        if current:
            words.append(f"{opener}{encode(current)}?=")
            limit, current = room - _OVERHEAD, ""
        while len(encode(token)) > limit:  # a word longer than a whole encoded-word
            cut = 1
            while len(encode(token[: cut + 1])) <= limit:
                cut += 1
            words.append(f"{opener}{encode(token[:cut])}?=")
            limit, token = room - _OVERHEAD, token[cut:]
        current = token
    words.append(f"{opener}{encode(current)}?=")
    return words


_OVERHEAD = len("=?utf-8?q?") + len("?=")
_WORD_TOKEN = re.compile(r"\S+\s*|\s+")


def _q_char(ch: str) -> str:
    return "".join(f"={byte:02X}" for byte in ch.encode())


def _b(text: str) -> str:
    return binascii.b2a_base64(text.encode(), newline=False).decode()
