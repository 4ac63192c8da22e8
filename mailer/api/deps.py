"""Dependencies: the session, the calling application (authenticated, rate-limited), role
and scope checks, and the claim of an ``Idempotency-Key``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailer.accounts.roles import Permission, require
from mailer.accounts.scopes import Scope, require_scope
from mailer.accounts.service import (
    ACCESS_TOKEN_PREFIX,
    Principal,
    verify_access_token,
    verify_api_key,
)
from mailer.api.idempotency import claim_for_request
from mailer.api.limits import limiter_for
from mailer.core.config import Settings
from mailer.core.errors import AuthenticationFailed
from mailer.core.i18n import negotiate
from mailer.storage.db import get_engine


def request_locale(accept_language: Annotated[str | None, Header()] = None) -> str:
    """Messages in Spanish unless the caller asks for English (``Accept-Language: en``)."""
    return negotiate(accept_language)


Locale = Annotated[str, Depends(request_locale)]
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=1000)]


async def request_session(request: Request) -> AsyncIterator[Session]:
    """The request's session, on the database of the app's settings; committed before the
    response is sent (``scope="function"``), so a client that reads next sees the write.

    Asynchronous, so that it costs no trip through the thread pool: a new session has no
    connection yet, and one whose route already committed has nothing left to do; only a
    session with an open transaction is committed (or rolled back) in a worker thread."""
    session = Session(get_engine(request.app.state.settings), expire_on_commit=False)
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        if session.in_transaction():  # only after a failed commit or rollback
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(request_session, scope="function")]


def api_principal(
    request: Request,
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The application calling: ``Authorization: Bearer mk_...`` (an API key) or
    ``Bearer mat_...`` (an OAuth access token), or ``X-API-Key: mk_...``; its request is
    counted against its rate limit."""
    return _authenticate(request, session, _credential(authorization, x_api_key))


def _credential(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise AuthenticationFailed("use 'Authorization: Bearer <API key>'")
        return value.strip()
    return x_api_key


def _authenticate(request: Request, session: Session, credential: str | None) -> Principal:
    if not credential:
        raise AuthenticationFailed(
            "missing API key: send 'Authorization: Bearer <key>' (create one in the portal "
            "or with `mailer apikey create`)"
        )
    settings: Settings = request.app.state.settings
    if credential.startswith(ACCESS_TOKEN_PREFIX):
        principal = verify_access_token(session, credential, secret_key=settings.secret_key)
    else:
        principal = verify_api_key(session, credential)
    limiter_for(request.app.state, settings).check(principal)
    return principal


def allowed(permission: Permission, narrow: Scope | None = None) -> Callable[..., Principal]:
    """The principal, if its role has *permission* and its scopes (when it has any) cover
    it; *narrow* is a channel scope the route also accepts (``sms:send`` for ``send``).
    Then, on a POST with an ``Idempotency-Key``, the key is claimed (or the first response
    replayed)."""

    def check(
        request: Request,
        session: SessionDep,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> Principal:
        # api_principal's work done here, not as a dependency of its own: one trip through
        # the thread pool instead of two on every call.
        principal = _authenticate(request, session, _credential(authorization, x_api_key))
        require(principal.role, permission)
        require_scope(principal.scopes, permission, narrow)
        claim_for_request(request, session, principal)
        return principal

    return check


Reader = Annotated[Principal, Depends(allowed(Permission.READ))]
Editor = Annotated[Principal, Depends(allowed(Permission.EDIT))]
Sender = Annotated[Principal, Depends(allowed(Permission.SEND))]
EmailSender = Annotated[Principal, Depends(allowed(Permission.SEND, Scope.EMAIL_SEND))]
SmsSender = Annotated[Principal, Depends(allowed(Permission.SEND, Scope.SMS_SEND))]
Admin = Annotated[Principal, Depends(allowed(Permission.ADMIN))]
