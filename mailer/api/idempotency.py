"""``Idempotency-Key`` on the API's POST routes: the HTTP side of
:mod:`mailer.accounts.idempotency` (read it for the states and what a crash can do).

The middleware notices the header, hashes the request body as it is read, and holds the
response of a request that claimed its key until the response is stored, so a client
that got an answer always finds it stored.  The claim itself is made by
``claim_for_request``, called by the API's authentication dependency: the key belongs to
the calling application, and a key reused by another application is another key.  A
stored response comes back through :class:`Replay`, an exception the app turns into the
response, with ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer.accounts import idempotency
from mailer.accounts.service import Principal
from mailer.core.config import Settings

log = logging.getLogger(__name__)

SCOPE_KEY = "mailer.idempotency"
HEADER = b"idempotency-key"
KEPT_HEADERS = ("content-type", "location", "content-language")


@dataclass
class RequestKey:
    key: str
    body: Any = field(default_factory=hashlib.sha256)
    claim: idempotency.Claim | None = None
    settings: Settings | None = None


class Replay(Exception):
    """Not an error: a stored response on its way out."""

    def __init__(self, stored: idempotency.StoredResponse) -> None:
        super().__init__("replayed response")
        self.stored = stored


def claim_for_request(request: Request, session: Session, principal: Principal) -> None:
    """Claim the request's key, if it has one, for *principal*'s application; raise
    :class:`Replay` with the first response when this is a retry of a finished request."""
    held: RequestKey | None = request.scope.get(SCOPE_KEY)
    if held is None:
        return
    key = idempotency.check_key(held.key)
    settings: Settings = request.app.state.settings
    outcome = idempotency.claim(
        settings,
        principal.actor,
        key,
        idempotency.fingerprint(
            request.method,
            request.url.path,
            request.url.query,
            held.body.hexdigest(),  # FastAPI reads the body before the dependencies run
        ),
        lease=timedelta(seconds=settings.api.idempotency_lease_seconds),
        wait_seconds=settings.api.idempotency_wait_seconds,
    )
    if isinstance(outcome, idempotency.StoredResponse):
        raise Replay(outcome)
    held.claim, held.settings = outcome, settings
    idempotency.bind_to_transaction(session, outcome)


class IdempotencyMiddleware:
    """For ``POST /api/...`` with an ``Idempotency-Key``: hash the body, hold and store
    the response of a claimed key before sending it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        value = next((v for k, v in scope["headers"] if k == HEADER), None)
        if value is None:
            await self.app(scope, receive, send)
            return
        held = RequestKey(value.decode("latin-1").strip())
        scope[SCOPE_KEY] = held

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                held.body.update(message.get("body", b""))
            return message

        parts: list[Message] = []

        async def holding_send(message: Message) -> None:
            if held.claim is None or held.settings is None:
                await send(message)
                return
            parts.append(message)
            if message["type"] != "http.response.body" or message.get("more_body", False):
                return
            start = parts[0]
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in start.get("headers", [])
                if name.decode("latin-1").lower() in KEPT_HEADERS
            }
            body = b"".join(part.get("body", b"") for part in parts[1:])
            claimed, held.claim = held.claim, None
            try:
                await run_in_threadpool(
                    idempotency.finish, held.settings, claimed, start["status"], headers, body
                )
            except Exception:  # the client still gets its answer; retries: "lost"
                log.exception("could not store the response of an idempotent request")
            for part in parts:
                await send(part)

        try:
            await self.app(scope, hashing_receive, holding_send)
        finally:
            if held.claim is not None and held.settings is not None:
                # No complete response (an unexpected error): free the key unless the
                # work was committed.
                await run_in_threadpool(idempotency.abandon, held.settings, held.claim)


async def replay(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Replay)
    stored = exc.stored
    return Response(
        content=stored.body,
        status_code=stored.status,
        headers={**stored.headers, "Idempotent-Replayed": "true"},
    )


def install(app: FastAPI) -> None:
    """Add the middleware (call before other middleware, so it is the innermost one and
    stores responses as the routes made them) and the replay handler."""
    app.add_middleware(IdempotencyMiddleware)
    app.add_exception_handler(Replay, replay)
