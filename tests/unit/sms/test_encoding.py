"""GSM-7/UCS-2 counts and parts: the issue's examples, edges of the budgets, and properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.sms.encoding import (
    GSM7_BASIC,
    GSM7_EXTENDED,
    MAX_PARTS,
    MessageTooLong,
    analyse,
    decode_gsm7,
    decode_payload,
    decode_ucs2,
    encode_gsm7,
    is_gsm7,
    saving,
    split,
    to_gsm,
)

GSM_CHARS = [c for i, c in enumerate(GSM7_BASIC) if i != 0x1B] + list(GSM7_EXTENDED)
gsm_text = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=700)
any_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(GSM_CHARS),
        st.sampled_from(list("áíóúçÁ“”–😀👍🏽中文")),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=400,
)


# --- the examples --------------------------------------------------------------------


def test_160_septets_fit_one_part() -> None:
    info = analyse("a" * 160)
    assert (info.encoding, info.units, info.parts, info.per_part, info.remaining) == (
        "gsm7",
        160,
        1,
        160,
        0,
    )


def test_161_septets_take_two_parts_of_153() -> None:
    info = analyse("a" * 161)
    assert (info.encoding, info.parts, info.per_part, info.remaining) == ("gsm7", 2, 153, 145)


def test_the_euro_sign_costs_two_septets() -> None:
    info = analyse("a" * 159 + "€")
    assert (info.encoding, info.characters, info.units, info.parts) == ("gsm7", 160, 161, 2)


def test_spanish_accents_force_ucs2_but_fit_one_part() -> None:
    info = analyse("Canción: ¿Qué tal, señor Núñez?")
    assert (info.encoding, info.parts, info.per_part) == ("ucs2", 1, 70)
    assert info.ucs2_chars == ("ó", "ú")


def test_the_spanish_letters_gsm7_has_stay_gsm7() -> None:
    for text in ["é ñ Ñ ü ¿ ¡", "Ä Ö Ü à è ù ì ò Ç É ß Å å Ø ø Æ æ"]:
        info = analyse(text)
        assert info.encoding == "gsm7", text
        assert info.units == len(text)


@pytest.mark.parametrize("char", ["^", "{", "}", "\\", "[", "~", "]", "|", "€", "\f"])
def test_every_extension_character_costs_two(char: str) -> None:
    assert analyse(char).units == 2
    assert encode_gsm7(char) == bytes((0x1B, GSM7_EXTENDED[char]))


# --- budgets and packing ---------------------------------------------------------------------


def test_ucs2_budgets_are_70_and_67() -> None:
    assert analyse("á" * 70).parts == 1
    info = analyse("á" * 71)
    assert (info.parts, info.per_part, info.remaining) == (2, 67, 63)
    assert analyse("á" * 134).parts == 2
    assert analyse("á" * 135).parts == 3


def test_an_escape_pair_is_never_split_and_the_count_says_so() -> None:
    # 152 septets, then "€" (2) which does not fit in part one (153) and moves whole:
    # 306 septets would be 2 parts by division, but packing needs 3.
    text = "a" * 152 + "€" + "b" * 152
    info = analyse(text)
    assert (info.units, info.parts, info.remaining) == (306, 3, 152)
    parts = split(text)
    assert [p.units for p in parts] == [152, 153, 1]
    assert parts[0].text == "a" * 152
    assert parts[1].text.startswith("€")
    assert parts[1].payload.startswith(b"\x1b\x65")
    assert "".join(p.text for p in parts) == text


def test_a_surrogate_pair_is_never_split() -> None:
    text = "x" * 66 + "😀" + "y" * 10  # 66 + 2 + 10 = 78 units: two parts
    parts = split(text)
    assert len(parts) == 2
    assert parts[0].text == "x" * 66
    assert parts[1].text.startswith("😀")
    assert analyse(text).remaining == 67 - 12


def test_payloads_are_unpacked_septets_or_utf16_be() -> None:
    [gsm] = split("@£$ Hola{")
    assert gsm.data_coding == 0
    assert gsm.payload == bytes([0x00, 0x01, 0x02, 0x20, 0x48, 0x6F, 0x6C, 0x61, 0x1B, 0x28])
    [ucs2] = split("Canción 😀")
    assert ucs2.data_coding == 8
    assert ucs2.payload == "Canción 😀".encode("utf-16-be")
    assert ucs2.units == 10


def test_an_empty_text_is_one_empty_part() -> None:
    assert analyse("").parts == 1
    assert split("") == [split("")[0]]
    assert split("")[0].payload == b""


def test_more_than_255_parts_is_refused() -> None:
    assert analyse("a" * 153 * MAX_PARTS).parts == MAX_PARTS
    split("a" * 153 * MAX_PARTS)
    with pytest.raises(MessageTooLong):
        split("a" * (153 * MAX_PARTS + 1))


# --- decoding is lenient ---------------------------------------------------------------------


def test_decoding_never_fails() -> None:
    assert decode_gsm7(b"Hola \x80\xff") == "Hola \ufffd\ufffd"
    assert decode_gsm7(b"\x1b\x65\x1b") == "€"  # a trailing escape is dropped
    assert decode_gsm7(b"\x1b\x41") == "A"  # unknown extension: the basic character
    assert decode_ucs2(b"\x00A\xd8") == "A\ufffd"
    assert decode_payload(b"caf\xe9", 3) == "café"
    assert decode_payload(b"\x00\x41", 8) == "A"
    assert decode_payload(b"Hi", 0xF0) == "Hi"
    assert decode_payload(b"\xff", 4) == "ÿ"


# --- accent normalisation --------------------------------------------------------------------


def test_to_gsm_replaces_what_forces_ucs2_and_keeps_what_gsm7_has() -> None:
    assert to_gsm("Canción: ¿Qué tal, señor Núñez?") == "Cancion: ¿Qué tal, señor Nuñez?"
    assert to_gsm("ÁÍÓÚ áíóú") == "AIOU aiou"
    assert to_gsm("“Hola” – ‘sí’…") == "\"Hola\" - 'si'..."
    assert to_gsm("é ñ Ñ ü ¿ ¡ Ä Ö Ü à è ù ì ò Ç É ß") == "é ñ Ñ ü ¿ ¡ Ä Ö Ü à è ù ì ò Ç É ß"
    assert to_gsm("ç") == "Ç"
    assert to_gsm("Hola 😀") == "Hola 😀"  # no equivalent: stays (and stays UCS-2)


def test_saving_shows_the_parts_saved() -> None:
    text = "Estimado proveedor: la licitación número 123 vence mañana a las 18:00. " * 2
    result = saving(text)
    assert result.before.encoding == "ucs2"
    assert result.after.encoding == "gsm7"
    assert result.before.parts == 3 and result.after.parts == 1
    assert result.parts_saved == 2
    assert result.replaced == ("ó", "ú")
    assert is_gsm7(result.text)


def test_saving_of_text_with_an_emoji_still_counts_ucs2() -> None:
    result = saving("Canción 😀")
    assert result.after.encoding == "ucs2"
    assert result.after.ucs2_chars == ("😀",)
    assert result.replaced == ("ó",)


def test_the_tables_dump_to_json_for_the_portal() -> None:
    dumped = json.loads(json.dumps({"basic": GSM7_BASIC, "extended": dict(GSM7_EXTENDED)}))
    assert len(dumped["basic"]) == 128
    assert dumped["extended"]["€"] == 0x65


# --- properties ------------------------------------------------------------------------------


@given(any_text)
def test_parts_join_to_the_text_and_stay_within_budget(text: str) -> None:
    info = analyse(text)
    parts = split(text)
    assert "".join(p.text for p in parts) == text
    assert len(parts) == info.parts
    assert sum(p.units for p in parts) == info.units
    budget = info.per_part
    assert all(p.units <= budget for p in parts)
    if info.parts > 1:
        assert info.remaining == budget - parts[-1].units


@given(any_text)
def test_each_payload_decodes_to_its_part(text: str) -> None:
    for part in split(text):
        assert decode_payload(part.payload, part.data_coding) == part.text


@given(gsm_text)
def test_gsm7_round_trip_and_no_escape_split(text: str) -> None:
    assert decode_gsm7(encode_gsm7(text)) == text
    for part in split(text):
        assert not part.payload.endswith(b"\x1b") or part.payload.endswith(b"\x1b\x1b")
        assert decode_gsm7(part.payload) == part.text


@given(any_text)
def test_to_gsm_never_costs_more_parts(text: str) -> None:
    result = saving(text)
    assert result.after.parts <= result.before.parts or result.after.encoding == "gsm7"
    assert set(result.after.ucs2_chars) <= set(result.before.ucs2_chars) | set(result.text)
