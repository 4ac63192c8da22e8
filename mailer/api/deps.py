"""Dependencies: the session, the calling application, and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlmodel import Session

from mailer.accounts.roles import Permission, require
from mailer.accounts.service import Principal, verify_api_key
from mailer.core.errors import AuthenticationFailed
from mailer.core.i18n import negotiate
from mailer.storage.db import session_scope


def request_locale(accept_language: Annotated[str | None, Header()] = None) -> str:
    """Messages in Spanish unless the caller asks for English (``Accept-Language: en``)."""
    return negotiate(accept_language)


Locale = Annotated[str, Depends(request_locale)]
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def request_session(request: Request) -> Iterator[Session]:
    """The request's session, on the database of the app's settings; committed before the
    response is sent (``scope="function"``), so a client that reads next sees the write."""
    with session_scope(request.app.state.settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(request_session, scope="function")]


def api_principal(
    session: SessionDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal:
    """The application calling: ``Authorization: Bearer mk_...`` or ``X-API-Key: mk_...``."""
    key = x_api_key
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise AuthenticationFailed("use 'Authorization: Bearer <API key>'")
        key = value.strip()
    if not key:
        raise AuthenticationFailed(
            "missing API key: send 'Authorization: Bearer <key>' (create one in the portal "
            "or with `mailer apikey create`)"
        )
    return verify_api_key(session, key)


def allowed(permission: Permission) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(api_principal)]) -> Principal:
        require(principal.role, permission)
        return principal

    return check


Reader = Annotated[Principal, Depends(allowed(Permission.READ))]
Editor = Annotated[Principal, Depends(allowed(Permission.EDIT))]
Sender = Annotated[Principal, Depends(allowed(Permission.SEND))]
