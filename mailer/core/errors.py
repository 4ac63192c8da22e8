"""The project's error hierarchy: every error the code raises on purpose is a MailerError.

Errors carry a stable ``code`` (used by the API) and, where there is one, the ``field`` or
location that caused them, so interfaces can tell the user what to fix.
"""

from __future__ import annotations


class MailerError(Exception):
    """Root of all project errors."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(MailerError):
    code = "config_error"


class NotFound(MailerError):
    code = "not_found"


class ValidationFailed(MailerError):
    code = "validation_failed"


class PermissionDenied(MailerError):
    code = "permission_denied"


class AuthenticationFailed(MailerError):
    code = "authentication_failed"


class Conflict(MailerError):
    code = "conflict"


class IllegalTransition(MailerError):
    """A state machine was asked for a transition its table does not allow."""

    code = "illegal_transition"

    def __init__(self, machine: str, current: str, target: str) -> None:
        super().__init__(f"{machine}: cannot go from {current!r} to {target!r}")
        self.machine = machine
        self.current = current
        self.target = target
