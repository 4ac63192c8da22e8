"""check_syntax: the ASCII fast path must agree with email-validator on everything it takes."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.cleaning.service import (
    ascii_fast_path,
    check_syntax,
    domain_forms,
    split_address,
)


def reference(address: str) -> tuple[bool, str]:
    """The verdict email-validator alone gives (check_syntax before the fast path)."""
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError:
        return False, ""
    return True, result.normalized.lower()


# Near-valid ASCII addresses: the characters and shapes where the two paths could disagree
# (specials, quotes, double dots and dashes, xn-- labels, reserved TLDs, digits in TLDs).
LOCAL_CHARS = "aZ9._-+!#$%&'*/=?^`{|}~\"(),:;<>@[\\] "
PLAIN_LOCAL = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._+-]{0,20}", fullmatch=True)
PLAIN_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
LABELS = st.one_of(
    PLAIN_LABEL,
    st.text("abcXYZ019-", min_size=1, max_size=8),
    st.sampled_from(["xn--espaa-rta", "xn--bcher-kva", "ab--cd", "-a", "a-", "a" * 64]),
)
TLDS = st.one_of(
    st.from_regex(r"[a-zA-Z]{1,6}", fullmatch=True),
    st.sampled_from(["localhost", "local", "test", "invalid", "onion", "arpa", "example"]),
    st.sampled_from(["c0m", "1", "x-y", ""]),
)


@st.composite
def odd_addresses(draw: st.DrawFn) -> str:
    local = draw(
        st.one_of(
            PLAIN_LOCAL,
            st.text(LOCAL_CHARS, min_size=0, max_size=12),
            st.text("abcXYZ09._+-", min_size=60, max_size=70),
        )
    )
    labels = draw(st.lists(LABELS, min_size=0, max_size=3))
    domain = ".".join([*labels, draw(TLDS)])
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return f"{padding}{local}@{domain}{padding}"


@st.composite
def plain_addresses(draw: st.DrawFn) -> str:
    local = draw(PLAIN_LOCAL)
    tricky = st.sampled_from(["xn--espaa-rta", "xn--abc", "ab--cd", "a--b"])
    labels = draw(st.lists(st.one_of(PLAIN_LABEL, tricky), min_size=1, max_size=3))
    tld = draw(st.one_of(st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True), TLDS))
    return f"{local}@{'.'.join(labels)}.{tld}"


addresses = st.one_of(plain_addresses(), odd_addresses())


def test_fast_path_and_email_validator_agree() -> None:
    fast_hits: list[bool] = []

    @settings(
        max_examples=600,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(addresses)
    def agree(address: str) -> None:
        fast = ascii_fast_path(address.strip())
        expected_ok, expected_normalized = reference(address)
        if fast is not None:
            assert expected_ok, f"fast path accepted {address!r}, email-validator refuses it"
            assert fast == expected_normalized
        verdict = check_syntax(address)
        assert verdict.ok == expected_ok
        if expected_ok:
            assert verdict.normalized == expected_normalized
        fast_hits.append(fast is not None)

    agree()
    # The generator must exercise both paths, or the agreement above proves little.
    assert fast_hits.count(True) > len(fast_hits) // 5
    assert fast_hits.count(False) > len(fast_hits) // 5


@pytest.mark.parametrize(
    "address",
    [
        "Juan.Perez@Gmail.com",
        "ventas+promo@empresa-ejemplo.com.pe",
        "o'brien@pucp.edu.pe",
        "a@b.co",
        "x_y-z@sub.domain.museum",
    ],
)
def test_plain_addresses_take_the_fast_path(address: str) -> None:
    assert ascii_fast_path(address) == address.lower()
    assert check_syntax(f"  {address} ") == check_syntax(address)
    assert check_syntax(address).normalized == reference(address)[1]


@pytest.mark.parametrize(
    "address",
    [
        "user@localhost",
        "user@mail.test",
        "user@x.onion",
        "user@host.local",
        "user@10.in-addr.arpa",
        "user@correo.xn--espaa-rta.pe",
        "user@ab--cd.com",
        "a" * 65 + "@example.pe",
        "user@domain.c0m",
        "user@-bad.pe",
        "a..b@domain.pe",
        '"quoted"@domain.pe',
        "josé@españa.pe",
    ],
)
def test_everything_else_goes_to_email_validator(address: str) -> None:
    assert ascii_fast_path(address) is None
    verdict = check_syntax(address)
    assert (verdict.ok, verdict.normalized if verdict.ok else "") == reference(address)


def test_internationalised_domains_are_normalised_to_unicode() -> None:
    assert check_syntax("Ana@Correo.XN--ESPAA-RTA.pe").normalized == "ana@correo.españa.pe"
    assert check_syntax("ana@correo.españa.pe").normalized == "ana@correo.españa.pe"
    assert domain_forms("Correo.España.PE.") == ("correo.españa.pe", "correo.xn--espaa-rta.pe")
    assert domain_forms("correo.xn--espaa-rta.pe") == domain_forms("correo.españa.pe")
    assert domain_forms("gmail.com") == ("gmail.com", "gmail.com")
    assert domain_forms("no domain") is None
    assert domain_forms("localhost") is None


def test_refusals_keep_the_address_and_a_reason() -> None:
    verdict = check_syntax("  juan@@gmail.com ")
    assert not verdict.ok
    assert verdict.normalized == "juan@@gmail.com"
    assert "@" in verdict.reason
    assert check_syntax("   ") == check_syntax("")
    assert check_syntax("").reason == "empty address"


def test_split_address() -> None:
    assert split_address("ventas@empresa.com.pe") == ("ventas", "empresa.com.pe")
    assert split_address("ana@correo.españa.pe") == ("ana", "correo.españa.pe")
