"""check_phone: Peruvian numbers as people (and spreadsheets) write them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.cleaning.phones import PhoneKind, check_phone, check_phone_slowly


@pytest.mark.parametrize(
    "raw",
    [
        "987654321",
        "987 654 321",
        "987-654-321",
        "+51 987654321",
        "+51 987 654 321",
        "51987654321",
        "051-987654321",
        "0051 987654321",
        "987654321.0",
        "9.87654321E+08",
    ],
)
def test_peruvian_mobiles_can_receive_sms(raw: str) -> None:
    verdict = check_phone(raw)
    assert verdict.ok, verdict.reason
    assert (verdict.e164, verdict.kind, verdict.sms_ok) == ("+51987654321", PhoneKind.MOBILE, True)
    assert verdict.raw == raw
    assert verdict.reason == ""


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("(01) 4123456", "+5114123456"),
        ("01 412 3456", "+5114123456"),
        ("014123456", "+5114123456"),
        ("412-3456", "+5114123456"),  # Lima, written without its area code
        ("(044) 234567", "+5144234567"),  # Trujillo
    ],
)
def test_fixed_lines_are_valid_but_not_for_sms(raw: str, e164: str) -> None:
    verdict = check_phone(raw)
    assert verdict.ok
    assert (verdict.e164, verdict.kind, verdict.sms_ok) == (e164, PhoneKind.FIXED_LINE, False)


def test_toll_free_is_not_for_sms() -> None:
    verdict = check_phone("0800 12345")
    assert (verdict.ok, verdict.kind, verdict.sms_ok) == (True, PhoneKind.TOLL_FREE, False)


def test_a_plus_prefix_overrides_the_default_region() -> None:
    uk = check_phone("+44 7911 123456")
    assert (uk.e164, uk.kind, uk.sms_ok) == ("+447911123456", PhoneKind.MOBILE, True)
    us = check_phone("650 253 0000", region="US")
    assert (us.e164, us.kind, us.sms_ok) == ("+16502530000", PhoneKind.FIXED_LINE_OR_MOBILE, True)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "not a phone number"),
        ("sin teléfono", "not a phone number"),
        ("123", "not a valid phone number"),
        ("98765432", "not a valid phone number"),  # a digit short: possible, not valid
        ("+51 187654321", "not a valid phone number"),
        ("9876543210", "not a valid phone number"),
    ],
)
def test_invalid_numbers_say_why(raw: str, reason: str) -> None:
    verdict = check_phone(raw)
    assert not verdict.ok and not verdict.sms_ok
    assert verdict.reason == reason
    assert verdict.e164 == ""
    assert verdict.kind is PhoneKind.UNKNOWN


@settings(max_examples=500, deadline=None)
@given(
    number=st.integers(min_value=900_000_000, max_value=999_999_999),
    prefix=st.sampled_from(["", "+51", "+51 ", "0051", "0051-"]),
    separator=st.sampled_from(["", " ", "-", "."]),
)
def test_the_peruvian_mobile_fast_path_agrees_with_libphonenumber(
    number: int, prefix: str, separator: str
) -> None:
    digits = str(number)
    raw = prefix + separator.join((digits[:3], digits[3:6], digits[6:]))
    assert check_phone(raw) == check_phone_slowly(raw)
