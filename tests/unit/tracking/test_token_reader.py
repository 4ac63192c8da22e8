"""The hot path's TokenReader accepts exactly what ``urls.read_*_token`` (``core.tokens``)
accept, with the same results, and refuses everything else with BadToken."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.core.tokens import BadToken, sign
from mailer.tracking.urls import (
    CLICK,
    OPEN,
    TRAP,
    click_url,
    open_url,
    read_click_token,
    read_open_token,
    read_trap_token,
    trap_url,
)
from mailer.web.tracking import TokenReader

SECRET = "s" * 40
READER = TokenReader(SECRET)


def outcome(read: Callable[[], object]) -> object:
    try:
        return read()
    except (BadToken, ValueError) as exc:  # serve_hit answers 404 to both
        return type(exc) if isinstance(exc, BadToken) else ValueError


def click_of(token: str) -> object:
    target = read_click_token(SECRET, token)
    return (target.message_id, target.link, target.url)


def same(token: str) -> None:
    assert outcome(lambda: READER.open(token)) == outcome(lambda: read_open_token(SECRET, token))
    assert outcome(lambda: READER.trap(token)) == outcome(lambda: read_trap_token(SECRET, token))
    assert outcome(lambda: READER.click(token)) == outcome(lambda: click_of(token))


def test_valid_tokens_read_alike() -> None:
    target = "https://www.example.pe/p?q=ñ&a=b.c"
    assert READER.open(open_url("", SECRET, 123)[5:]) == 123
    assert READER.trap(trap_url("", SECRET, 9)[5:]) == 9
    assert READER.click(click_url("", SECRET, 77, 4, target)[5:]) == (77, 4, target)
    for token in (
        open_url("", SECRET, 123)[5:],
        trap_url("", SECRET, 9)[5:],
        click_url("", SECRET, 77, 4, target)[5:],
    ):
        same(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "MTIz.AAAAAAAAAAAAAAAA",
        "MTIz.AAAA.AAAA",
        "ñ.ñ",
        "MTIz.ñ",
        "%%.%%",
        sign(SECRET, OPEN, "12x"),
        sign(SECRET, OPEN, "1" * 19),
        sign(SECRET, OPEN, "²"),
        sign(SECRET, CLICK, "1.x.https://a.example/"),
        sign(SECRET, CLICK, "1.2.javascript:alert(1)"),
        sign(SECRET, CLICK, "1.2.ftp://a.example/"),
        sign(SECRET, CLICK, "1.2.HTTPS://A.EXAMPLE/"),
        sign(SECRET, TRAP, "5"),
        sign("other install " * 3, OPEN, "5"),
        sign(SECRET, OPEN, "5", mac_bytes=16),
        sign(SECRET, OPEN, "5") + "=",
        sign(SECRET, OPEN, "5").replace("-", "+"),
    ],
)
def test_odd_tokens_read_alike(token: str) -> None:
    same(token)


@settings(max_examples=300, deadline=None)
@given(
    message=st.integers(min_value=0, max_value=10**20),
    link=st.integers(min_value=0, max_value=50),
    url=st.text(max_size=40),
    cut=st.integers(min_value=0, max_value=80),
    junk=st.text(max_size=6),
)
def test_tampered_tokens_read_alike(message: int, link: int, url: str, cut: int, junk: str) -> None:
    for purpose, payload in (
        (OPEN, str(message)),
        (TRAP, str(message)),
        (CLICK, f"{message}.{link}.https://{url}"),
        (CLICK, f"{message}.{link}.{url}"),
    ):
        token = sign(SECRET, purpose, payload)
        same(token)
        same(token[:cut] + junk + token[cut:])
        same(token[:cut] + token[cut + 1 :])
