"""Public tracking endpoints: open pixel, click redirect, hidden trap link, web version,
and the unsubscribe page with its RFC 8058 one-click POST.  The token is the credential.

``/t/o``, ``/t/c`` and ``/t/h`` are plain ASGI endpoints (no request object, no dependency
injection, no database): they read the token, put a hit in the app's
:class:`~mailer.tracking.ingest.HitBuffer` and answer.  :class:`TrackingFastPath` serves
the same three before any middleware, for the hot path of a busy install.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.routing import Route

from mailer.core.errors import MailerError
from mailer.core.tokens import BadToken
from mailer.tracking import service as tracking
from mailer.tracking.ingest import CLICK, OPEN, TRAP, WEB, Hit, HitBuffer
from mailer.tracking.urls import (
    CLICK_PATH,
    OPEN_PATH,
    PIXEL_GIF,
    TRAP_PATH,
    read_click_token,
    read_open_token,
    read_trap_token,
)
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
    yield
    buffer: HitBuffer | None = getattr(app.state, "tracking_hits", None)
    if buffer is not None:
        buffer.stop()  # what is still buffered is written before the process ends


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


async def serve_hit(app: Any, scope: Scope, send: Send) -> bool:
    """Answer a request on ``/t/o``, ``/t/c`` or ``/t/h``; False for any other path."""
    path: str = scope["path"]
    if scope["method"] not in ("GET", "HEAD") or not path.startswith("/t/"):
        return False
    prefix = path[:5]
    token = path[5:]
    secret = app.state.settings.secret_key
    try:
        if prefix == OPEN_PATH:
            hit = _hit(scope, OPEN, read_open_token(secret, token))
            hit_buffer(app).add(hit)
            await _answer(send, 200, _PIXEL_HEADERS, PIXEL_GIF)
        elif prefix == CLICK_PATH:
            target = read_click_token(secret, token)
            hit_buffer(app).add(_hit(scope, CLICK, target.message_id, target.link, target.url))
            location = target.url.encode("utf-8")
            headers = [
                (b"location", location),
                (b"content-length", b"0"),
                (b"referrer-policy", b"no-referrer"),
                *_NO_STORE,
            ]
            await _answer(send, 302, headers, b"")
        elif prefix == TRAP_PATH:
            hit_buffer(app).add(_hit(scope, TRAP, read_trap_token(secret, token)))
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
    Wrap the FastAPI app with it: ``TrackingFastPath(create_app(settings))``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await serve_hit(self.app, scope, send):
            return
        await self.app(scope, receive, send)


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
