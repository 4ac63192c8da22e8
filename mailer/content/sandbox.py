"""The sandboxed Jinja environments that every user-authored template runs in.

Built once at import. Templates cannot reach Python internals (attributes starting with
``_``, ``str.format`` tricks, the environment), cannot mutate the objects they are given,
and cannot load other templates or files (there is no loader). Undefined variables render
as empty strings and can be chained (``contact.first_name`` with no ``contact``), but an
unsafe attribute access fails at once with :class:`jinja2.exceptions.SecurityError`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from jinja2 import ChainableUndefined
from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from mailer.content.filters import default, fecha, soles


class LenientUndefined(ChainableUndefined):
    """Renders as an empty string, chains through attributes; unsafe access raises.

    The sandbox answers an unsafe attribute with an undefined value carrying
    ``SecurityError``; a chainable undefined would print that as an empty string and hide
    the attempt, so it is raised here instead.
    """

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        if issubclass(exc, SecurityError):
            raise exc(hint or f"access to {name!r} is not allowed")
        super().__init__(hint, obj, name, exc)


def _none_as_empty(value: Any) -> Any:
    # A NULL column must not print as "None" in a message.
    return "" if value is None else value


MAX_SEQUENCE = 100_000
"""Longest string or list a template may build with ``*`` (``'a' * 10**9`` is refused)."""
MAX_EXPONENT = 100
MAX_RANGE = 10_000
"""Longest ``range()``: a message loops over a handful of items, never millions."""
MAX_RENDER_CHARS = 5_000_000
"""Largest rendered part (Gmail clips a message at 102 KB; this only stops runaways)."""
MAX_RENDER_SECONDS = 2.0
"""Longest time one part may render."""


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus limits on what a template can make the process do.

    ``*`` and ``**`` are intercepted (which also stops Jinja from folding them at compile
    time, where ``'a' * 10**9`` would otherwise be evaluated by the syntax check itself).
    """

    intercepted_binops = frozenset(["*", "**", "%"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                repeats = isinstance(sequence, str | list | tuple) and isinstance(count, int)
                if repeats and len(sequence) * max(count, 0) > MAX_SEQUENCE:
                    raise SecurityError(
                        f"a repeated text or list may not exceed {MAX_SEQUENCE} items"
                    )
            if _bits(left) + _bits(right) > MAX_INT_BITS:
                raise SecurityError("the number would be too large")
            return left * right
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            if _bits(left) * abs(int(right)) > MAX_INT_BITS:
                raise SecurityError("the number would be too large")
            return left**right
        if operator == "%" and isinstance(left, str) and _WIDE_PRINTF.search(left):
            raise SecurityError(f"format widths above {MAX_WIDTH} are not allowed")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _WIDE_FORMAT.search(value.__self__):
            raise SecurityError(f"format widths above {MAX_WIDTH} are not allowed")
        return wrapped


MAX_INT_BITS = 100_000
MAX_WIDTH = 10_000
_WIDE_PRINTF = re.compile(r"%[-+ #0]*(\*|\d{5,})")
_WIDE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*?\d{5,}")


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _capped_concat(parts: Iterable[str]) -> str:
    """Jinja's concat for captured blocks ({% set %}, {% filter %}, macros), with a cap."""
    pieces = []
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_RENDER_CHARS:
            raise SecurityError(f"a captured block exceeds {MAX_RENDER_CHARS} characters")
        pieces.append(part)
    return "".join(pieces)


def _clamped(name: str, filter_function: Any) -> Any:
    def clamped(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and width > MAX_WIDTH:
            raise SecurityError(f"{name}() widths above {MAX_WIDTH} are not allowed")
        return filter_function(value, width, *args, **kwargs)

    return clamped


class RenderBudget:
    """A time limit for one render that also stops loops that print nothing.

    Used where a person waits (previews, the check): a line tracer raises once the budget
    is spent.  Sends do not pay the tracer's cost; the check ran before a send could start.
    """

    def __init__(self, seconds: float = MAX_RENDER_SECONDS) -> None:
        self.seconds = seconds
        self._deadline = 0.0
        self._events = 0

    def __enter__(self) -> RenderBudget:
        self._deadline = time.monotonic() + self.seconds
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous)

    def _trace(self, frame: Any, event: str, arg: Any) -> Any:
        self._events += 1
        if self._events % 1000 == 0 and time.monotonic() > self._deadline:
            raise SecurityError(f"the template took more than {self.seconds} s to render")
        return self._trace


def limited_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() may not exceed {MAX_RANGE} items")
    return numbers


def _environment(*, autoescape: bool, trim_blocks: bool = False) -> ImmutableSandboxedEnvironment:
    env = LimitedSandbox(
        autoescape=autoescape,
        undefined=LenientUndefined,
        finalize=_none_as_empty,
        trim_blocks=trim_blocks,
        lstrip_blocks=trim_blocks,
        keep_trailing_newline=True,  # a part renders exactly as written
        auto_reload=False,
    )
    env.filters.update(fecha=fecha, soles=soles, default=default, d=default)
    # lipsum(n) would let a template burn CPU generating text; nothing needs it.
    env.globals.pop("lipsum", None)
    env.globals["range"] = limited_range
    env.concat = _capped_concat  # type: ignore[method-assign]
    for name in ("center", "indent"):
        env.filters[name] = _clamped(name, env.filters[name])
    return env


HTML_ENV = _environment(autoescape=True)
"""For the HTML part: every ``{{ ... }}`` is HTML-escaped."""

TEXT_ENV = _environment(autoescape=False)
"""For the subject, a text part given by the user, and link URLs."""

DERIVED_TEXT_ENV = _environment(autoescape=False, trim_blocks=True)
"""For the text part derived from the HTML, where block tags sit on lines of their own."""

TEMPLATE_GLOBALS: dict[str, Any] = dict(HTML_ENV.globals)
"""The globals of every environment above (``range``, ``dict``, ``cycler``, ...)."""
