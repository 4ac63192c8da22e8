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
