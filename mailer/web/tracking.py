"""Public tracking endpoints: open pixel, click redirect, hidden trap link, web version,
and the unsubscribe page with its RFC 8058 one-click POST.  The token is the credential.

``/t/o``, ``/t/c`` and ``/t/h`` are plain ASGI endpoints (no request object, no dependency
injection, no database): they read the token, put a hit in the app's
:class:`~mailer.tracking.ingest.HitBuffer` and answer.  :class:`TrackingApp` (the app
``create_app`` builds) serves the same three before any middleware; the routes stay for an
app built otherwise, and :class:`TrackingFastPath` puts the same in front of any app.
"""

from __future__ import annotations

import binascii
import gc
import hmac
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.routing import Route

from mailer.core.errors import MailerError
from mailer.core.tokens import BadToken
from mailer.tracking import service as tracking
from mailer.tracking.ingest import CLICK, OPEN, TRAP, WEB, Hit, HitBuffer
from mailer.tracking.urls import CLICK_PATH, OPEN_PATH, PIXEL_GIF, TRAP_PATH
from mailer.web.auth import SessionDep
from mailer.web.pages import client_ip, render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_buffer_lock = threading.Lock()


def hit_buffer(app: Any) -> HitBuffer:
    """The app's buffer of tracking hits (created, and its writer started, on first use)."""
    buffer: HitBuffer | None = getattr(app.state, "tracking_hits", None)
    if buffer is None:
        with _buffer_lock:
            buffer = getattr(app.state, "tracking_hits", None)
            if buffer is None:
                buffer = HitBuffer(app.state.settings)
                app.state.tracking_hits = buffer
    return buffer


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Everything imported and built so far lives as long as the process: out of the
    # collector's sight, a full collection no longer walks these ~200,000 objects, which
    # stopped the event loop (and every request in flight) for 50-130 ms each time.
    gc.freeze()
    try:
        yield
    finally:
        buffer: HitBuffer | None = getattr(app.state, "tracking_hits", None)
        if buffer is not None:
            buffer.stop()  # what is still buffered is written before the process ends
        gc.unfreeze()  # an app started and stopped again in one process (tests)


router = APIRouter(include_in_schema=False, lifespan=_lifespan)

_NO_STORE = [
    (b"cache-control", b"no-store, no-cache, must-revalidate, private"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-robots-tag", b"noindex, nofollow"),
]
_PIXEL_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL_GIF)).encode()),
    *_NO_STORE,
]
_NOT_FOUND = "Enlace no válido.\n".encode()
_NOT_FOUND_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_NOT_FOUND)).encode()),
    *_NO_STORE,
]
_EMPTY_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"0"), *_NO_STORE]


def _agent(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"user-agent":
            return str(value.decode("latin-1"))
    return ""


def _hit(scope: Scope, kind: str, message_id: int, link: int = -1, url: str = "") -> Hit:
    client = scope.get("client")
    return Hit(
        kind,
        message_id,
        time.time(),
        scope["method"],
        _agent(scope),
        client[0] if client else "",
        link,
        url,
    )


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_MAC_BYTES = 12  # core.tokens' default
_OPEN = f"{OPEN}\x00".encode()
_CLICK = f"{CLICK}\x00".encode()
_TRAP = f"{TRAP}\x00".encode()


def _unb64(text: str) -> bytes:
    """``core.tokens._unb64`` without ``base64``'s Python-level wrappers."""
    data = text.encode("ascii")  # UnicodeEncodeError (a ValueError) as base64 raises
    return binascii.a2b_base64(data.translate(_FROM_URLSAFE) + b"=" * (-len(data) % 4))


class TokenReader:
    """The tracking tokens of one install, read on the hot path: what
    ``urls.read_open_token``, ``read_click_token`` and ``read_trap_token`` do (a
    ``core.tokens`` token: HMAC-SHA256 with the secret over the purpose and the payload,
    a 96-bit MAC), with the key encoded once and OpenSSL's one-shot HMAC (a third of the
    time).  The unit tests hold it to ``core.tokens.unsign`` and ``urls``."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _payload(self, purpose: bytes, token: str) -> str:
        encoded, dot, mac_text = token.partition(".")
        if not dot:
            raise BadToken("malformed token")
        try:
            raw = _unb64(encoded)
            payload = raw.decode()
            given = _unb64(mac_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadToken("malformed token") from exc
        expected = hmac.digest(self._key, purpose + raw, "sha256")[:_MAC_BYTES]
        if not hmac.compare_digest(given, expected):
            raise BadToken("token signature does not match")
        return payload

    def open(self, token: str) -> int:
        return _message_id(self._payload(_OPEN, token))

    def trap(self, token: str) -> int:
        return _message_id(self._payload(_TRAP, token))

    def click(self, token: str) -> tuple[int, int, str]:
        """(message, link, url); the url is http(s), as this install signs no other."""
        message, _, rest = self._payload(_CLICK, token).partition(".")
        link, _, url = rest.partition(".")
        if not link.isdigit() or not url[:8].lower().startswith(("http://", "https://")):
            raise BadToken("malformed token")
        return _message_id(message), int(link), url


def _message_id(payload: str) -> int:
    if not payload.isdigit() or len(payload) > 18:
        raise BadToken("malformed token")
    return int(payload)


@lru_cache(maxsize=8)
def token_reader(secret: str) -> TokenReader:
    return TokenReader(secret)


async def serve_hit(app: Any, scope: Scope, send: Send) -> bool:
    """Answer a request on ``/t/o``, ``/t/c`` or ``/t/h``; False for any other path."""
    path: str = scope["path"]
    if scope["method"] not in ("GET", "HEAD") or not path.startswith("/t/"):
        return False
    prefix = path[:5]
    token = path[5:]
    tokens = token_reader(app.state.settings.secret_key)
    try:
        if prefix == OPEN_PATH:
            hit_buffer(app).add(_hit(scope, OPEN, tokens.open(token)))
            await _answer(send, 200, _PIXEL_HEADERS, PIXEL_GIF)
        elif prefix == CLICK_PATH:
            message_id, link, url = tokens.click(token)
            hit_buffer(app).add(_hit(scope, CLICK, message_id, link, url))
            location = url.encode("utf-8")
            headers = [
                (b"location", location),
                (b"content-length", b"0"),
                (b"referrer-policy", b"no-referrer"),
                *_NO_STORE,
            ]
            await _answer(send, 302, headers, b"")
        elif prefix == TRAP_PATH:
            hit_buffer(app).add(_hit(scope, TRAP, tokens.trap(token)))
            await _answer(send, 200, _EMPTY_HEADERS, b"")
        else:
            return False
    except (BadToken, ValueError, UnicodeError):
        await _answer(send, 404, _NOT_FOUND_HEADERS, _NOT_FOUND)
    return True


class _HitEndpoint:
    """A plain ASGI endpoint for the Starlette routes below."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await serve_hit(scope["app"], scope, send):
            await _answer(send, 404, _NOT_FOUND_HEADERS, _NOT_FOUND)


for _prefix in (OPEN_PATH, CLICK_PATH, TRAP_PATH):
    router.routes.append(
        Route(
            f"{_prefix}{{token}}", _HitEndpoint(), methods=["GET", "HEAD"], include_in_schema=False
        )
    )


class TrackingFastPath:
    """ASGI middleware: serve ``/t/o``, ``/t/c`` and ``/t/h`` before the app's middleware
    (sessions, metrics) and routing; everything else goes to *app*.

    Wrap an app with it (``TrackingFastPath(app)``, *app* having the tracking buffer and
    settings in its state) or add it as a middleware (``app.add_middleware``: the FastAPI
    app is then ``scope["app"]``).  ``create_app``'s :class:`TrackingApp` does the same
    itself."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await serve_hit(scope.get("app", self.app), scope, send):
            return
        await self.app(scope, receive, send)


class TrackingApp(FastAPI):
    """The FastAPI app, answering ``/t/o``, ``/t/c`` and ``/t/h`` before anything else:
    before FastAPI's per-request telemetry check, its error and body-limit wrappers, the
    session and metrics middleware and the routing (``create_app`` builds one).  Through
    all of them a hit costs some 30 times as much CPU (0.5 ms instead of 15 us), which
    bounds a 2-core host to some 2,500 hits a second."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await serve_hit(self, scope, send):
            return
        await super().__call__(scope, receive, send)


# -- web version -------------------------------------------------------------------------

WEB_VERSION_HEADERS = {
    # The message is user-authored HTML on the portal's origin: no script, no forms, no
    # access to the origin; links still open (in a new tab or in place).
    "Content-Security-Policy": (
        "sandbox allow-popups allow-popups-to-escape-sandbox "
        "allow-top-navigation-by-user-activation; default-src 'none'; "
        "img-src https: http: data:; style-src 'unsafe-inline'; font-src https: data:"
    ),
    "Cache-Control": "no-store, private",
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
}


@router.get("/t/w/{token}")
def web_version(request: Request, token: str, session: SessionDep) -> Response:
    settings = request.app.state.settings
    try:
        version = tracking.web_version(session, settings.base_url, settings.secret_key, token)
    except (BadToken, MailerError):
        return render(
            request, "tracking/unavailable.html", status_code=404, title="Mensaje no disponible"
        )
    scope = request.scope
    hit_buffer(request.app).add(_hit(scope, WEB, version.message_id))
    return HTMLResponse(version.html, headers=WEB_VERSION_HEADERS)


# -- unsubscribe -----------------------------------------------------------------------


def _invalid(request: Request) -> HTMLResponse:
    return render(request, "tracking/unsubscribe.html", status_code=404, invalid=True)


@router.get("/u/{token}")
def unsubscribe_page(request: Request, token: str, session: SessionDep) -> HTMLResponse:
    """Confirm, choose a list, or come back (resubscribe)."""
    try:
        prefs = tracking.preferences(session, request.app.state.settings.secret_key, token)
    except (BadToken, MailerError):
        return _invalid(request)
    return render(
        request, "tracking/unsubscribe.html", prefs=prefs, target=prefs.target, token=token
    )


@router.post("/u/{token}")
def unsubscribe_submit(
    request: Request,
    token: str,
    session: SessionDep,
    list_unsubscribe: Annotated[str, Form(alias="List-Unsubscribe")] = "",
    action: Annotated[str, Form()] = "all",
    list_id: Annotated[int | None, Form()] = None,
) -> Response:
    """RFC 8058 one-click (``List-Unsubscribe=One-Click``) and the page's buttons alike.

    No CSRF token: mail providers POST here directly; the signed token is the credential.
    Replays are harmless: an address already unsubscribed is left as it is.
    """
    one_click = list_unsubscribe == "One-Click"
    secret = request.app.state.settings.secret_key
    done = "all"
    try:
        if one_click or action == "all":
            tracking.unsubscribe(
                session, secret, token, source="one-click" if one_click else "page"
            )
        elif action == "list" and list_id is not None:
            tracking.unsubscribe(session, secret, token, source="page", list_id=list_id)
            done = "list"
        elif action == "resubscribe":
            tracking.resubscribe(session, secret, token, ip=client_ip(request) or "")
            done = "resubscribed"
        else:
            return render(request, "tracking/unsubscribe.html", status_code=400, invalid=True)
    except (BadToken, MailerError):
        if one_click:
            return Response(status_code=404)
        return _invalid(request)
    session.commit()
    if one_click:
        return Response(status_code=200)
    prefs = tracking.preferences(session, secret, token)
    return render(
        request,
        "tracking/unsubscribe.html",
        prefs=prefs,
        target=prefs.target,
        token=token,
        done=done,
    )
