"""Judging one phone number: E.164 form, whether it is a real number for its region, and
whether SMS can reach it (mobiles only).

Built on libphonenumber's metadata (the ``phonenumbers`` package); Peru is the default
region.  The number's type comes from its numbering plan, never from a carrier lookup
(numbers are ported between carriers, so the carrier data would mislead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType


class PhoneKind(StrEnum):
    MOBILE = "mobile"
    FIXED_LINE = "fixed_line"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    VOIP = "voip"
    TOLL_FREE = "toll_free"
    OTHER = "other"
    UNKNOWN = "unknown"


_KINDS = {
    PhoneNumberType.MOBILE: PhoneKind.MOBILE,
    PhoneNumberType.FIXED_LINE: PhoneKind.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: PhoneKind.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.VOIP: PhoneKind.VOIP,
    PhoneNumberType.TOLL_FREE: PhoneKind.TOLL_FREE,
    PhoneNumberType.UNKNOWN: PhoneKind.UNKNOWN,
}
SMS_KINDS = frozenset({PhoneKind.MOBILE, PhoneKind.FIXED_LINE_OR_MOBILE})


@dataclass(frozen=True, slots=True)
class PhoneVerdict:
    raw: str
    ok: bool
    e164: str
    kind: PhoneKind
    sms_ok: bool
    reason: str = ""  # English template, empty when ok


# A number a spreadsheet turned into a float: "987654321.0", "9.87654321E+08".
_SPREADSHEET_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE]\+?\d+)?")
_DIGITS = re.compile(r"\d")


def _unmangle(raw: str) -> str:
    text = raw.strip()
    if _SPREADSHEET_NUMBER.fullmatch(text) and ("." in text or "e" in text.lower()):
        try:
            value = Decimal(text)
        except InvalidOperation:
            return text
        if value == value.to_integral_value():
            return str(int(value))
    return text


def _candidates(text: str, region: str) -> list[str]:
    """Ways to read *text*: as written, and the local habits libphonenumber does not know."""
    candidates = [text]
    if region == "PE":
        digits = "".join(_DIGITS.findall(text))
        if not text.startswith("+") and digits.startswith("051") and len(digits) == 12:
            candidates.append("+" + digits[1:])  # "051-987654321": the country code with a 0
        elif not text.startswith("+") and len(digits) == 7 and digits[0] in "2345678":
            candidates.append("01" + digits)  # a Lima fixed line written without its area code
    return candidates


# Peru's numbering plan gives the whole 9XX XXX XXX range to mobile services, so the most
# common input of all is answered without libphonenumber (~2 µs instead of ~120 µs; a test
# checks the two agree).  Everything else goes through libphonenumber.
_PE_MOBILE = re.compile(r"(?:\+51|0051)?(9\d{8})")
_SEPARATORS = str.maketrans("", "", " -.()\t")


def check_phone(raw: str, region: str = "PE") -> PhoneVerdict:
    """The verdict on *raw*: ok when it is a valid number (not merely a possible one) for
    *region* or the country its ``+`` prefix names; SMS only to mobiles."""
    if region == "PE":
        fast = _PE_MOBILE.fullmatch(raw.strip().translate(_SEPARATORS))
        if fast is not None:
            return PhoneVerdict(raw, True, "+51" + fast.group(1), PhoneKind.MOBILE, True)
    return check_phone_slowly(raw, region)


def check_phone_slowly(raw: str, region: str = "PE") -> PhoneVerdict:
    """:func:`check_phone` through libphonenumber only."""
    text = _unmangle(raw)
    if not _DIGITS.search(text):
        return PhoneVerdict(raw, False, "", PhoneKind.UNKNOWN, False, "not a phone number")
    number = None
    for candidate in _candidates(text, region):
        try:
            parsed = phonenumbers.parse(candidate, region)
        except NumberParseException:
            continue
        if number is None:
            number = parsed  # the reading as written, for the error message
        if phonenumbers.is_valid_number(parsed):
            number = parsed
            break
    if number is None:
        return PhoneVerdict(raw, False, "", PhoneKind.UNKNOWN, False, "not a phone number")
    if not phonenumbers.is_valid_number(number):
        # A possible-looking number outside the numbering plan: no E.164 to send to.
        return PhoneVerdict(raw, False, "", PhoneKind.UNKNOWN, False, "not a valid phone number")
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    kind = _KINDS.get(phonenumbers.number_type(number), PhoneKind.OTHER)
    return PhoneVerdict(raw, True, e164, kind, kind in SMS_KINDS)
