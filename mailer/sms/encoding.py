"""GSM 03.38 / UCS-2 encoding and exact segment counts for SMS.

Written in the project on purpose: the counts decide what a message costs, and libraries
get them wrong (characters counted instead of septets, escape pairs split across parts).

Rules (3GPP TS 23.038 and 23.040):

- **GSM-7** when every character is in the basic table or its extension table; an extension
  character (``^ { } \\ [ ~ ] | €`` and form feed) costs two septets (ESC + code).  One part
  holds 160 septets; a concatenated message holds 153 per part (the UDH takes the rest).
- **UCS-2** otherwise, counted in UTF-16 code units (a character outside the BMP, such as
  most emoji, costs two): 70 in one part, 67 per part when concatenated.
- A part never ends between the two septets of an escape pair or the two units of a
  surrogate pair, so the number of parts comes from packing, not from a division.

Payloads are what SMPP carries in ``short_message``: GSM-7 as *unpacked* septets, one per
byte (``data_coding`` 0, the SMSC default alphabet), UCS-2 as UTF-16-BE (``data_coding`` 8).
The UDH that numbers concatenated parts is added by the gateway, which owns the reference.

Not here: what a part costs in money (``accounts``), templates (``content``), and the
portal's live counter (a JavaScript twin built from :data:`GSM7_BASIC` and
:data:`GSM7_EXTENDED`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from mailer.core.errors import ValidationFailed

__all__ = [
    "DATA_CODING_GSM7",
    "DATA_CODING_UCS2",
    "GSM7_BASIC",
    "GSM7_EXTENDED",
    "MAX_PARTS",
    "Encoding",
    "MessageTooLong",
    "Saving",
    "Segment",
    "SegmentInfo",
    "analyse",
    "decode_gsm7",
    "decode_payload",
    "decode_ucs2",
    "encode_gsm7",
    "is_gsm7",
    "saving",
    "split",
    "to_gsm",
]

Encoding = Literal["gsm7", "ucs2"]

DATA_CODING_GSM7: Final = 0  # SMSC default alphabet (GSM 03.38), unpacked septets
DATA_CODING_UCS2: Final = 8  # UCS-2 / UTF-16-BE
MAX_PARTS: Final = 255  # the UDH numbers parts in one octet

GSM7_SINGLE: Final = 160
GSM7_MULTI: Final = 153
UCS2_SINGLE: Final = 70
UCS2_MULTI: Final = 67

_ESC: Final = 0x1B

GSM7_BASIC: Final[str] = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
"""The basic table: the character of septet *n* is ``GSM7_BASIC[n]``.  Position 0x1B is the
escape to the extension table, not a character (it is never matched as one)."""

GSM7_EXTENDED: Final[Mapping[str, int]] = MappingProxyType(
    {
        "\f": 0x0A,
        "^": 0x14,
        "{": 0x28,
        "}": 0x29,
        "\\": 0x2F,
        "[": 0x3C,
        "~": 0x3D,
        "]": 0x3E,
        "|": 0x40,
        "€": 0x65,
    }
)
"""The extension table: character -> code sent after ESC (two septets each)."""

assert len(GSM7_BASIC) == 128

_BASIC_CODE: Final[dict[str, int]] = {
    char: code for code, char in enumerate(GSM7_BASIC) if code != _ESC
}
_EXTENDED_CHAR: Final[dict[int, str]] = {code: char for char, code in GSM7_EXTENDED.items()}


class MessageTooLong(ValidationFailed):
    """The text needs more parts than a concatenated SMS can have."""

    code = "sms_too_long"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What a text costs as an SMS."""

    encoding: Encoding
    characters: int  # code points in the text
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    parts: int
    per_part: int  # 160/153 or 70/67: the budget of each part
    remaining: int  # units still free in the last part
    ucs2_chars: tuple[str, ...]  # the distinct characters that force UCS-2, sorted

    @property
    def data_coding(self) -> int:
        return DATA_CODING_GSM7 if self.encoding == "gsm7" else DATA_CODING_UCS2


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of a message: its text, and the payload bytes SMPP carries (without UDH)."""

    text: str
    payload: bytes
    units: int
    data_coding: int


@dataclass(frozen=True, slots=True)
class Saving:
    """What :func:`to_gsm` would save on a text."""

    text: str  # the normalised text
    before: SegmentInfo
    after: SegmentInfo
    replaced: tuple[str, ...]  # the distinct characters it replaces, sorted

    @property
    def parts_saved(self) -> int:
        return self.before.parts - self.after.parts


def _gsm_cost(char: str) -> int:
    """Septets of one character, 0 when it is not GSM-7."""
    if char in _BASIC_CODE:
        return 1
    if char in GSM7_EXTENDED:
        return 2
    return 0


def is_gsm7(text: str) -> bool:
    return all(char in _BASIC_CODE or char in GSM7_EXTENDED for char in text)


def _ucs2_cost(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _pack(costs: list[int], budget: int) -> list[int]:
    """Indexes where each part starts, filling parts greedily without splitting a character
    (an escape pair or a surrogate pair is one character here)."""
    starts = [0]
    used = 0
    for index, cost in enumerate(costs):
        if used + cost > budget:
            starts.append(index)
            used = 0
        used += cost
    return starts


def _plan(text: str) -> tuple[Encoding, list[int], int, int]:
    """``(encoding, per-character costs, single-part budget, multi-part budget)``."""
    gsm_costs = [_gsm_cost(char) for char in text]
    if all(gsm_costs):
        return "gsm7", gsm_costs, GSM7_SINGLE, GSM7_MULTI
    return "ucs2", [_ucs2_cost(char) for char in text], UCS2_SINGLE, UCS2_MULTI


def analyse(text: str) -> SegmentInfo:
    """Encoding, size and parts of *text* as one SMS (concatenated when needed)."""
    encoding, costs, single, multi = _plan(text)
    units = sum(costs)
    ucs2_chars = (
        tuple(sorted({char for char in text if not _gsm_cost(char)})) if encoding == "ucs2" else ()
    )
    if units <= single:
        return SegmentInfo(encoding, len(text), units, 1, single, single - units, ucs2_chars)
    starts = _pack(costs, multi)
    last = sum(costs[starts[-1] :])
    return SegmentInfo(encoding, len(text), units, len(starts), multi, multi - last, ucs2_chars)


def encode_gsm7(text: str) -> bytes:
    """Unpacked septets (one per byte); ESC + code for extension characters.

    Raises ``ValueError`` for a character outside GSM-7."""
    out = bytearray()
    for char in text:
        code = _BASIC_CODE.get(char)
        if code is not None:
            out.append(code)
            continue
        ext = GSM7_EXTENDED.get(char)
        if ext is None:
            raise ValueError(f"{char!r} is not in the GSM 03.38 alphabet")
        out += bytes((_ESC, ext))
    return bytes(out)


def decode_gsm7(data: bytes) -> str:
    """Unpacked septets to text, leniently: what an SMSC sends is shown, never refused.

    A byte above 0x7F (not a septet) becomes U+FFFD.  An escape followed by a code the
    extension table does not have shows the basic character of that code (as 23.038 asks of
    a handset); an escape at the very end is dropped."""
    out: list[str] = []
    escaped = False
    for byte in data:
        if escaped:
            escaped = False
            if byte > 0x7F:
                out.append("\ufffd")
            elif byte in _EXTENDED_CHAR:
                out.append(_EXTENDED_CHAR[byte])
            elif byte == _ESC:
                out.append(" ")  # reserved for a further extension table
            else:
                out.append(GSM7_BASIC[byte])
        elif byte == _ESC:
            escaped = True
        elif byte > 0x7F:
            out.append("\ufffd")
        else:
            out.append(GSM7_BASIC[byte])
    return "".join(out)


def decode_ucs2(data: bytes) -> str:
    """UTF-16-BE to text, leniently (a lone surrogate or an odd byte becomes U+FFFD)."""
    return data.decode("utf-16-be", errors="replace")


def decode_payload(data: bytes, data_coding: int) -> str:
    """An SMPP ``short_message`` (without UDH) to text, by ``data_coding``, leniently.

    0 is taken as GSM 03.38 (the usual SMSC default), 1 as ASCII, 3 as Latin-1, 8 as UCS-2;
    anything else (binary, vendor codings) as Latin-1, so no byte is ever lost."""
    coding = data_coding
    if data_coding & 0xF0 == 0xF0:  # "data coding/message class": bit 2 picks 8-bit data
        coding = 4 if data_coding & 0x04 else DATA_CODING_GSM7
    if coding == DATA_CODING_GSM7:
        return decode_gsm7(data)
    if coding == DATA_CODING_UCS2:
        return decode_ucs2(data)
    if coding == 1:
        return data.decode("ascii", errors="replace")
    return data.decode("latin-1")


def split(text: str) -> list[Segment]:
    """The parts of *text*, each with its payload (no UDH), in order.

    One part when it fits, otherwise parts of 153 septets or 67 UTF-16 units, never
    splitting an escape or a surrogate pair.  Raises :class:`MessageTooLong` past
    :data:`MAX_PARTS`."""
    encoding, costs, single, multi = _plan(text)
    units = sum(costs)
    if units <= single:
        bounds = [(0, len(text))]
    else:
        starts = _pack(costs, multi)
        if len(starts) > MAX_PARTS:
            raise MessageTooLong(
                "the message needs {parts} parts; at most {limit} can be concatenated",
                parts=len(starts),
                limit=MAX_PARTS,
            )
        bounds = list(zip(starts, [*starts[1:], len(text)], strict=True))
    segments = []
    for start, end in bounds:
        part = text[start:end]
        part_units = sum(costs[start:end])
        if encoding == "gsm7":
            segments.append(Segment(part, encode_gsm7(part), part_units, DATA_CODING_GSM7))
        else:
            payload = part.encode("utf-16-be", errors="surrogatepass")
            segments.append(Segment(part, payload, part_units, DATA_CODING_UCS2))
    return segments


# --- accent normalisation -----------------------------------------------------------------

_REPLACEMENTS: Final[dict[str, str]] = {
    # Typography that word processors and phones put in text.
    "\u2018": "'",  # ‘
    "\u2019": "'",  # ’
    "\u201a": "'",  # ‚
    "\u201b": "'",  # ‛
    "\u2032": "'",  # ′
    "\u00b4": "'",  # ´
    "`": "'",
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u201e": '"',  # „
    "\u201f": '"',  # ‟
    "\u2033": '"',  # ″
    "\u00ab": '"',  # «
    "\u00bb": '"',  # »
    "\u2039": "<",  # ‹
    "\u203a": ">",  # ›
    "\u2010": "-",  # ‐
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # ‒
    "\u2013": "-",  # –
    "\u2014": "-",  # —
    "\u2015": "-",  # ―
    "\u2212": "-",  # minus sign
    "\u00ad": "",  # soft hyphen
    "\u2026": "...",  # …
    "\u2022": "-",  # •
    "\u00b7": ".",  # ·
    "\u00a0": " ",  # no-break space
    "\u2002": " ",
    "\u2003": " ",
    "\u2007": " ",
    "\u2009": " ",
    "\u200a": " ",
    "\u202f": " ",
    "\u200b": "",  # zero-width space
    "\u200c": "",
    "\u200d": "",
    "\ufeff": "",
    "\t": " ",
    "\u2028": "\n",
    "\u2029": "\n",
    "\u00ba": "o",  # º (1º)
    "\u00aa": "a",  # ª (1ª)
    "\u00b0": "o",  # °
    "\u00a9": "(c)",
    "\u00ae": "(R)",
    "\u2122": "TM",
    "\u00bd": "1/2",
    "\u00bc": "1/4",
    "\u00be": "3/4",
    "\u00d7": "x",
    "\u00f7": "/",
    "\u00a2": "c",
    "\u2030": "%o",
    # Letters outside GSM-7 whose decomposition does not give a GSM-7 letter.
    "ç": "Ç",  # GSM-7 has only the capital; keeping the cedilla reads better than "c"
    "ð": "d",
    "Ð": "D",
    "þ": "th",
    "Þ": "Th",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "œ": "oe",
    "Œ": "OE",
    "ı": "i",
    # Greek capitals that look like Latin letters (GSM-7 has only some Greek capitals).
    "Α": "A",
    "Β": "B",
    "Ε": "E",
    "Ζ": "Z",
    "Η": "H",
    "Ι": "I",
    "Κ": "K",
    "Μ": "M",
    "Ν": "N",
    "Ο": "O",
    "Ρ": "P",
    "Τ": "T",
    "Υ": "Y",
    "Χ": "X",
}


def _to_gsm_char(char: str) -> str:
    """A GSM-7 stand-in for one character, or the character itself when there is none."""
    if _gsm_cost(char):
        return char
    replacement = _REPLACEMENTS.get(char)
    if replacement is not None:
        return replacement
    # á -> a, Ú -> U, ô -> o, ŝ -> s: the base letter of the decomposition, if it is GSM-7
    # (é, ñ, ü, à and the others GSM-7 has were kept above, so they keep their accent).
    decomposed = unicodedata.normalize("NFKD", char)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if base and base != char and is_gsm7(base):
        return base
    return char


def to_gsm(text: str) -> str:
    """*text* with the characters that force UCS-2 replaced by GSM-7 equivalents where one
    exists (``á -> a``, ``“ -> "``, ``– -> -``); the characters GSM-7 has (``é ñ Ñ ü ¿ ¡``)
    are kept.  Characters with no equivalent (emoji, CJK) stay, so the result may still be
    UCS-2; :func:`saving` tells."""
    if is_gsm7(text):
        return text
    return "".join(_to_gsm_char(char) for char in text)


def saving(text: str) -> Saving:
    """What :func:`to_gsm` would change and save on *text*."""
    before = analyse(text)
    normalised = to_gsm(text)
    after = before if normalised == text else analyse(normalised)
    replaced = tuple(char for char in before.ucs2_chars if _to_gsm_char(char) != char)
    return Saving(normalised, before, after, replaced)
