"""Reading deliver_sm: receipts (TLVs first, then the text; hex/decimal ids; bad bytes),
inbound messages and their reassembly (8- and 16-bit references, SAR TLVs)."""

from __future__ import annotations

from datetime import UTC, datetime
from struct import pack

import pytest

from mailer.sms.deliver import (
    Concat,
    PduError,
    Reassembler,
    inbound_sender,
    parse_deliver_sm,
    parse_receipt_text,
    receipt_from_deliver,
    split_udh,
)
from mailer.sms.types import (
    decimal_id_to_hex,
    hex_id_to_decimal,
    normalise_provider_id,
)

RECEIPT_TEXT = (
    b"id:0000A1F3 sub:001 dlvrd:001 submit date:2511230101 done date:2511230102 "
    b"stat:DELIVRD err:000 text:Hola"
)


def tlv(tag: int, value: bytes) -> bytes:
    return pack("!HH", tag, len(value)) + value


def deliver_sm(
    message: bytes,
    *,
    esm_class: int = 0,
    data_coding: int = 0,
    source: bytes = b"51987654321",
    source_ton: int = 1,
    destination: bytes = b"MAILER",
    tlvs: bytes = b"",
    sequence: int = 7,
) -> bytes:
    body = (
        b"\x00"  # service_type
        + bytes((source_ton, 1))
        + source
        + b"\x00"
        + bytes((5, 0))
        + destination
        + b"\x00"
        + bytes((esm_class, 0, 0))
        + b"\x00\x00"  # schedule, validity
        + bytes((0, 0, data_coding, 0, len(message)))
        + message
        + tlvs
    )
    return pack("!IIII", 16 + len(body), 0x00000005, 0, sequence) + body


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("0000A1F3", "a1f3"),
        (" a1f3\x00", "a1f3"),
        ("A1F3", "a1f3"),
        ("000", "0"),
        ("", ""),
        ("0042", "42"),
        ("msg-ABC", "msg-abc"),
    ],
)
def test_normalise_provider_id(raw: str, normal: str) -> None:
    assert normalise_provider_id(raw) == normal


def test_hex_and_decimal_writings_convert_both_ways() -> None:
    assert decimal_id_to_hex("41459") == "a1f3"
    assert decimal_id_to_hex("0041459") == "a1f3"
    assert decimal_id_to_hex("a1f3") is None
    assert hex_id_to_decimal("0000A1F3") == "41459"
    assert hex_id_to_decimal("xyz") is None


# --- parsing ---------------------------------------------------------------------------------


def test_parse_a_receipt_pdu() -> None:
    pdu = deliver_sm(
        RECEIPT_TEXT,
        esm_class=0x04,
        tlvs=tlv(0x001E, b"0000A1F3\x00") + tlv(0x0427, b"\x02"),
    )
    parsed = parse_deliver_sm(pdu)
    assert parsed.sequence == 7
    assert (parsed.source, parsed.source_ton, parsed.destination) == ("51987654321", 1, "MAILER")
    assert parsed.is_receipt
    assert parsed.message == RECEIPT_TEXT
    assert parsed.tlvs[0x0427] == b"\x02"


def test_a_truncated_pdu_is_an_error_not_a_crash() -> None:
    with pytest.raises(PduError):
        parse_deliver_sm(deliver_sm(b"x")[:25])
    with pytest.raises(PduError):
        parse_deliver_sm(b"\x00\x00")


def test_message_payload_tlv_stands_for_an_empty_short_message() -> None:
    parsed = parse_deliver_sm(deliver_sm(b"", tlvs=tlv(0x0424, b"Hola largo")))
    assert parsed.message == b"Hola largo"


# --- receipts --------------------------------------------------------------------------------


def test_receipt_tlvs_come_first() -> None:
    text = RECEIPT_TEXT.replace(b"stat:DELIVRD", b"stat:UNDELIV")
    pdu = deliver_sm(text, esm_class=0x04, tlvs=tlv(0x001E, b"0000A1F3\x00") + tlv(0x0427, b"\x02"))
    receipt = receipt_from_deliver(parse_deliver_sm(pdu), "smsc")
    assert receipt.provider_id == "a1f3"
    assert receipt.state == "delivered"  # message_state 2 wins over the text
    assert receipt.final
    assert receipt.alt_ids == ()
    assert receipt.gateway == "smsc"
    assert receipt.done_at == datetime(2025, 11, 23, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stat", "state", "final"),
    [
        ("DELIVRD", "delivered", True),
        ("UNDELIV", "undelivered", True),
        ("EXPIRED", "expired", True),
        ("REJECTD", "rejected", True),
        ("DELETED", "deleted", True),
        ("ACCEPTD", "accepted", False),
        ("ENROUTE", "enroute", False),
        ("UNKNOWN", "unknown", False),
        ("DELIVERED", "delivered", True),
        ("garbage", "unknown", False),
    ],
)
def test_receipt_text_states(stat: str, state: str, final: bool) -> None:
    text = RECEIPT_TEXT.replace(b"DELIVRD", stat.encode())
    receipt = receipt_from_deliver(parse_deliver_sm(deliver_sm(text, esm_class=0x04)), "smsc")
    assert (receipt.state, receipt.final) == (state, final)


def test_text_id_same_offers_the_hex_writing_of_a_decimal_id() -> None:
    text = RECEIPT_TEXT.replace(b"id:0000A1F3", b"id:41459")
    receipt = receipt_from_deliver(parse_deliver_sm(deliver_sm(text, esm_class=0x04)), "smsc")
    assert receipt.provider_id == "41459"
    assert receipt.alt_ids == ("a1f3",)


def test_text_id_decimal_converts_to_the_hex_of_the_submit_answer() -> None:
    text = RECEIPT_TEXT.replace(b"id:0000A1F3", b"id:41459")
    parsed = parse_deliver_sm(deliver_sm(text, esm_class=0x04))
    receipt = receipt_from_deliver(parsed, "smsc", text_id="decimal")
    assert receipt.provider_id == "a1f3"
    assert receipt.alt_ids == ("41459",)
    # A hexadecimal id in the text is left alone even so.
    parsed = parse_deliver_sm(deliver_sm(RECEIPT_TEXT, esm_class=0x04))
    assert receipt_from_deliver(parsed, "smsc", text_id="decimal").provider_id == "a1f3"


def test_a_receipt_with_bytes_that_are_not_gsm7_is_still_read() -> None:
    text = RECEIPT_TEXT + b"\x80\xff\xc3\x28\x9b"
    receipt = receipt_from_deliver(parse_deliver_sm(deliver_sm(text, esm_class=0x04)), "smsc")
    assert receipt.provider_id == "a1f3"
    assert receipt.state == "delivered"
    assert "\ufffd" in receipt.text


def test_error_falls_back_to_network_error_code_and_intermediate_is_not_final() -> None:
    pdu = deliver_sm(
        b"",
        esm_class=0x20,  # intermediate notification
        tlvs=tlv(0x001E, b"abc\x00") + tlv(0x0427, b"\x05") + tlv(0x0423, b"\x03\x00\x22"),
    )
    receipt = receipt_from_deliver(parse_deliver_sm(pdu), "smsc")
    assert (receipt.provider_id, receipt.state, receipt.final) == ("abc", "undelivered", False)
    assert receipt.error == "3:34"


def test_parse_receipt_text_tolerates_order_and_spelling() -> None:
    fields = parse_receipt_text("stat:EXPIRED id:12 err:005 Submit_Date:2501010000 text:a b:c")
    assert fields == {
        "stat": "EXPIRED",
        "id": "12",
        "err": "005",
        "submit_date": "2501010000",
        "text": "a b:c",
    }


# --- inbound ---------------------------------------------------------------------------------


def test_udh_8_and_16_bit_references() -> None:
    eight = parse_deliver_sm(deliver_sm(b"\x05\x00\x03\x2a\x02\x01Hola", esm_class=0x40))
    assert split_udh(eight) == (Concat(0x2A, 2, 1, 8), b"Hola")
    sixteen = parse_deliver_sm(deliver_sm(b"\x06\x08\x04\x12\x34\x03\x02Hola", esm_class=0x40))
    assert split_udh(sixteen) == (Concat(0x1234, 3, 2, 16), b"Hola")
    other_ie = parse_deliver_sm(deliver_sm(b"\x04\x0a\x02\x00\x00Hola", esm_class=0x40))
    assert split_udh(other_ie) == (None, b"Hola")


def test_sar_tlvs() -> None:
    tlvs = tlv(0x020C, b"\x01\x02") + tlv(0x020E, b"\x02") + tlv(0x020F, b"\x02")
    parsed = parse_deliver_sm(deliver_sm(b"mundo", tlvs=tlvs))
    assert split_udh(parsed) == (Concat(0x0102, 2, 2, 16), b"mundo")


def test_inbound_sender_is_e164_when_international() -> None:
    assert inbound_sender("51987654321", 1) == "+51987654321"
    assert inbound_sender("+51987654321", 0) == "+51987654321"
    assert inbound_sender("987654321", 0) == "987654321"


def test_reassembler_waits_for_every_part_and_keeps_it_until_done() -> None:
    now = [0.0]
    reassembler = Reassembler(60, clock=lambda: now[0])
    key = ("+51987654321", "MAILER", 16, 0x1234, 3)
    assert reassembler.add(key, Concat(0x1234, 3, 3, 16), b"c", 0) is None
    assert reassembler.add(key, Concat(0x1234, 3, 1, 16), b"a", 0) is None
    assert reassembler.add(key, Concat(0x1234, 3, 2, 16), b"b", 0) == [b"a", b"b", b"c"]
    # A repeated part while being handed over does not complete it twice...
    assert reassembler.add(key, Concat(0x1234, 3, 3, 16), b"c", 0) is None
    # ...but after a failure, the SMSC's repeat completes it again.
    reassembler.failed(key)
    assert reassembler.add(key, Concat(0x1234, 3, 3, 16), b"c", 0) == [b"a", b"b", b"c"]
    reassembler.done(key)
    assert len(reassembler) == 0


def test_reassembler_gives_up_on_missing_parts_after_the_timeout() -> None:
    now = [0.0]
    reassembler = Reassembler(60, clock=lambda: now[0])
    key = ("+51987654321", "MAILER", 8, 9, 2)
    reassembler.add(key, Concat(9, 2, 2, 8), b"fin", 8)
    assert reassembler.expired() == []
    now[0] = 61
    assert reassembler.expired() == [(key, [b"fin"], 2, 8)]
