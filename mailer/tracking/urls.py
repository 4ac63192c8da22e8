"""The tracked URLs of a message and their tokens: open pixel, click redirect, web version
and the hidden trap link.  Pure functions, called once per recipient by the send path.

Tokens are ``core.tokens`` tokens (HMAC-SHA256 with the install's secret, 96-bit MAC, the
purpose under the MAC), so a token minted for one use is worthless for another and a token
of another install fails.  A click token carries its target URL under the signature: the
redirect goes only to a URL this install put in one of its messages (no open redirect),
needs no database read, and works alike for campaign and transactional messages, whose
links may be personalised per recipient.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from mailer.core.tokens import BadToken, sign, unsign

OPEN = "open"
CLICK = "click"
WEB = "web"
TRAP = "trap"

OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
WEB_PATH = "/t/w/"
TRAP_PATH = "/t/h/"

PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1x1 transparent GIF (43 bytes)."""


def _base(base_url: str) -> str:
    return base_url[:-1] if base_url.endswith("/") else base_url


def open_url(base_url: str, secret: str, message_id: int) -> str:
    return f"{_base(base_url)}{OPEN_PATH}{sign(secret, OPEN, str(message_id))}"


def click_url(base_url: str, secret: str, message_id: int, link_index: int, url: str) -> str:
    token = sign(secret, CLICK, f"{message_id}.{link_index}.{url}")
    return f"{_base(base_url)}{CLICK_PATH}{token}"


def web_version_url(base_url: str, secret: str, message_id: int) -> str:
    return f"{_base(base_url)}{WEB_PATH}{sign(secret, WEB, str(message_id))}"


def trap_url(base_url: str, secret: str, message_id: int) -> str:
    return f"{_base(base_url)}{TRAP_PATH}{sign(secret, TRAP, str(message_id))}"


def link_rewriter(base_url: str, secret: str, message_id: int) -> Callable[[int, str], str]:
    """The ``link_url`` of ``CompiledTemplate.render`` for one message."""
    base = _base(base_url)

    def link_url(index: int, url: str) -> str:
        return f"{base}{CLICK_PATH}{sign(secret, CLICK, f'{message_id}.{index}.{url}')}"

    return link_url


def decorate_html(html: str, pixel_url: str, trap_url: str) -> str:
    """*html* with the open pixel and the hidden trap link just before ``</body>`` (at the
    end when there is none).  The trap is an empty, hidden, unfocusable link: no person can
    follow it, link scanners that fetch every href do."""
    extra = (
        f'<a href="{trap_url}" style="display:none!important;font-size:0;line-height:0;'
        'max-height:0;overflow:hidden;mso-hide:all" aria-hidden="true" tabindex="-1"></a>'
        f'<img src="{pixel_url}" width="1" height="1" alt="" style="display:block;border:0;'
        'width:1px;height:1px;overflow:hidden" />'
    )
    at = html.rfind("</body>")
    if at < 0:
        at = html.lower().rfind("</body>")
    if at < 0:
        return html + extra
    return html[:at] + extra + html[at:]


def _message_id(payload: str) -> int:
    if not payload.isdigit() or len(payload) > 18:
        raise BadToken("malformed token")
    return int(payload)


def read_open_token(secret: str, token: str) -> int:
    """The message id of an open-pixel token; raises BadToken."""
    return _message_id(unsign(secret, OPEN, token))


def read_web_token(secret: str, token: str) -> int:
    return _message_id(unsign(secret, WEB, token))


def read_trap_token(secret: str, token: str) -> int:
    return _message_id(unsign(secret, TRAP, token))


@dataclass(frozen=True, slots=True)
class ClickTarget:
    message_id: int
    link: int
    url: str


def read_click_token(secret: str, token: str) -> ClickTarget:
    """Where a click token leads; raises BadToken (also for a target that is not http(s),
    which this install never signs)."""
    message, _, rest = unsign(secret, CLICK, token).partition(".")
    link, _, url = rest.partition(".")
    if not link.isdigit() or not url[:8].lower().startswith(("http://", "https://")):
        raise BadToken("malformed token")
    return ClickTarget(_message_id(message), int(link), url)


# -- SMS short links ------------------------------------------------------------------------

SMS_LINK = "sms-link"
SMS_LINK_PATH = "/s/"
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_SMS_MAC_BYTES = 6  # 48 bits: an SMS has no room for more, and a guess still lands nowhere


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _B36[digit] + digits
        if not number:
            return digits


def sms_link_code(secret: str, message_id: int, link_index: int) -> str:
    """The short, signed code of link *link_index* of SMS *message_id*: ``<id>-<n><mac>``
    in base 36 with an 8-character MAC (``/s/2n9c-0AbC12xyZ``), the target URL is looked
    up in the message's row (an SMS has no room to carry it)."""
    payload = f"{_base36(message_id)}-{_base36(link_index)}"
    mac = sign(secret, SMS_LINK, payload, mac_bytes=_SMS_MAC_BYTES).rsplit(".", 1)[1]
    return payload + mac


def sms_link_url(base_url: str, secret: str, message_id: int, link_index: int) -> str:
    return f"{_base(base_url)}{SMS_LINK_PATH}{sms_link_code(secret, message_id, link_index)}"


def read_sms_link_code(secret: str, code: str) -> tuple[int, int]:
    """(message id, link index) of a short code; raises BadToken."""
    head, sep, rest = code.partition("-")
    mac_length = 8  # base64 of 6 bytes
    if not sep or len(rest) <= mac_length or len(code) > 40:
        raise BadToken("malformed token")
    index_text = rest[:-mac_length]
    try:
        message_id, link_index = int(head, 36), int(index_text, 36)
    except ValueError:
        raise BadToken("malformed token") from None
    if head != _base36(message_id) or index_text != _base36(link_index):
        raise BadToken("malformed token")  # one writing per number: no aliases of a code
    expected = sms_link_code(secret, message_id, link_index)
    if not hmac.compare_digest(expected.encode(), code.encode()):
        raise BadToken("token signature does not match")
    return message_id, link_index
