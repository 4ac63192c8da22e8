"""Compile-time steps: syntax checks with clear errors, Jinja protection, CSS inlining.

Everything here runs once per campaign, never per recipient:

- :func:`compile_part` parses one part (subject, HTML or text) in its sandboxed
  environment and turns Jinja's syntax errors into :class:`TemplateError` with the part and
  the line in that part's source; templates written in Handlebars/Mustache get a message
  that says so and gives the Jinja equivalent.
- :func:`protect_jinja` swaps every ``{{ ... }}``, ``{% ... %}`` and ``{# ... #}`` for an
  inert token of letters and digits, so HTML tools (premailer, parsers) can work on the
  markup without mangling the template code, and :meth:`ProtectedMarkup.restore` puts it
  back.
- :func:`inline_css` moves the CSS of ``<style>`` blocks onto the elements with premailer,
  keeping the blocks themselves (media queries) and checking that no template tag moved.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from jinja2 import Template, nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from premailer import Premailer

from mailer.content.errors import TemplateError, TemplatePart

# -- syntax ------------------------------------------------------------------------------------

# Block tags that need an end tag, and the end tag they need.
_BLOCK_ENDS = {
    "if": "endif",
    "for": "endfor",
    "macro": "endmacro",
    "call": "endcall",
    "filter": "endfilter",
    "with": "endwith",
    "autoescape": "endautoescape",
    "block": "endblock",
    "set": "endset",
}

_LOADING_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)

_FOREIGN_TAG = re.compile(
    r"\{\{\{\s*(?P<raw>[^}]*?)\s*\}\}\}"
    r"|\{\{~?\s*(?P<sigil>[#/^>!&])\s*(?P<word>[\w.@-]*)\s*(?P<rest>[^}]*?)\s*~?\}\}"
    r"|\{\{~?\s*else\s*~?\}\}"
)


def line_of(source: str, offset: int) -> int:
    """The 1-based line of ``offset`` in ``source``."""
    return source.count("\n", 0, offset) + 1


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _foreign_advice(match: re.Match[str]) -> str:
    """How to write in Jinja what a Handlebars/Mustache tag means."""
    if match.group("raw") is not None:
        name = match.group("raw") or "name"
        return f"use {{{{ {name} }}}} (HTML is escaped automatically)"
    sigil, word, rest = match.group("sigil"), match.group("word"), match.group("rest")
    if sigil is None:  # {{else}}
        return "use {% else %}"
    subject = (rest or "items") if word in ("each", "if", "unless", "with") else word
    subject = subject or "items"
    if sigil == "#":
        if word == "each":
            return f"use {{% for item in {subject} %}} ... {{% endfor %}}"
        if word == "if":
            return f"use {{% if {subject} %}} ... {{% endif %}}"
        if word == "unless":
            return f"use {{% if not {subject} %}} ... {{% endif %}}"
        if word == "with":
            return f"refer to the fields directly, e.g. {{{{ {subject}.name }}}}"
        return (
            f"use {{% if {subject} %}} ... {{% endif %}}"
            f" or {{% for item in {subject} %}} ... {{% endfor %}}"
        )
    if sigil == "/":
        ends = {"each": "{% endfor %}", "if": "{% endif %}", "unless": "{% endif %}"}
        return f"close the block with {ends.get(word, '{% endif %} or {% endfor %}')}"
    if sigil == "^":
        return f"use {{% if not {subject} %}} ... {{% endif %}}"
    if sigil == ">":
        return "partials are not available; paste the partial's content here"
    if sigil == "!":
        return "write comments as {# ... #}"
    return f"use {{{{ {subject} }}}} (HTML is escaped automatically)"


def find_foreign_syntax(source: str) -> tuple[int, str] | None:
    """The line and message for the first Handlebars/Mustache tag in ``source``, if any."""
    match = _FOREIGN_TAG.search(source)
    if match is None:
        return None
    tag = _shorten(match.group(0))
    message = f"'{tag}' is Handlebars/Mustache syntax, not Jinja; {_foreign_advice(match)}"
    return line_of(source, match.start()), message


def _unclosed_block(env: ImmutableSandboxedEnvironment, source: str) -> tuple[str, int] | None:
    """The innermost block tag left open in ``source`` and its line, found with the lexer."""
    stack: list[tuple[str, int]] = []
    statement: list[tuple[int, str, str]] = []
    in_block = False
    try:
        for lineno, kind, value in env.lex(source):
            if kind == "whitespace":
                continue
            if kind == "block_begin":
                in_block, statement = True, []
            elif kind == "block_end":
                in_block = False
                if not statement or statement[0][1] != "name":
                    continue
                first_line, _, tag = statement[0]
                assigns = any(t == "operator" and v == "=" for _, t, v in statement)
                if tag in _BLOCK_ENDS and not (tag == "set" and assigns):
                    stack.append((tag, first_line))
                elif tag.startswith("end") and stack and _BLOCK_ENDS[stack[-1][0]] == tag:
                    stack.pop()
            elif in_block:
                statement.append((lineno, kind, value))
    except TemplateSyntaxError:
        return None
    return stack[-1] if stack else None


def _syntax_error(
    env: ImmutableSandboxedEnvironment, source: str, part: TemplatePart, exc: TemplateSyntaxError
) -> TemplateError:
    foreign = find_foreign_syntax(source)
    if foreign is not None:
        line, message = foreign
        return TemplateError(message, part=part, line=line)
    if exc.message and exc.message.startswith("Unexpected end of template"):
        unclosed = _unclosed_block(env, source)
        if unclosed is not None:
            tag, line = unclosed
            return TemplateError(
                f"'{{% {tag} %}}' is never closed; add {{% {_BLOCK_ENDS[tag]} %}}"
                " where the block ends",
                part=part,
                line=line,
            )
    return TemplateError(exc.message or "invalid template syntax", part=part, line=exc.lineno)


def parse_part(
    env: ImmutableSandboxedEnvironment, source: str, part: TemplatePart
) -> nodes.Template:
    """Parse ``source``; raise :class:`TemplateError` naming ``part`` and the line."""
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax_error(env, source, part, exc) from exc
    for node in tree.find_all(_LOADING_NODES):
        keyword = {
            nodes.Extends: "extends",
            nodes.Include: "include",
            nodes.Import: "import",
            nodes.FromImport: "from ... import",
        }[type(node)]
        raise TemplateError(
            f"{{% {keyword} %}} is not available: a message template cannot load other"
            " templates; paste the content here instead",
            part=part,
            line=node.lineno,
        )
    return tree


def compile_part(env: ImmutableSandboxedEnvironment, source: str, part: TemplatePart) -> Template:
    """Parse and compile one part of a message in ``env``."""
    tree = parse_part(env, source, part)
    for name in tree.find_all(nodes.Name):
        if name.name.startswith("_"):
            # _link and its kin are the compiler's own; a template may not call or shadow them.
            raise TemplateError(
                f"names starting with '_' are reserved: {name.name!r}", part=part, line=name.lineno
            )
    try:
        return env.from_string(tree)
    except TemplateSyntaxError as exc:  # e.g. an unknown filter, caught by the compiler
        raise TemplateError(exc.message or "invalid template", part=part, line=exc.lineno) from exc


# -- protection --------------------------------------------------------------------------------

_STRING = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_JINJA_MARKUP = re.compile(
    r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}"
    rf"|\{{\{{(?:{_STRING}|[^'\"}}]|\}}(?!\}}))*\}}\}}"
    rf"|\{{%(?:{_STRING}|[^'\"%]|%(?!\}}))*%\}}"
    r"|\{#.*?#\}",
    re.DOTALL,
)
_LITERAL_JINJA_OPENER = re.compile(r"\{(?=[{%#])")
LITERAL_BRACE = "{{ '{' }}"


def escape_literal_jinja(text: str) -> str:
    """Make literal ``{{``, ``{%`` and ``{#`` in ``text`` print as themselves in Jinja.

    Used on text that came out of an HTML tool (an entity such as ``&#123;`` decoded to a
    brace) and must not turn into template code.
    """
    return _LITERAL_JINJA_OPENER.sub(LITERAL_BRACE, text)


@dataclass(frozen=True, slots=True)
class ProtectedMarkup:
    """A template with its Jinja markup replaced by tokens such as ``JINJAPH0007X``.

    ``markup[i]`` is the Jinja text behind token ``i`` and ``lines[i]`` the line it came
    from in the original source. Tokens are letters and digits only, so they survive HTML
    parsing and serialisation, attribute values and URL encoding; HTML parsers lower-case
    them in tag and attribute names, so they are matched without regard to case.
    """

    text: str
    markup: tuple[str, ...]
    lines: tuple[int, ...]
    prefix: str
    pattern: re.Pattern[str]

    def token(self, index: int) -> str:
        return f"{self.prefix}{index:04d}X"

    def restore(self, text: str) -> str:
        """Put the Jinja markup back in place of every token in ``text``."""
        return self.pattern.sub(lambda match: self.markup[int(match.group(1))], text)

    def source_line(self, offset: int) -> int:
        """The line in the original source of ``offset`` in ``text`` (before any change)."""
        hidden = sum(
            self.markup[index].count("\n") for index in self.token_indexes(self.text[:offset])
        )
        return line_of(self.text, offset) + hidden

    def token_indexes(self, text: str) -> list[int]:
        return [int(match.group(1)) for match in self.pattern.finditer(text)]

    def with_text(self, text: str, added: tuple[tuple[str, int], ...] = ()) -> ProtectedMarkup:
        """A copy holding ``text``, with ``added`` (markup, line) pieces after the others."""
        return ProtectedMarkup(
            text=text,
            markup=self.markup + tuple(markup for markup, _ in added),
            lines=self.lines + tuple(line for _, line in added),
            prefix=self.prefix,
            pattern=self.pattern,
        )


def protect_jinja(source: str) -> ProtectedMarkup:
    """Replace the Jinja markup of an already-parsed template with inert tokens."""
    prefix = "JINJAPH"
    lowered = source.lower()
    while prefix.lower() in lowered:
        prefix += "Q"
    pattern = re.compile(re.escape(prefix) + r"(\d+)X", re.IGNORECASE)
    markup: list[str] = []
    lines: list[int] = []

    def replace(match: re.Match[str]) -> str:
        markup.append(match.group(0))
        lines.append(line_of(source, match.start()))
        return f"{prefix}{len(markup) - 1:04d}X"

    text = _JINJA_MARKUP.sub(replace, source)
    return ProtectedMarkup(text, tuple(markup), tuple(lines), prefix, pattern)


# -- CSS inlining ------------------------------------------------------------------------------

_STYLESHEET = re.compile(r"<style\b", re.IGNORECASE)
_DOCTYPE_OUT = re.compile(r"\s*<!doctype[^>]*>\s*", re.IGNORECASE)
_HTML_END = re.compile(r"</html\s*>", re.IGNORECASE)


def _premailer() -> Premailer:
    return Premailer(
        keep_style_tags=True,  # keep <style> blocks whole: @media rules, resets, :hover
        remove_classes=False,  # media queries select by class
        strip_important=False,  # responsive overrides rely on !important
        disable_validation=True,  # keep vendor and mso- properties
        cssutils_logging_level=logging.CRITICAL,
        allow_network=False,  # never fetch <link rel=stylesheet> or external CSS
        allow_loading_external_files=False,
        disable_link_rewrites=True,
        # Keep the width/height attributes the author wrote on <img> and tables: Outlook
        # sizes images from them, and premailer would overwrite them from the CSS
        # (width="100%", height="auto"), collapsing image boxes when images are blocked.
        disable_basic_attributes=["width", "height"],
    )


def _split_outside(protected: ProtectedMarkup) -> tuple[str, str, str]:
    """Split off what the HTML parser would move: leading and trailing template code and
    the doctype (premailer drops a doctype that is not spelt exactly as lxml spells it)."""
    text = protected.text
    token = protected.pattern.pattern
    lead = re.match(rf"(?:\s|{token})*(?:<!doctype[^>]*>(?:\s|{token})*)?", text, re.IGNORECASE)
    start = lead.end() if lead is not None else 0
    end = len(text)
    html_ends = list(_HTML_END.finditer(text))
    if html_ends and protected.pattern.search(text, html_ends[-1].end()):
        end = html_ends[-1].end()
    return text[:start], text[start:end], text[end:]


def inline_css(protected: ProtectedMarkup) -> ProtectedMarkup:
    """Inline the CSS of the ``<style>`` blocks of ``protected`` into style attributes.

    The ``<style>`` blocks stay as they were (media queries keep working in the clients
    that read them). Raises :class:`TemplateError` if the HTML cannot be processed or if
    the HTML parser moved or dropped a template tag.
    """
    if not _STYLESHEET.search(protected.text):
        return protected  # nothing to inline: keep the markup exactly as written
    head, body, tail = _split_outside(protected)
    try:
        inlined: str = _premailer().transform(body, pretty_print=False)
    except Exception as exc:  # lxml and cssutils raise many types; all mean "cannot inline"
        raise TemplateError(
            f"CSS inlining failed ({exc}); fix the HTML or CSS, or send without CSS inlining",
            part="html",
        ) from exc
    inlined = _DOCTYPE_OUT.sub("", inlined, count=1) if _DOCTYPE_OUT.match(inlined) else inlined
    text = head + inlined + tail
    _check_tokens_in_place(protected, text)
    return _protect_literal_openers(protected, text)


def _protect_literal_openers(protected: ProtectedMarkup, text: str) -> ProtectedMarkup:
    """Tokens for the ``{{``, ``{%`` and ``{#`` that lxml made by decoding entities
    (``&#123;&#123;``): they were text in the template and must stay text."""
    added: list[tuple[str, int]] = []

    def replace(match: re.Match[str]) -> str:
        added.append((LITERAL_BRACE, protected.source_line(0)))
        return protected.token(len(protected.markup) + len(added) - 1)

    return protected.with_text(_LITERAL_JINJA_OPENER.sub(replace, text), tuple(added))


def _check_tokens_in_place(protected: ProtectedMarkup, text: str) -> None:
    """Check that the HTML tools kept the template code where it was.

    Block tags (``{% ... %}``) must all be there, once each, in their order. Expressions
    may be copied (``color: {{ brand }}`` in a CSS rule is inlined into every element the
    rule matches, and stays in the <style> block too) but none may be lost. Comments may go.
    """

    def statements(tokens: list[int]) -> list[int]:
        return [index for index in tokens if protected.markup[index].startswith("{%")]

    expected = protected.token_indexes(protected.text)
    found = protected.token_indexes(text)
    expected_statements, found_statements = statements(expected), statements(found)
    moved: int | None = None
    for position, want in enumerate(expected_statements):
        if position >= len(found_statements) or found_statements[position] != want:
            moved = want
            break
    else:
        if len(found_statements) > len(expected_statements):
            moved = found_statements[len(expected_statements)]
    if moved is None:
        present = set(found)
        moved = next(
            (
                index
                for index in expected
                if index not in present and protected.markup[index].startswith("{{")
            ),
            None,
        )
    if moved is None:
        return
    raise TemplateError(
        f"CSS inlining would move, copy or drop '{_shorten(protected.markup[moved])}': the"
        " HTML parser cannot keep template code there (e.g. as a tag name, in <head> where"
        " HTML allows no text, or a block tag inside a CSS rule); move it, or compile"
        " without CSS inlining",
        part="html",
        line=protected.lines[moved],
    )
