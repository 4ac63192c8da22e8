"""What each role may do.  Every API route and portal page asks :func:`require`."""

from __future__ import annotations

from enum import StrEnum

from mailer.core.errors import PermissionDenied, Term
from mailer.core.types import Role


class Permission(StrEnum):
    READ = "read"  # see lists, templates, campaigns, reports
    EDIT = "edit"  # create and change lists, contacts, templates, campaigns
    SEND = "send"  # start, pause, cancel sends
    ADMIN = "admin"  # users, API keys, sub-accounts, domains, relays


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset({Permission.READ, Permission.EDIT, Permission.SEND}),
    Role.EDITOR: frozenset({Permission.READ, Permission.EDIT}),
    Role.VIEWER: frozenset({Permission.READ}),
}

ROLE_LABELS_ES: dict[Role, str] = {
    Role.ADMIN: "Administrador",
    Role.MANAGER: "Gestor (crea y envía)",
    Role.EDITOR: "Editor (crea, no envía)",
    Role.VIEWER: "Lector (solo lectura)",
}


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise PermissionDenied(
            "unknown role '{role}'; use one of: {allowed}", role=value, allowed=allowed
        ) from None


def can(role: Role | str, permission: Permission) -> bool:
    return permission in GRANTS[Role(role)]


def require(role: Role | str, permission: Permission) -> None:
    if not can(role, permission):
        raise PermissionDenied(
            "the role {role} may not {permission}",
            role=Role(role).value,
            permission=Term(permission.value),
        )
