"""What an SMSC sends us in ``deliver_sm``: delivery receipts and inbound messages.

Parsed here by the project, leniently, because a receipt must never be lost to a codec: any
byte of the text is decoded to something (``encoding.decode_payload``), addresses that are
not ASCII are read as Latin-1, and fields a receipt lacks are simply absent.

- :func:`parse_deliver_sm` reads the PDU body (mandatory fields and TLVs);
- :func:`split_udh` separates a UDH from the payload and reads the concatenation element
  (8-bit reference, IE 0x00, or 16-bit, IE 0x08); SAR TLVs are read too;
- :func:`receipt_from_deliver` makes a :class:`~mailer.sms.types.Receipt`: the
  ``receipted_message_id`` and ``message_state`` TLVs first, then the receipt text
  (``id:... sub:... dlvrd:... submit date:... done date:... stat:... err:... text:...``);
- :class:`Reassembler` puts concatenated inbound messages back together.

The session (binds, answers) is ``smpp.py``'s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from struct import unpack_from
from typing import Final, Literal

from mailer.sms.encoding import decode_payload
from mailer.sms.types import (
    FINAL_STATES,
    Receipt,
    ReceiptState,
    decimal_id_to_hex,
    normalise_provider_id,
)

__all__ = [
    "Concat",
    "DeliverSm",
    "Reassembler",
    "inbound_sender",
    "parse_deliver_sm",
    "parse_receipt_text",
    "receipt_from_deliver",
    "split_udh",
]

HEADER_LENGTH: Final = 16

TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_SAR_MSG_REF_NUM: Final = 0x020C
TLV_SAR_TOTAL_SEGMENTS: Final = 0x020E
TLV_SAR_SEGMENT_SEQNUM: Final = 0x020F
TLV_NETWORK_ERROR_CODE: Final = 0x0423
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427

ESM_UDHI: Final = 0x40

# SMPP 3.4, 5.2.28 message_state
_MESSAGE_STATES: Final[dict[int, ReceiptState]] = {
    0: "enroute",  # SCHEDULED (SMPP 5)
    1: "enroute",
    2: "delivered",
    3: "expired",
    4: "deleted",
    5: "undelivered",
    6: "accepted",
    7: "unknown",
    8: "rejected",
    9: "enroute",  # SKIPPED (SMPP 5)
}
# The receipt text's stat: values (SMPP 3.4 appendix B), by their first five letters so that
# spelled-out variants (DELIVERED, UNDELIVERABLE, REJECTED) map too.
_STAT_PREFIXES: Final[dict[str, ReceiptState]] = {
    "DELIV": "delivered",
    "UNDEL": "undelivered",
    "EXPIR": "expired",
    "REJEC": "rejected",
    "DELET": "deleted",
    "ACCEP": "accepted",
    "ENROU": "enroute",
    "UNKNO": "unknown",
}
_RECEIPT_FIELD = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit date|submit_date|done date|done_date|stat|err|text)\s*:",
    re.IGNORECASE,
)


class PduError(ValueError):
    """A PDU too short or malformed to read."""


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """The fields of one ``deliver_sm`` that matter here."""

    sequence: int
    source: str
    source_ton: int
    source_npi: int
    destination: str
    dest_ton: int
    dest_npi: int
    esm_class: int
    data_coding: int
    message: bytes  # short_message, or message_payload when short_message was empty
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int:
        """Bits 2-5 of esm_class: 0 a message, 1 an SMSC delivery receipt, 8 an
        intermediate notification (others: SME acknowledgements)."""
        return (self.esm_class >> 2) & 0x0F

    @property
    def is_receipt(self) -> bool:
        return self.message_type in (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class Concat:
    """Where one part belongs in a concatenated message."""

    reference: int
    total: int
    sequence: int
    bits: Literal[8, 16]


def _cstring(pdu: bytes, offset: int, limit: int) -> tuple[str, int]:
    end = pdu.find(b"\x00", offset, limit)
    if end < 0:
        raise PduError("unterminated C-octet string")
    return pdu[offset:end].decode("latin-1"), end + 1


def parse_deliver_sm(pdu: bytes) -> DeliverSm:
    """Read a whole ``deliver_sm`` PDU (header included).  Raises :class:`PduError` only
    when the PDU cannot be read at all (truncated); odd contents are kept as they are."""
    if len(pdu) < HEADER_LENGTH:
        raise PduError("PDU shorter than its header")
    length = min(unpack_from("!I", pdu, 0)[0], len(pdu))
    sequence = unpack_from("!I", pdu, 12)[0]
    try:
        _service_type, at = _cstring(pdu, HEADER_LENGTH, length)
        source_ton, source_npi = pdu[at], pdu[at + 1]
        source, at = _cstring(pdu, at + 2, length)
        dest_ton, dest_npi = pdu[at], pdu[at + 1]
        destination, at = _cstring(pdu, at + 2, length)
        esm_class = pdu[at]
        at += 3  # esm_class, protocol_id, priority_flag
        _schedule, at = _cstring(pdu, at, length)
        _validity, at = _cstring(pdu, at, length)
        at += 2  # registered_delivery, replace_if_present_flag
        data_coding = pdu[at]
        sm_length = pdu[at + 2]  # after sm_default_msg_id
        at += 3
    except IndexError as error:
        raise PduError("PDU truncated in its mandatory fields") from error
    message = pdu[at : at + sm_length]
    at += sm_length
    tlvs: dict[int, bytes] = {}
    while at + 4 <= length:
        tag, size = unpack_from("!HH", pdu, at)
        tlvs[tag] = pdu[at + 4 : at + 4 + size]
        at += 4 + size
    if not message and TLV_MESSAGE_PAYLOAD in tlvs:
        message = tlvs[TLV_MESSAGE_PAYLOAD]
    return DeliverSm(
        sequence=sequence,
        source=source,
        source_ton=source_ton,
        source_npi=source_npi,
        destination=destination,
        dest_ton=dest_ton,
        dest_npi=dest_npi,
        esm_class=esm_class,
        data_coding=data_coding,
        message=message,
        tlvs=tlvs,
    )


def split_udh(deliver: DeliverSm) -> tuple[Concat | None, bytes]:
    """``(concatenation, payload)``: the payload without its UDH, and where it belongs when
    it is one part of several (UDH IE 0x00 or 0x08, or the SAR TLVs)."""
    message = deliver.message
    concat: Concat | None = None
    if deliver.esm_class & ESM_UDHI and message:
        udh_length = message[0]
        udh = message[1 : 1 + udh_length]
        at = 0
        while at + 2 <= len(udh):
            ie, size = udh[at], udh[at + 1]
            data = udh[at + 2 : at + 2 + size]
            if ie == 0x00 and size == 3 and len(data) == 3:
                concat = Concat(data[0], data[1], data[2], 8)
            elif ie == 0x08 and size == 4 and len(data) == 4:
                concat = Concat((data[0] << 8) | data[1], data[2], data[3], 16)
            at += 2 + size
        message = message[1 + udh_length :]
    tlvs = deliver.tlvs
    if concat is None and TLV_SAR_MSG_REF_NUM in tlvs and TLV_SAR_TOTAL_SEGMENTS in tlvs:
        reference = int.from_bytes(tlvs[TLV_SAR_MSG_REF_NUM] or b"\x00", "big")
        total = int.from_bytes(tlvs[TLV_SAR_TOTAL_SEGMENTS] or b"\x01", "big")
        sequence = int.from_bytes(tlvs.get(TLV_SAR_SEGMENT_SEQNUM) or b"\x01", "big")
        concat = Concat(reference, total, sequence, 16)
    if concat is not None and (concat.total <= 1 or not 1 <= concat.sequence <= concat.total):
        concat = None  # a single part, or numbers no handset could use: take it as it is
    return concat, message


def parse_receipt_text(text: str) -> dict[str, str]:
    """The ``key:value`` fields of a receipt text, keys lower-cased with ``_`` for spaces
    (``submit_date``, ``done_date``); ``text`` takes the rest of the line."""
    fields: dict[str, str] = {}
    matches = list(_RECEIPT_FIELD.finditer(text))
    for index, match in enumerate(matches):
        key = match.group(1).lower().replace(" ", "_")
        if key == "text":
            value = text[match.end() :]
        else:
            end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
            value = text[match.end() : end].strip()
        fields.setdefault(key, value)
    return fields


def _smsc_time(value: str) -> datetime | None:
    """``YYMMDDhhmm`` or ``YYMMDDhhmmss`` (taken as UTC), or None."""
    digits = value.strip()
    formats = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}
    fmt = formats.get(len(digits))
    if fmt is None or not digits.isdigit():
        return None
    try:
        return datetime.strptime(digits, fmt).replace(tzinfo=UTC)
    except ValueError:
        return None


def receipt_from_deliver(
    deliver: DeliverSm,
    gateway: str,
    *,
    text_id: Literal["same", "decimal"] = "same",
) -> Receipt:
    """The receipt a ``deliver_sm`` carries (call only when ``deliver.is_receipt``).

    The id: the ``receipted_message_id`` TLV when present (it is written like the
    ``submit_sm_resp`` id).  Otherwise the text's ``id:``: with *text_id* ``"decimal"`` a
    decimal id is converted to the hexadecimal writing of the submit answers, and the
    decimal writing is kept in ``alt_ids``; with ``"same"`` it is taken as it is, and a
    purely decimal id also offers its hexadecimal writing in ``alt_ids``."""
    _concat, payload = split_udh(deliver)
    text = decode_payload(payload, deliver.data_coding)
    fields = parse_receipt_text(text)
    alt_ids: tuple[str, ...] = ()
    tlv_id = deliver.tlvs.get(TLV_RECEIPTED_MESSAGE_ID)
    if tlv_id is not None and tlv_id.strip(b"\x00 "):
        provider_id = normalise_provider_id(tlv_id.decode("latin-1"))
    else:
        raw_id = normalise_provider_id(fields.get("id", ""))
        as_hex = decimal_id_to_hex(raw_id)
        if text_id == "decimal" and as_hex is not None:
            provider_id, alt_ids = as_hex, (raw_id,)
        else:
            provider_id = raw_id
            if as_hex is not None and as_hex != raw_id:
                alt_ids = (as_hex,)
    state: ReceiptState = "unknown"
    tlv_state = deliver.tlvs.get(TLV_MESSAGE_STATE)
    if tlv_state:
        state = _MESSAGE_STATES.get(tlv_state[0], "unknown")
    else:
        stat = fields.get("stat", "").strip().upper()
        state = _STAT_PREFIXES.get(stat[:5], "unknown")
    error = fields.get("err", "")
    network_error = deliver.tlvs.get(TLV_NETWORK_ERROR_CODE)
    if not error and network_error and len(network_error) == 3:
        error = f"{network_error[0]}:{int.from_bytes(network_error[1:], 'big')}"
    intermediate = deliver.message_type == 8
    return Receipt(
        provider_id=provider_id,
        state=state,
        final=state in FINAL_STATES and not intermediate,
        error=error,
        text=text,
        gateway=gateway,
        done_at=_smsc_time(fields.get("done_date", "")),
        alt_ids=alt_ids,
    )


def inbound_sender(address: str, ton: int) -> str:
    """E.164 when the SMSC marks the number international (TON 1) or wrote the ``+``;
    otherwise the address as received."""
    digits = address.strip()
    if digits.startswith("+"):
        return digits
    if ton == 1 and digits.isdigit():
        return "+" + digits
    return digits


@dataclass(slots=True)
class _Pending:
    total: int
    data_coding: int
    first_seen: float
    parts: dict[int, bytes] = field(default_factory=dict)
    delivering: bool = False


ReassemblyKey = tuple[str, str, int, int, int]


class Reassembler:
    """Parts of inbound concatenated messages, until the last one comes.

    :meth:`add` answers the ordered payloads once every part is there; the entry is kept
    until :meth:`done` (after the message was handed over), so a last part that the SMSC
    sends again because handing over failed completes the message again.  Parts that never
    complete are given up by :meth:`expired` after *timeout* seconds."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._pending: dict[ReassemblyKey, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    @staticmethod
    def key(deliver: DeliverSm, concat: Concat) -> ReassemblyKey:
        return (deliver.source, deliver.destination, concat.bits, concat.reference, concat.total)

    def add(
        self, key: ReassemblyKey, concat: Concat, payload: bytes, data_coding: int
    ) -> list[bytes] | None:
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = _Pending(concat.total, data_coding, self._clock())
        entry.parts[concat.sequence] = payload
        if entry.delivering or len(entry.parts) < entry.total:
            return None
        entry.delivering = True
        return [entry.parts[number] for number in range(1, entry.total + 1)]

    def done(self, key: ReassemblyKey) -> None:
        self._pending.pop(key, None)

    def failed(self, key: ReassemblyKey) -> None:
        """Handing the message over failed: wait for the SMSC to send a part again."""
        entry = self._pending.get(key)
        if entry is not None:
            entry.delivering = False

    def expired(self) -> list[tuple[ReassemblyKey, list[bytes], int, int]]:
        """``(key, payloads in order, total, data_coding)`` of messages still incomplete after
        the timeout; call :meth:`done` for each once handed over."""
        now = self._clock()
        out = []
        for key, entry in self._pending.items():
            if not entry.delivering and now - entry.first_seen >= self._timeout:
                payloads = [entry.parts[number] for number in sorted(entry.parts)]
                out.append((key, payloads, entry.total, entry.data_coding))
        return out
