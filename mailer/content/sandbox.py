"""The sandboxed Jinja environments that every user-authored template runs in.

Built once at import. Templates cannot reach Python internals (attributes starting with
``_``, ``str.format`` tricks, the environment), cannot mutate the objects they are given,
and cannot load other templates or files (there is no loader). Undefined variables render
as empty strings and can be chained (``contact.first_name`` with no ``contact``), but an
unsafe attribute access fails at once with :class:`jinja2.exceptions.SecurityError`.
"""

from __future__ import annotations

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

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                repeats = isinstance(sequence, str | list | tuple) and isinstance(count, int)
                if repeats and len(sequence) * max(count, 0) > MAX_SEQUENCE:
                    raise SecurityError(
                        f"a repeated text or list may not exceed {MAX_SEQUENCE} items"
                    )
            return left * right
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            return left**right
        return super().call_binop(context, operator, left, right)


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
    return env


HTML_ENV = _environment(autoescape=True)
"""For the HTML part: every ``{{ ... }}`` is HTML-escaped."""

TEXT_ENV = _environment(autoescape=False)
"""For the subject, a text part given by the user, and link URLs."""

DERIVED_TEXT_ENV = _environment(autoescape=False, trim_blocks=True)
"""For the text part derived from the HTML, where block tags sit on lines of their own."""

TEMPLATE_GLOBALS: dict[str, Any] = dict(HTML_ENV.globals)
"""The globals of every environment above (``range``, ``dict``, ``cycler``, ...)."""
