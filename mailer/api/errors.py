"""Errors as JSON: ``{"error": {"code", "message", "field"}}`` with a fitting status."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mailer.core.errors import (
    AuthenticationFailed,
    Conflict,
    IllegalTransition,
    MailerError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationFailed,
)
from mailer.core.i18n import DEFAULT_LOCALE, localise
from mailer.core.tokens import BadToken

STATUS: tuple[tuple[type[MailerError], int], ...] = (
    (AuthenticationFailed, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (IllegalTransition, 409),
    (ValidationFailed, 422),
    (BadToken, 400),
    (RateLimited, 429),
)


def status_for(error: MailerError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 400)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "field": field}}


def json_error(exc: MailerError, locale: str = DEFAULT_LOCALE) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationFailed) else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(
        error_body(exc.code, localise(exc, locale), exc.field),
        status_code=status_for(exc),
        headers=headers,
    )


def invalid_request(exc: RequestValidationError) -> JSONResponse:
    """A request FastAPI could not validate, in the API's error shape."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    return JSONResponse(
        error_body("validation_failed", str(first.get("msg")), field), status_code=422
    )
