"""The HTTP application: API, portal, tracking, health and metrics in one ASGI app.

Stateless: run as many as needed behind a load balancer (``mailer serve`` runs one).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer import __version__
from mailer.analytics.service import ledger_totals
from mailer.api import errors as api_errors
from mailer.api.account import router as account_api_router
from mailer.api.audience import router as audience_api_router
from mailer.api.formats import install_formats
from mailer.api.idempotency import install as install_idempotency
from mailer.api.messages import router as messages_api_router
from mailer.api.oauth import router as oauth_api_router
from mailer.api.openapi import install_openapi
from mailer.api.routes import router as api_router
from mailer.api.sms import router as sms_api_router
from mailer.api.webhooks import router as webhooks_api_router
from mailer.core.config import Settings, get_settings
from mailer.core.errors import MailerError
from mailer.core.i18n import negotiate
from mailer.core.metrics import ERRORS, HTTP_LATENCY, HTTP_REQUESTS
from mailer.storage.db import get_engine, session_scope
from mailer.web.admin import router as admin_web_router
from mailer.web.audience import router as audience_web_router
from mailer.web.integrations import router as integrations_web_router
from mailer.web.routes import error_page, invalid_form
from mailer.web.routes import router as web_router
from mailer.web.shortlinks import router as shortlinks_router
from mailer.web.sms import router as sms_web_router
from mailer.web.studio import router as studio_router
from mailer.web.tracking import TrackingApp
from mailer.web.tracking import router as tracking_router
from mailer.web.webhooks import router as webhooks_web_router
from mailer.workers import broker_reachable, configure_broker, queue_depth

STATIC_DIR = Path(__file__).parent / "web" / "static"
LOOPBACK = {"127.0.0.1", "::1", "testclient"}  # the last one is FastAPI's test client


_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
_WEB_HEADERS = [*_SECURITY_HEADERS, (b"x-frame-options", b"SAMEORIGIN")]


class Measure:
    """Requests counted and timed per surface (API or portal), and the security headers
    added where a response lacks them: a plain ASGI middleware, as it wraps every request
    (``@app.middleware("http")`` would cost each API call a task and a streamed body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        surface = "api" if scope["path"].startswith("/api/") else "web"
        extra = _SECURITY_HEADERS if surface == "api" else _WEB_HEADERS
        started = time.perf_counter()
        status = 0

        async def send_measured(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in extra if pair[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        except Exception:
            ERRORS.labels(surface).inc()
            HTTP_REQUESTS.labels(surface, "5xx").inc()
            raise
        HTTP_LATENCY.labels(surface).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(surface, f"{status // 100}xx").inc()


class Admission:
    """At most *limit* requests of this process past this point at once; the others wait
    here, holding nothing.  Without it an overload starves itself: a request keeps its
    database connection between its trips through the thread pool, so with more requests
    in flight than connections, threads wait for connections that requests waiting for
    threads hold, until the pool times out (answers 500) and the rate collapses.

    A request's body (up to 1 MB) is read before it takes a place, so a slow client holds
    no place while it sends; larger uploads (imports) and static files do not wait here."""

    BODY_LIMIT = 1 << 20

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        chunked = length is None and any(k == b"transfer-encoding" for k, _ in scope["headers"])
        if chunked or (
            length is not None and (not length.isdigit() or int(length) > self.BODY_LIMIT)
        ):
            await self.app(scope, receive, send)
            return
        body: list[bytes] = []
        while True:  # read at once: the body is small (and often empty)
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before it finished sending: nothing to answer
            body.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        pending: list[Message] = [{"type": "http.request", "body": b"".join(body)}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        if self._slots is None:  # made in the server's event loop, on first use
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            await self.app(scope, replay, send)


class LedgerCollector(Collector):
    """Messages by ledger state and queue depth, read at scrape time from the source of truth."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        messages = GaugeMetricFamily(
            "mailer_messages", "Ledger rows by state (sent, failed, queued...)", labels=["state"]
        )
        try:
            with session_scope(self.settings) as session:
                for state, count in ledger_totals(session).items():
                    messages.add_metric([state], count)
        except Exception:
            ERRORS.labels("metrics").inc()
        yield messages
        depth = GaugeMetricFamily("mailer_queue_depth", "Queue messages waiting", labels=["queue"])
        for queue, count in queue_depth(configure_broker(self.settings)).items():
            depth.add_metric([queue], count)
        yield depth


_collector: LedgerCollector | None = None


def create_app(settings: Settings | None = None) -> FastAPI:
    global _collector
    settings = settings or get_settings()
    configure_broker(settings)
    # Tracking hits (pixel, click, trap), the busiest requests by far, are answered before
    # any middleware and the routing (TrackingApp).
    app = TrackingApp(
        title="mailer API",
        version=__version__,
        description="Campañas de correo y SMS: listas, plantillas, campañas, envíos.",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.settings = settings
    # Idempotency-Key on API POSTs: added first, so innermost: it stores the responses as the
    # routes made them (JSON), and a replay is rendered like any answer.
    install_idempotency(app)
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key,
        session_cookie="mailer_session",
        max_age=12 * 3600,
        same_site="lax",
        https_only=settings.effective_cookie_secure,
    )
    # JSON or XML on every /api/v1 route (Content-Type and Accept); the JSON path is free.
    install_formats(app)
    install_openapi(app)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/api/"):
            return api_errors.invalid_request(exc)
        return invalid_form(request, exc)

    @app.exception_handler(MailerError)
    async def mailer_error(request: Request, exc: MailerError) -> Response:
        if request.url.path.startswith("/api/"):
            return api_errors.json_error(exc, negotiate(request.headers.get("accept-language")))
        return error_page(request, exc)

    # Admission bounds the requests at work (tracking hits, answered before any middleware,
    # do not count); Measure, outermost, counts and times every request (waiting included)
    # and adds the security headers.
    app.add_middleware(Admission, limit=settings.http_concurrency)
    app.add_middleware(Measure)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        """Ready: the database and the broker are reachable."""
        checks = {"database": False, "broker": False}
        try:
            with get_engine(settings).connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:
            ERRORS.labels("readyz").inc()
        checks["broker"] = broker_reachable(configure_broker(settings))
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    if _collector is None:
        _collector = LedgerCollector(settings)
        REGISTRY.register(_collector)
    else:
        _collector.settings = settings

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: for the token holder, or for a scraper on this machine."""
        if settings.metrics_token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            allowed = hmac.compare_digest(given, settings.metrics_token)
        else:
            allowed = request.client is not None and request.client.host in LOOPBACK
        if not allowed:
            return PlainTextResponse("forbidden\n", status_code=403)
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # The two sending routes are the API's busiest: their routers come first, as a request
    # is matched against the routes in order.
    app.include_router(sms_api_router)
    app.include_router(messages_api_router)
    app.include_router(api_router)
    app.include_router(oauth_api_router)
    app.include_router(audience_api_router)
    app.include_router(webhooks_api_router)
    app.include_router(account_api_router)
    app.include_router(studio_router)
    app.include_router(audience_web_router)
    app.include_router(webhooks_web_router)
    app.include_router(admin_web_router)
    app.include_router(integrations_web_router)
    app.include_router(sms_web_router)
    app.include_router(tracking_router)
    app.include_router(shortlinks_router)
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
