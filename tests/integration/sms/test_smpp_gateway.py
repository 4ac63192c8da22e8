"""SmppGateway against a real SMSC (npm smpp, scripted by tests/smsc/smsc.js) on 127.0.0.1:
what goes on the wire, receipts, throttling, the window, reconnects, inbound messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailer.sms.encoding import encode_gsm7, split
from mailer.sms.smpp import ESME_RX_T_APPN
from mailer.sms.types import GatewayUnavailable, SmsOutbound, normalise_provider_id
from tests.integration.sms.conftest import Running
from tests.smsc import Smsc

Smpp = Callable[..., Running]
NUMBER = "+51987000001"


def message(ref: int, text: str = "Hola", to: str = NUMBER, **extra: Any) -> SmsOutbound:
    return SmsOutbound(ref=ref, to=to, sender="MAILER", text=text, **extra)


def test_bind_and_submit_one_message(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    gateway.wait_bound()
    [result] = gateway.submit([message(1, "Hola {señor} ñandú", validity_seconds=3600)])
    assert result.status == "submitted", result
    assert result.ref == 1 and result.parts == 1
    [wire] = smsc.submitted()
    assert result.provider_ids == (normalise_provider_id(wire["message_id"]),)
    assert wire["message_id"] == "0000A1F0" and result.provider_ids == ("a1f0",)
    assert (wire["destination"], wire["dest_ton"], wire["dest_npi"]) == ("51987000001", 1, 1)
    assert (wire["source"], wire["source_ton"]) == ("MAILER", 5)
    assert (wire["esm_class"], wire["data_coding"], wire["udh"]) == (0, 8, "")
    assert bytes.fromhex(wire["payload"]).decode("utf-16-be") == "Hola {señor} ñandú"
    assert wire["registered_delivery"] == 1
    assert wire["validity_period"] == "000000010000000R"


def test_bad_credentials_are_refused_and_submits_are_deferred(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp(password="wrong", response_timeout_seconds=1.0)
    with pytest.raises(GatewayUnavailable, match="ESME_RBINDFAIL"):
        gateway.wait_bound(timeout=1.5)
    [result] = gateway.submit([message(1)], timeout=5)
    assert result.status == "deferred"
    assert result.code == 0x0D
    assert "ESME_RBINDFAIL" in result.text
    assert result.retry_after is not None
    assert smsc.stats()["bind_failures"] >= 1
    assert smsc.submitted() == []


def test_a_long_gsm7_message_goes_in_three_parts_with_udh(smsc: Smsc, smpp: Smpp) -> None:
    text = "a" * 152 + "€" + "b" * 152  # 306 septets: three parts, the escape pair kept whole
    gateway = smpp()
    [result] = gateway.submit([message(7, text)])
    assert result.status == "submitted" and result.parts == 3
    wire = smsc.submitted()
    assert len(wire) == 3
    reference = wire[0]["udh"][6:8]
    parts = split(text)
    for number, (pdu, part) in enumerate(zip(wire, parts, strict=True), 1):
        assert pdu["esm_class"] == 0x40
        assert pdu["data_coding"] == 0
        assert pdu["udh"] == f"050003{reference}03{number:02x}"
        assert pdu["payload"] == part.payload.hex()
    assert bytes.fromhex(wire[1]["payload"])[:2] == encode_gsm7("€")
    assert result.provider_ids == tuple(normalise_provider_id(p["message_id"]) for p in wire)


def test_a_long_ucs2_message_goes_in_three_parts_without_splitting_an_emoji(
    smsc: Smsc, smpp: Smpp
) -> None:
    text = "Canción " * 8 + "x" * 2 + "😀" + "y" * 70  # 66 + 2 + 2 + 70 = 140 units
    gateway = smpp()
    [result] = gateway.submit([message(8, text)])
    assert result.status == "submitted" and result.parts == 3
    wire = smsc.submitted()
    assert [p["data_coding"] for p in wire] == [8, 8, 8]
    assert [p["udh"][-4:] for p in wire] == ["0301", "0302", "0303"]
    texts = [bytes.fromhex(p["payload"]).decode("utf-16-be") for p in wire]
    assert "".join(texts) == text
    assert texts[1].startswith("😀")
    assert all(len(bytes.fromhex(p["payload"])) <= 134 for p in wire)


def test_receipts_are_matched_to_the_submitted_ids(smsc: Smsc, smpp: Smpp) -> None:
    smsc.configure(undeliverable=["51987000002"])
    gateway = smpp()
    results = gateway.submit([message(1, "Hola"), message(2, "Hola", to="+51987000002")])
    ids = {result.provider_ids[0]: result.ref for result in results}
    receipts = gateway.collected.wait_receipts(2)
    states = {ids[r.provider_id]: (r.state, r.final) for r in receipts}
    assert states == {1: ("delivered", True), 2: ("undelivered", True)}
    assert all(r.gateway == "smsc" and r.done_at is not None for r in receipts)
    smsc.wait_for(lambda s: s["receipts_acked"] == 2)


def test_a_receipt_per_part(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    [result] = gateway.submit([message(1, "z" * 400)])
    receipts = gateway.collected.wait_receipts(3)
    assert sorted(r.provider_id for r in receipts) == sorted(result.provider_ids)


@pytest.mark.parametrize("gateway_reads", ["decimal", "same"])
def test_hex_submit_ids_and_decimal_receipt_text(
    smsc: Smsc, smpp: Smpp, gateway_reads: str
) -> None:
    # This SMSC answers submit_sm "0000A1F0" and writes "id:41456" in the receipt text,
    # without the receipted_message_id TLV.
    smsc.configure(receipt_tlvs=False, receipt_text_id="decimal")
    gateway = smpp(receipt_text_id=gateway_reads)
    [result] = gateway.submit([message(1)])
    assert result.provider_ids == ("a1f0",)
    [receipt] = gateway.collected.wait_receipts(1)
    assert str(int("a1f0", 16)) in receipt.text
    if gateway_reads == "decimal":
        assert receipt.provider_id == "a1f0"
        assert receipt.alt_ids == ("41456",)
    else:  # the id as written, and the other writing to look up second
        assert receipt.provider_id == "41456"
        assert receipt.alt_ids == ("a1f0",)
    assert receipt.state == "delivered"  # from the text's stat:, no message_state TLV


def test_a_receipt_with_bytes_that_are_not_gsm7_is_not_lost(smsc: Smsc, smpp: Smpp) -> None:
    smsc.configure(bad_bytes=["51987000001"])
    gateway = smpp()
    [result] = gateway.submit([message(1)])
    [receipt] = gateway.collected.wait_receipts(1)
    assert receipt.provider_id == result.provider_ids[0]
    assert receipt.state == "delivered"
    assert "\ufffd" in receipt.text
    assert [d["status"] for d in smsc.deliveries()] == [0]


def test_a_failing_callback_gets_the_receipt_sent_again(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    gateway.collected.fail_receipts = 1
    [result] = gateway.submit([message(1)])
    [receipt] = gateway.collected.wait_receipts(1)
    assert receipt.provider_id == result.provider_ids[0]
    smsc.wait_for(lambda s: s["receipts_acked"] == 1)
    attempts = [(d["attempt"], d["status"]) for d in smsc.deliveries()]
    assert attempts == [(1, ESME_RX_T_APPN), (2, 0)]


def test_throttling_is_answered_with_retries_and_nothing_is_lost(smsc: Smsc, smpp: Smpp) -> None:
    smsc.configure(throttle_rate=200)
    gateway = smpp(throttle_backoff_seconds=0.05)
    results = gateway.submit([message(i, f"Aviso {i}") for i in range(600)])
    assert [r.ref for r in results] == list(range(600))
    assert {r.status for r in results} == {"submitted"}
    ids = [r.provider_ids[0] for r in results]
    assert len(set(ids)) == 600
    stats = smsc.stats()
    assert stats["throttled"] > 0
    assert stats["accepted"] == 600
    assert gateway.loop.status()[0]["throttled"] == stats["throttled"]


def test_the_window_takes_2000_messages_at_once(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp(window=50)
    results = gateway.submit([message(i, f"Recordatorio {i}") for i in range(2000)])
    assert len(results) == 2000
    assert {r.status for r in results} == {"submitted"}
    assert len({r.provider_ids[0] for r in results}) == 2000
    gateway.collected.wait_receipts(2000, timeout=60)
    stats = smsc.wait_for(lambda s: s["receipts_acked"] == 2000, timeout=30)
    assert stats["accepted"] == 2000 and stats["deliver_errors"] == 0


def test_permanent_errors_are_rejections_with_the_code(smsc: Smsc, smpp: Smpp) -> None:
    smsc.configure(reject={"51987000009": 0x0B, "51987000008": 0x08})
    gateway = smpp(max_retries=2, throttle_backoff_seconds=0.01)
    ok, bad, transient = gateway.submit(
        [message(1), message(2, to="+51987000009"), message(3, to="+51987000008")]
    )
    assert ok.status == "submitted"
    assert (bad.status, bad.code) == ("rejected", 0x0B)
    assert "ESME_RINVDSTADR" in bad.text
    assert (transient.status, transient.code) == ("deferred", 0x08)
    assert len([p for p in smsc.submitted() if p["destination"] == "51987000008"]) == 3


def test_messages_the_gateway_cannot_send_are_rejected_without_a_pdu(
    smsc: Smsc, smpp: Smpp
) -> None:
    gateway = smpp()
    results = gateway.submit(
        [
            message(1, ""),
            message(2, to="not a number"),
            SmsOutbound(3, NUMBER, "A SENDER TOO LONG", "x"),
            message(4, "a" * 153 * 256),
        ]
    )
    assert [r.status for r in results] == ["rejected"] * 4
    assert smsc.submitted() == []


def test_reconnects_after_the_smsc_restarts(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    [first] = gateway.submit([message(1)])
    assert first.status == "submitted"
    smsc.restart()
    [second] = gateway.submit([message(2)], timeout=20)
    assert second.status == "submitted", second
    assert smsc.stats()["binds"] == 1  # the new process saw one bind: ours, again
    smsc.kick()  # dropped without unbind
    [third] = gateway.submit([message(3)], timeout=20)
    assert third.status == "submitted", third
    assert gateway.loop.status()[0]["binds"] >= 3


def test_receipts_waiting_at_the_smsc_come_after_a_reconnect(smsc: Smsc, smpp: Smpp) -> None:
    smsc.configure(receipt_delay_ms=600)
    gateway = smpp()
    [result] = gateway.submit([message(1)])
    smsc.kick()  # the receipt is due while we are away: the SMSC keeps it
    [receipt] = gateway.collected.wait_receipts(1)
    assert receipt.provider_id == result.provider_ids[0]


def test_an_inbound_message(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    gateway.wait_bound()
    assert smsc.send_mo("51987000001", "MAILER", text="BAJA") == [0]
    [inbound] = gateway.collected.wait_inbound(1)
    assert (inbound.sender, inbound.to, inbound.text) == ("+51987000001", "MAILER", "BAJA")
    assert (inbound.parts, inbound.complete, inbound.gateway) == (1, True, "smsc")


def test_inbound_with_8_bit_reference_and_an_escape_pair_across_parts(
    smsc: Smsc, smpp: Smpp
) -> None:
    gateway = smpp()
    gateway.wait_bound()
    septets = encode_gsm7("Quiero darme de baja €")
    cut = len(septets) - 1  # between ESC and the euro's code
    statuses = smsc.send_mo(
        "51987000001", "MAILER", parts=[septets[:cut], septets[cut:]], ref_bits=8, ref=200
    )
    assert statuses == [0, 0]
    [inbound] = gateway.collected.wait_inbound(1)
    assert inbound.text == "Quiero darme de baja €"
    assert inbound.parts == 2 and inbound.complete


def test_inbound_with_16_bit_reference_out_of_order_and_a_split_emoji(
    smsc: Smsc, smpp: Smpp
) -> None:
    gateway = smpp()
    gateway.wait_bound()
    payload = "Gracias por el aviso 😀 ¿cuándo vence?".encode("utf-16-be")
    cut = payload.index("😀".encode("utf-16-be")) + 2  # between the two surrogates
    parts = [payload[:cut], payload[cut : cut + 10], payload[cut + 10 :]]
    statuses = smsc.send_mo(
        "51987000001",
        "MAILER",
        parts=parts,
        ref_bits=16,
        ref=0x1234,
        data_coding=8,
        order=[2, 0, 1],
    )
    assert statuses == [0, 0, 0]
    [inbound] = gateway.collected.wait_inbound(1)
    assert inbound.text == "Gracias por el aviso 😀 ¿cuándo vence?"
    assert inbound.parts == 3


def test_an_incomplete_inbound_message_is_passed_on_after_the_timeout(
    smsc: Smsc, smpp: Smpp
) -> None:
    gateway = smpp(inbound_parts_timeout_seconds=1.0)
    gateway.wait_bound()
    smsc.send_mo("51987000001", "MAILER", parts=[b"Hola ", b"mundo"], order=[0], ref=5)
    [inbound] = gateway.collected.wait_inbound(1, timeout=10)
    assert (inbound.text, inbound.parts, inbound.complete) == ("Hola ", 2, False)


def test_a_failing_inbound_callback_gets_the_last_part_sent_again(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    gateway.wait_bound()
    gateway.collected.fail_inbound = 1
    statuses = smsc.send_mo("51987000001", "MAILER", parts=[b"ALTA ", b"por favor"], ref=9)
    assert statuses == [0, 0]  # the second part's final answer, after the SMSC's retry
    [inbound] = gateway.collected.wait_inbound(1)
    assert inbound.text == "ALTA por favor"
    answers = [(d["kind"], d["attempt"], d["status"]) for d in smsc.deliveries()]
    assert answers == [("mo", 1, 0), ("mo", 1, ESME_RX_T_APPN), ("mo", 2, 0)]


def test_every_deliver_sm_is_answered(smsc: Smsc, smpp: Smpp) -> None:
    gateway = smpp()
    gateway.wait_bound()
    # A receipt with neither TLVs nor a readable text still gets an answer (and a value).
    assert smsc.deliver_raw(b"\xff\xfe garbage", esm_class=0x04) == 0
    # A message with a UDH that makes no sense is taken as one plain part.
    assert smsc.deliver_raw(b"\x05\x00\x03\x01\x00\x00Hola", esm_class=0x40) == 0
    [receipt] = gateway.collected.wait_receipts(1)
    assert (receipt.provider_id, receipt.state, receipt.final) == ("", "unknown", False)
    [inbound] = gateway.collected.wait_inbound(1)
    assert inbound.text == "Hola"
    assert all(d["status"] == 0 for d in smsc.deliveries())
