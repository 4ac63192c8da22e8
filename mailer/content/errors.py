"""Errors of the content package."""

from __future__ import annotations

from typing import Literal

from mailer.core.errors import Term, ValidationFailed

TemplatePart = Literal["subject", "html", "text"]


class TemplateError(ValidationFailed):
    """A template cannot be compiled or rendered.

    ``part`` is the part of the message at fault, ``line`` the line within that part's
    source (when known) and ``detail`` what is wrong and, where possible, how to fix it.
    ``str()`` gives all three, e.g. ``html, line 12: unexpected '}'``.
    """

    code = "template_error"

    def __init__(self, message: str, *, part: TemplatePart, line: int | None = None) -> None:
        if line is None:
            super().__init__("{part}: {detail}", field=part, part=Term(part), detail=Term(message))
        else:
            super().__init__(
                "{part}, line {line}: {detail}",
                field=part,
                part=Term(part),
                line=line,
                detail=Term(message),
            )
        self.detail = message  # what is wrong, without the location (message has both)
        self.part: TemplatePart = part
        self.line = line
