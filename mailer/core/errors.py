"""The project's error hierarchy: every error the code raises on purpose is a MailerError.

Errors carry a stable ``code`` (used by the API) and, where there is one, the ``field`` or
location that caused them, so interfaces can tell the user what to fix.

Messages are written in English as templates with named parameters
(``NotFound("list {list_id} does not exist", list_id=7)``): ``message`` is the English text
for logs, and the interfaces show ``mailer.core.i18n.localise(error, locale)``, the
template translated through the gettext catalogs (Spanish first) and then filled in.
"""

from __future__ import annotations


class Term(str):
    """A message parameter that is itself translatable (a state name, a role, a reason from
    a library); other parameters (names, addresses, numbers) are shown as given."""

    __slots__ = ()


class MailerError(Exception):
    """Root of all project errors."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, **params: object) -> None:
        self.template = message
        self.params = params
        self.message = message.format(**params) if params else message
        super().__init__(self.message)
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


class RateLimited(MailerError):
    """Too many requests from one application: try again in ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many requests: wait {seconds} s before the next one", seconds=retry_after
        )
        self.retry_after = retry_after


class IllegalTransition(MailerError):
    """A state machine was asked for a transition its table does not allow."""

    code = "illegal_transition"

    def __init__(self, machine: str, current: str, target: str) -> None:
        super().__init__(
            "{machine}: cannot go from {current} to {target}",
            machine=Term(machine),
            current=Term(current),
            target=Term(target),
        )
        self.machine = machine
        self.current = current
        self.target = target
