"""Tracking tokens, the pixel, the HTML decoration, IP privacy and every machine rule."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from mailer.core.config import TrackingSettings
from mailer.core.tokens import BadToken, sign
from mailer.tracking import classify as rules
from mailer.tracking.classify import Activity, classify_click, classify_open
from mailer.tracking.ingest import private_ip
from mailer.tracking.urls import (
    CLICK,
    PIXEL_GIF,
    click_url,
    decorate_html,
    link_rewriter,
    open_url,
    read_click_token,
    read_open_token,
    read_trap_token,
    read_web_token,
    trap_url,
    web_version_url,
)

SECRET = "s" * 40
BASE = "https://seguimiento.example.pe/"
SENT = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
RULES = TrackingSettings()
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def token_of(url: str, path: str) -> str:
    prefix = BASE.rstrip("/") + path
    assert url.startswith(prefix)
    return url[len(prefix) :]


def test_pixel_is_a_43_byte_transparent_gif() -> None:
    assert len(PIXEL_GIF) == 43
    image = Image.open(io.BytesIO(PIXEL_GIF))
    assert image.format == "GIF" and image.size == (1, 1)
    assert image.convert("RGBA").getpixel((0, 0))[3] == 0  # transparent


def test_tokens_round_trip_and_are_short() -> None:
    opened = token_of(open_url(BASE, SECRET, 123456), "/t/o/")
    assert read_open_token(SECRET, opened) == 123456 and len(opened) < 30
    assert read_web_token(SECRET, token_of(web_version_url(BASE, SECRET, 7), "/t/w/")) == 7
    assert read_trap_token(SECRET, token_of(trap_url(BASE, SECRET, 8), "/t/h/")) == 8
    target = "https://www.example.pe/portal?c=C00001&x=a.b"
    clicked = read_click_token(SECRET, token_of(click_url(BASE, SECRET, 9, 2, target), "/t/c/"))
    assert (clicked.message_id, clicked.link, clicked.url) == (9, 2, target)
    rewritten = link_rewriter(BASE, SECRET, 9)(2, target)
    assert rewritten == click_url(BASE, SECRET, 9, 2, target)


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # tampered MAC
        lambda t: sign(SECRET, "open", "999").split(".")[0] + "." + t.split(".")[1],  # swapped
        lambda t: "garbage",
        lambda t: "",
    ],
)
def test_forged_tokens_are_refused(forge: object) -> None:
    token = token_of(open_url(BASE, SECRET, 42), "/t/o/")
    with pytest.raises(BadToken):
        read_open_token(SECRET, forge(token))  # type: ignore[operator]


def test_tokens_of_another_install_or_purpose_are_refused() -> None:
    other = token_of(open_url(BASE, "another install's secret " * 2, 42), "/t/o/")
    with pytest.raises(BadToken):
        read_open_token(SECRET, other)
    trap = token_of(trap_url(BASE, SECRET, 42), "/t/h/")
    with pytest.raises(BadToken):
        read_open_token(SECRET, trap)  # a trap token is not an open token
    with pytest.raises(BadToken):  # an open token is not a click token
        read_click_token(SECRET, token_of(open_url(BASE, SECRET, 42), "/t/o/"))


def test_a_click_token_never_leads_outside_http() -> None:
    for payload in (
        "1.0.javascript:alert(1)",
        "1.0.//evil.example",
        "1.x.https://a.pe",
        "x.0.https://a.pe",
    ):
        with pytest.raises(BadToken):
            read_click_token(SECRET, sign(SECRET, CLICK, payload))


def test_decorate_puts_pixel_and_trap_before_body_end() -> None:
    html = "<html><BODY><p>Hola</p></BODY></html>"
    out = decorate_html(html, "https://t/o/x", "https://t/h/y")
    assert out.endswith("</BODY></html>") and out.index('src="https://t/o/x"') < out.index(
        "</BODY>"
    )
    assert 'href="https://t/h/y"' in out and "display:none" in out and 'tabindex="-1"' in out
    bare = decorate_html("<p>sin body</p>", "P", "T")
    assert bare.startswith("<p>sin body</p>") and 'src="P"' in bare and 'href="T"' in bare


def test_per_recipient_cost() -> None:
    html = "<html><body>" + "<p>texto</p>" * 2000 + "</body></html>"
    rounds = 2000
    started = time.perf_counter()
    for message_id in range(rounds):
        link = link_rewriter(BASE, SECRET, message_id)
        for index in range(5):
            link(index, f"https://www.example.pe/p/{index}")
        decorate_html(html, open_url(BASE, SECRET, message_id), trap_url(BASE, SECRET, message_id))
        web_version_url(BASE, SECRET, message_id)
    per_recipient = (time.perf_counter() - started) / rounds
    assert per_recipient < 500e-6, f"{per_recipient * 1e6:.1f} µs per recipient"


def test_private_ip_truncates_or_hashes() -> None:
    assert private_ip("203.0.113.77", "truncate", SECRET) == "203.0.113.0/24"
    assert private_ip("2001:db8:abcd:12:1::5", "truncate", SECRET) == "2001:db8:abcd::/48"
    hashed = private_ip("203.0.113.77", "hash", SECRET)
    assert "203" not in hashed and len(hashed) == 24
    assert hashed == private_ip("203.0.113.77", "hash", SECRET)
    assert hashed != private_ip("203.0.113.77", "hash", "other secret")
    assert (
        private_ip("not an ip", "truncate", SECRET) == "" and private_ip("", "hash", SECRET) == ""
    )


def _open(
    ua: str = CHROME,
    *,
    after: float = 3600,
    ip: str = "190.12.1.1",
    method: str = "GET",
    activity: Activity | None = None,
    sent: datetime | None = SENT,
) -> list[str]:
    return classify_open(
        at=SENT + timedelta(seconds=after),
        method=method,
        user_agent=ua,
        ip=ip,
        sent_at=sent,
        activity=activity or Activity(),
        rules=RULES,
    )


def _click(
    ua: str = CHROME,
    *,
    after: float = 3600,
    link: int = 0,
    method: str = "GET",
    activity: Activity | None = None,
    sent: datetime | None = SENT,
) -> list[str]:
    return classify_click(
        at=SENT + timedelta(seconds=after),
        method=method,
        user_agent=ua,
        link=link,
        sent_at=sent,
        activity=activity or Activity(),
        rules=RULES,
    )


def test_a_person_is_human() -> None:
    assert _open() == [] and _click() == []
    # Gmail's proxy fetching long after delivery is a person opening the message.
    gmail = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    assert _open(gmail, after=7200) == []


def test_apple_mail_privacy_protection() -> None:
    assert _open("Mozilla/5.0", after=2) == [rules.APPLE_MPP]
    assert _open("Mozilla/5.0", after=86400) == [rules.APPLE_MPP]
    assert _open(CHROME, ip="17.58.1.20") == [rules.APPLE_MPP]


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    ],
)
def test_image_proxy_prefetch_on_delivery(agent: str) -> None:
    assert _open(agent, after=5) == [rules.PROXY_PREFETCH]
    assert _open(agent, after=5, sent=None) == [rules.PROXY_PREFETCH]
    assert _open(agent, after=RULES.prefetch_window_seconds + 1) == []


@pytest.mark.parametrize(
    "agent",
    [
        "Barracuda Sentinel (EE)",
        "Mozilla/5.0 (compatible; Mimecast URL Protect)",
        "Proofpoint URL Defense",
        "Microsoft Office Existence Discovery",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
        "curl/8.5.0",
        "python-requests/2.32.3",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0 Safari/537.36",
    ],
)
def test_known_scanner_agents(agent: str) -> None:
    assert rules.SCANNER_AGENT in _click(agent)
    assert rules.SCANNER_AGENT in _open(agent)


def test_empty_agent_and_head_requests() -> None:
    assert _click("") == [rules.NO_USER_AGENT]
    assert _click(method="HEAD") == [rules.HEAD_REQUEST]
    assert _open(method="HEAD") == [rules.HEAD_REQUEST]


def test_clicks_right_after_sending_are_scanners() -> None:
    assert _click(after=RULES.scanner_window_seconds - 1) == [rules.TOO_SOON]
    assert _click(after=-3) == [rules.TOO_SOON]  # before the send was even recorded
    assert _click(sent=None) == [rules.TOO_SOON]  # still being sent
    assert _click(after=RULES.scanner_window_seconds + 1) == []


def test_hidden_link_marks_nearby_activity() -> None:
    trap = Activity(traps=[SENT + timedelta(seconds=3600)])
    assert _click(after=3620, activity=trap) == [rules.TRAP]
    assert _open(after=3580, activity=trap) == [rules.TRAP]
    assert _click(after=3600 + RULES.trap_window_seconds + 5, activity=trap) == []


def test_many_links_in_a_second_are_a_machine() -> None:
    at = SENT + timedelta(seconds=3600)
    burst = Activity(clicks=[(at + timedelta(milliseconds=300), 1)])
    assert _click(link=0, activity=burst) == [rules.BURST]
    same_link = Activity(clicks=[(at + timedelta(milliseconds=300), 0)])
    assert _click(link=0, activity=same_link) == []  # a double click on one link is a person
    later = Activity(clicks=[(at + timedelta(seconds=5), 1)])
    assert _click(link=0, activity=later) == []
