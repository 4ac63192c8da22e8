"""Compile a message template once per campaign, render it once per recipient.

:func:`compile_template` does all the work that is the same for every recipient: syntax
checks, CSS inlining, link extraction and rewriting, the text part, Jinja compilation.
:meth:`CompiledTemplate.render` then only runs the compiled templates with one recipient's
context. Tracking is not known here: the caller passes ``link_url``, which turns a link's
index and personalised URL into the URL to put in the message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jinja2 import Template
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from mailer.content import compiler
from mailer.content.compiler import compile_part, protect_jinja
from mailer.content.errors import TemplateError, TemplatePart
from mailer.content.links import Link, link_call, rewrite_links
from mailer.content.sandbox import (
    DERIVED_TEXT_ENV,
    HTML_ENV,
    MAX_RENDER_CHARS,
    MAX_RENDER_SECONDS,
    TEMPLATE_GLOBALS,
    TEXT_ENV,
)
from mailer.content.text import html_to_text_template, tidy_rendered_text

__all__ = [
    "CompiledTemplate",
    "Link",
    "LinkUrl",
    "RenderedMessage",
    "check_syntax",
    "compile_template",
]

LinkUrl = Callable[[int, str], str]
"""Given a link's index and its personalised URL, the URL to put in the message."""

_NEWLINES = re.compile(r"\s*[\r\n]+\s*")
_LINK_MARK = re.compile("\x1aL([0-9]+)\x1a")  # see links.LINK_MARK
_TEXT_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_URL_TRAILER = ".,;:!?)]}'\""

# Errors a template expression can cause at render time (bad data or a template bug).
_RENDER_ERRORS = (
    JinjaTemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,  # a macro calling itself
    MemoryError,
)


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    html: str
    text: str


class _LinkUrlFailed(Exception):
    """Carries an error of the caller's ``link_url`` through Jinja, to re-raise it as is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class _Part:
    name: TemplatePart
    template: Template
    lines_match_source: bool  # runtime error lines are the user's lines


class CompiledTemplate:
    """A message ready to render: build it with :func:`compile_template`."""

    __slots__ = (
        "_html",
        "_link_lines",
        "_link_templates",
        "_subject",
        "_text",
        "_text_derived",
        "links",
    )

    def __init__(
        self,
        *,
        subject: _Part,
        html: _Part,
        text: _Part,
        text_derived: bool,
        links: tuple[Link, ...],
        link_templates: tuple[Template | str, ...],
        link_lines: tuple[int, ...],
    ) -> None:
        self.links = links
        self._subject = subject
        self._html = html
        self._text = text
        self._text_derived = text_derived
        self._link_templates = link_templates
        self._link_lines = link_lines

    def render(
        self, context: Mapping[str, Any], link_url: LinkUrl | None = None
    ) -> RenderedMessage:
        """Render subject, HTML and text for one recipient.

        Each link is personalised with ``context`` and, if it is an http(s) URL and
        ``link_url`` is given, replaced by ``link_url(index, personalised_url)``; this is
        done once per link and personalised URL, whichever parts show it.  A link whose URL
        has template code is personalised where it stands, so a link inside a loop gets
        each item's URL.  Raises :class:`TemplateError` when a template expression fails;
        an error raised by ``link_url`` propagates unchanged.
        """
        resolved: dict[tuple[int, str | None], str] = {}
        variables = {**TEMPLATE_GLOBALS, **context}

        def link(index: int, in_place: str | None = None) -> str:
            # in_place: the URL as rendered at the link's own place (see links.link_call).
            personal = None if in_place is None else str(in_place).strip()
            key = (index, personal)
            url = resolved.get(key)
            if url is None:
                url = personal if personal is not None else self._personalise(index, variables)
                if link_url is not None and url[:8].lower().startswith(("http://", "https://")):
                    try:
                        url = link_url(index, url)
                    except Exception as exc:
                        raise _LinkUrlFailed(exc) from exc
                resolved[key] = url
            return url

        variables["_link"] = link

        def fixed(match: re.Match[str]) -> str:
            return link(int(match.group(1)))

        def fixed_html(match: re.Match[str]) -> str:
            return str(escape(link(int(match.group(1)))))

        subject = _render(self._subject, variables)
        html = _render(self._html, variables)
        text = _render(self._text, variables)
        try:
            if "\x1a" in html:
                html = _LINK_MARK.sub(fixed_html, html)
            if "\x1a" in text:
                text = _LINK_MARK.sub(fixed, text)
        except _LinkUrlFailed as failure:
            raise failure.error from None
        return RenderedMessage(
            subject=_NEWLINES.sub(" ", subject).strip(),
            html=html,
            text=tidy_rendered_text(text) if self._text_derived else text,
        )

    def _personalise(self, index: int, variables: dict[str, Any]) -> str:
        template = self._link_templates[index]
        if isinstance(template, str):
            return template
        try:
            return _run(template, variables).strip()
        except _RENDER_ERRORS as exc:
            raise TemplateError(
                f"link {index} ({self.links[index].url}): {_describe(exc)}",
                part="html",
                line=self._link_lines[index],
            ) from exc


def _template_line(traceback: TracebackType | None) -> int | None:
    """The template line where a render error happened (Jinja rewrites the traceback)."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _describe(exc: Exception) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    if isinstance(exc, JinjaTemplateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _run(template: Template, variables: dict[str, Any]) -> str:
    """``template.render(variables)`` for a dict that already holds the globals.

    ``Template.render`` builds each context by merging the globals into a copy of the
    variables; one render of a message runs several templates (parts and links) on the
    same variables, so they are merged once and shared.
    """
    context = template.new_context(variables, shared=True)
    chunks: list[str] = []
    size = 0
    deadline = time.monotonic() + MAX_RENDER_SECONDS
    try:
        for chunk in template.root_render_func(context):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise SecurityError(f"the rendered part exceeds {MAX_RENDER_CHARS} characters")
            if len(chunks) % 256 == 0 and time.monotonic() > deadline:
                raise SecurityError(f"the template took more than {MAX_RENDER_SECONDS} s to render")
        return "".join(chunks)
    except Exception:
        template.environment.handle_exception()  # re-raises, with template line numbers


def _render(part: _Part, variables: dict[str, Any]) -> str:
    try:
        return _run(part.template, variables)
    except _LinkUrlFailed as failure:
        raise failure.error from None
    except TemplateError:
        raise
    except _RENDER_ERRORS as exc:
        line = _template_line(exc.__traceback__) if part.lines_match_source else None
        raise TemplateError(_describe(exc), part=part.name, line=line) from exc


def _compile_generated(
    env: ImmutableSandboxedEnvironment, source: str, part: TemplatePart, why: str
) -> Template:
    """Compile a template this package generated from the user's (already valid) one."""
    try:
        template: Template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{why}: {exc.message}", part=part) from exc
    return template


def _compile_link(link: Link, source: str, line: int) -> Template | str:
    if "{" not in source:
        return source
    try:
        return compile_part(TEXT_ENV, source, "html")
    except TemplateError as exc:
        raise TemplateError(
            f"the link {link.url!r} is not a complete template on its own ({exc.message});"
            " keep every {% ... %} block that builds a URL inside its href",
            part="html",
            line=line,
        ) from exc


def _track_text_links(text: str, links: tuple[Link, ...], sources: tuple[str, ...]) -> str:
    """Point the URLs of a hand-written text part that are links of the HTML at those links
    (rendered where they stand, so a URL inside a loop gets each item's value)."""
    by_url: dict[str, int] = {}
    for link in links:
        by_url.setdefault(link.url, link.index)
    if not by_url:
        return text
    protected = protect_jinja(text)

    def replace(match: re.Match[str]) -> str:
        candidate = match.group(0)
        while candidate:
            index = by_url.get(protected.restore(candidate))
            if index is not None:
                return link_call(index, sources[index]) + match.group(0)[len(candidate) :]
            if candidate[-1] not in _URL_TRAILER:
                break
            candidate = candidate[:-1]
        return match.group(0)

    return protected.restore(_TEXT_URL.sub(replace, protected.text))


def compile_template(
    subject: str, html: str, text: str | None = None, *, inline_css: bool = True
) -> CompiledTemplate:
    """Compile a message: subject, HTML and an optional text part (else derived from HTML).

    Raises :class:`TemplateError` naming the part and line of the first problem found.
    """
    # U+001A marks fixed links in compiled templates (links.LINK_MARK): never the user's.
    subject, html = subject.replace("\x1a", ""), html.replace("\x1a", "")
    text = text.replace("\x1a", "") if text is not None else None
    subject_part = _Part("subject", compile_part(TEXT_ENV, subject, "subject"), True)
    compile_part(HTML_ENV, html, "html")  # errors reported against the user's own lines
    if text is not None:
        compile_part(TEXT_ENV, text, "text")

    original = protect_jinja(html)
    rewrite = rewrite_links(original)
    link_templates = tuple(
        _compile_link(link, source, line)
        for link, source, line in zip(rewrite.links, rewrite.sources, rewrite.lines, strict=True)
    )
    body = compiler.inline_css(rewrite.protected) if inline_css else rewrite.protected
    html_part = _Part(
        "html",
        _compile_generated(
            HTML_ENV, body.restore(body.text), "html", "the HTML after CSS inlining failed"
        ),
        lines_match_source=body is rewrite.protected,
    )

    if text is None:
        first_link_token = len(original.markup)
        link_urls = {
            body.token(first_link_token + link.index).upper(): link.url for link in rewrite.links
        }
        text_source = html_to_text_template(body, link_urls)
        text_part = _Part(
            "text",
            _compile_generated(
                DERIVED_TEXT_ENV,
                text_source,
                "text",
                "the text part derived from the HTML is not a valid template; write the"
                " text part yourself",
            ),
            lines_match_source=False,
        )
    else:
        tracked = _track_text_links(text, rewrite.links, rewrite.sources)
        text_part = _Part(
            "text",
            _compile_generated(TEXT_ENV, tracked, "text", "the text part with its links"),
            True,
        )

    return CompiledTemplate(
        subject=subject_part,
        html=html_part,
        text=text_part,
        text_derived=text is None,
        links=rewrite.links,
        link_templates=link_templates,
        link_lines=rewrite.lines,
    )


def check_syntax(subject: str, html: str, text: str | None = None) -> None:
    """Check every part and link of a message; raise :class:`TemplateError` if one fails.

    Cheap enough for an editor's "check" button: no CSS inlining, no text derivation.
    """
    compile_part(TEXT_ENV, subject, "subject")
    compile_part(HTML_ENV, html, "html")
    if text is not None:
        compile_part(TEXT_ENV, text, "text")
    rewrite = rewrite_links(protect_jinja(html))
    for link, source, line in zip(rewrite.links, rewrite.sources, rewrite.lines, strict=True):
        _compile_link(link, source, line)


@dataclass(frozen=True, slots=True)
class CompiledText:
    """A plain-text message (an SMS) compiled once, rendered per recipient."""

    template: Template

    def render(self, variables: Mapping[str, Any]) -> str:
        context = {**TEMPLATE_GLOBALS, **variables}
        try:
            return _run(self.template, context)
        except TemplateError:
            raise
        except _RENDER_ERRORS as exc:
            line = _template_line(exc.__traceback__)
            raise TemplateError(_describe(exc), part="text", line=line) from exc


def compile_text(source: str) -> CompiledText:
    """Compile the text of an SMS in the sandbox (no escaping: it is not HTML); raises
    TemplateError naming the line."""
    found = compiler.find_foreign_syntax(source)
    if found is not None:
        line, advice = found
        raise TemplateError(advice, part="text", line=line)
    return CompiledText(compile_part(TEXT_ENV, source, "text"))
