"""Scopes: what an OAuth access token or an API key may be used for, on top of its role.

A request needs both: the role's permission (``roles.require``) and, when the credential
is restricted to scopes, a scope that covers the route.  The four broad scopes match the
permissions one to one; ``email:send`` and ``sms:send`` are narrower forms of ``send`` that
cover only the routes sending on that channel.  Scopes do not imply each other: a token
with ``send`` alone cannot read what it sent (ask for ``read send``).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from mailer.accounts.roles import GRANTS, Permission
from mailer.core.errors import PermissionDenied, ValidationFailed
from mailer.core.types import Role


class Scope(StrEnum):
    READ = "read"
    EDIT = "edit"
    SEND = "send"
    ADMIN = "admin"
    EMAIL_SEND = "email:send"
    SMS_SEND = "sms:send"


PERMISSION_OF: dict[Scope, Permission] = {
    Scope.READ: Permission.READ,
    Scope.EDIT: Permission.EDIT,
    Scope.SEND: Permission.SEND,
    Scope.ADMIN: Permission.ADMIN,
    Scope.EMAIL_SEND: Permission.SEND,
    Scope.SMS_SEND: Permission.SEND,
}


class InsufficientScope(PermissionDenied):
    """The role would allow the request, the credential's scopes do not (RFC 6750 §3.1)."""

    code = "insufficient_scope"


def parse_scopes(text: str | Iterable[str], *, field: str = "scopes") -> frozenset[Scope]:
    """Scopes from ``"read send"``, ``"read,send"`` or a list; unknown names refused."""
    words = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    found: set[Scope] = set()
    for word in words:
        try:
            found.add(Scope(word.strip().lower()))
        except ValueError:
            raise ValidationFailed(
                "unknown scope '{scope}'; use some of: {allowed}",
                field=field,
                scope=word,
                allowed=", ".join(s.value for s in Scope),
            ) from None
    return frozenset(found)


def role_scopes(role: Role | str) -> frozenset[Scope]:
    """Every scope the role's permissions cover."""
    granted = GRANTS[Role(role)]
    return frozenset(scope for scope, permission in PERMISSION_OF.items() if permission in granted)


def check_within_role(role: Role | str, scopes: Iterable[Scope], *, field: str = "scopes") -> None:
    """Refuse scopes the role could never use (a viewer with ``send``)."""
    beyond = sorted(set(scopes) - role_scopes(role))
    if beyond:
        raise ValidationFailed(
            "the role {role} cannot have the scopes {scopes}",
            field=field,
            role=Role(role).value,
            scopes=" ".join(beyond),
        )


def format_scopes(scopes: Iterable[str]) -> str:
    """The space-separated form of RFC 6749 §3.3, in a stable order."""
    return " ".join(sorted(scopes))


def require_scope(
    granted: frozenset[str] | None, permission: Permission, narrow: Scope | None = None
) -> None:
    """Raise InsufficientScope unless *granted* (None: not restricted) covers *permission*,
    or *narrow*, the channel-specific scope the route also accepts."""
    if granted is None or permission.value in granted or (narrow is not None and narrow in granted):
        return
    have = format_scopes(granted) or "-"
    if narrow is None:
        raise InsufficientScope(
            "this credential lacks the scope {scope} (it has: {granted})",
            scope=permission.value,
            granted=have,
        )
    raise InsufficientScope(
        "this credential lacks the scope {scope} or {narrow} (it has: {granted})",
        scope=permission.value,
        narrow=narrow.value,
        granted=have,
    )
