"""Portal sessions, CSRF and role checks."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, Form, Path, Query, Request
from sqlmodel import Session

from mailer.accounts.models import Account, User
from mailer.accounts.roles import Permission, can
from mailer.accounts.service import Principal, get_account, get_user, user_principal
from mailer.core.errors import MailerError
from mailer.storage.db import session_scope

MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Page = Annotated[int, Query(ge=1, le=100_000)]


def request_session(request: Request) -> Iterator[Session]:
    """The request's session, on the database of the app's settings; committed before the
    response is sent (``scope="function"``), so a client that reads next sees the write."""
    with session_scope(request.app.state.settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(request_session, scope="function")]


@dataclass(frozen=True, slots=True)
class PortalUser:
    id: int
    email: str
    name: str
    role: str
    # A parent account's administrator may act in one of its sub-accounts: its name here.
    acting_in: str = ""


class LoginRequired(MailerError):
    """Raised by a page dependency when nobody is logged in (answered with a redirect)."""

    code = "login_required"


class PageForbidden(MailerError):
    code = "forbidden"


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def check_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> None:
    expected = request.session.get("csrf", "")
    if not expected or not hmac.compare_digest(str(expected), csrf_token):
        raise PageForbidden(
            "the form expired or did not come from this site (CSRF check): reload the page "
            "and try again"
        )


CsrfChecked = Depends(check_csrf)


def login(request: Request, principal: Principal, session_epoch: int) -> None:
    request.session.clear()  # a fresh session on login: no fixation
    request.session["user_id"] = principal.user_id
    request.session["epoch"] = session_epoch
    csrf_token(request)


# -- two-factor login: the password was right, the code is still to come ------------------

SECOND_FACTOR_KEY = "second_factor"
SECOND_FACTOR_SECONDS = 300  # the code must follow the password within five minutes


def await_second_factor(request: Request, user: User) -> None:
    """Remember, in a fresh session, that *user* gave the right password; nobody is logged
    in until :func:`second_factor_user` is answered with a good code."""
    request.session.clear()
    request.session[SECOND_FACTOR_KEY] = {
        "user_id": user.id,
        "epoch": user.session_epoch,
        "at": int(time.time()),
    }
    csrf_token(request)


def second_factor_user(request: Request, session: Session) -> User | None:
    """The user waiting for their second factor in this session, if still in time."""
    pending = request.session.get(SECOND_FACTOR_KEY)
    if not isinstance(pending, dict):
        return None
    if time.time() - float(pending.get("at", 0)) > SECOND_FACTOR_SECONDS:
        request.session.pop(SECOND_FACTOR_KEY, None)
        return None
    user = get_user(session, int(pending.get("user_id") or 0))
    if user is None or user.session_epoch != pending.get("epoch"):
        request.session.pop(SECOND_FACTOR_KEY, None)
        return None
    return user


# -- acting in a sub-account ---------------------------------------------------------------

ACTING_KEY = "acting_account_id"


def act_in(request: Request, account_id: int | None) -> None:
    """Administer a sub-account as its parent's administrator (None: back home)."""
    if account_id is None:
        request.session.pop(ACTING_KEY, None)
    else:
        request.session[ACTING_KEY] = account_id


def _acting_account(request: Request, session: Session, user: User) -> Account | None:
    acting = request.session.get(ACTING_KEY)
    if not acting:
        return None
    account = session.get(Account, int(acting))
    if (
        account is None
        or account.parent_id != user.account_id
        or not can(user.role, Permission.ADMIN)
    ):
        request.session.pop(ACTING_KEY, None)  # no longer allowed: back home
        return None
    return account


def current_principal(request: Request, session: SessionDep) -> Principal:
    user_id = request.session.get("user_id")
    user = get_user(session, int(user_id)) if user_id else None
    if user is None or request.session.get("epoch") != user.session_epoch:
        request.session.clear()  # unknown user, or a session ended by logout elsewhere
        raise LoginRequired("log in first")
    principal = user_principal(user)
    acting = _acting_account(request, session, user)
    if acting is not None and acting.id is not None:
        principal = replace(principal, account_id=acting.id)
    # A plain snapshot: pages render it even after the request's session rolled back.
    request.state.user = PortalUser(
        user.id or 0, user.email, user.name, user.role, acting.name if acting else ""
    )
    request.state.timezone = get_account(session, principal.account_id).timezone
    return principal


def page(permission: Permission) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not can(principal.role, permission):
            raise PageForbidden("your role does not allow this page or action")
        return principal

    return check


Reader = Annotated[Principal, Depends(page(Permission.READ))]
Editor = Annotated[Principal, Depends(page(Permission.EDIT))]
Sender = Annotated[Principal, Depends(page(Permission.SEND))]
Admin = Annotated[Principal, Depends(page(Permission.ADMIN))]
