"""Link extraction: find the trackable links of an HTML template and rewrite their hrefs.

Runs once per campaign on the protected HTML (see :mod:`mailer.content.compiler`). Every
``<a href>`` whose URL is http(s) or starts with template code becomes a :class:`Link`, and
its href value is replaced, in place and nothing else in the document changed, by a token
that stands for ``{{ _link(N) }}``. The same is done for the ``href`` of VML elements
(``<v:roundrect>``, Outlook's "bulletproof buttons") inside ``<!--[if mso]>`` comments, so
clicks from Outlook are counted too.

Not links: ``mailto:``, ``tel:``, ``#anchors``, relative URLs, and hrefs that start with
``unsubscribe_url`` or ``web_version_url``, which the sender fills in from the context.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from mailer.content.compiler import ProtectedMarkup, escape_literal_jinja

LINK_CALL = "{{{{ _link({index}) }}}}"
LINK_MARK = "\x1aL{index}\x1a"
"""What a fixed link's href becomes in the compiled template: a literal marker that
``CompiledTemplate.render`` replaces after rendering (one pass over the output) instead of
a call into the sandbox per link and part.  U+001A never occurs in HTML or text (it is
removed from templates on compilation)."""


_CHARACTER_REFERENCE = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);")


def unescape_attribute(value: str) -> str:
    """Decode character references the way a browser does in an attribute value: only
    those closed by ';' (``&region=`` stays as written, ``&amp;`` becomes ``&``)."""
    return _CHARACTER_REFERENCE.sub(lambda match: html.unescape(match.group(0)), value)


def link_call(index: int, source: str) -> str:
    """The template code that replaces a link's href.

    A URL with template code in it is rendered where it stands (captured with ``set``), so
    that inside a ``for`` loop every item gets its own URL; a fixed URL needs no capture.
    """
    if "{" not in source:
        return LINK_MARK.format(index=index)
    # Without autoescape the capture is the URL itself (the href's entities were decoded
    # when it was read), in the HTML and in the text part alike.
    return (
        "{% set _link_url %}{% autoescape false %}"
        + source
        + "{% endautoescape %}{% endset %}{{ _link("
        + str(index)
        + ", _link_url) }}"
    )


_HREF = re.compile(r"""\shref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_HTTP = re.compile(r"https?://", re.IGNORECASE)
_CONTEXT_URL = re.compile(r"\{\{-?\s*(?:unsubscribe_url|web_version_url)\b")
_CONDITIONAL_COMMENT = re.compile(r"\[if\b[^\]]*\]>", re.IGNORECASE)
_CONDITIONAL_END = re.compile(r"<!\[endif\]\s*$", re.IGNORECASE)
_INVISIBLE = re.compile("[\u00ad\u034f\u200b-\u200f\u2060\ufeff]")


@dataclass(frozen=True, slots=True)
class Link:
    """A trackable link of a template, in document order.

    ``url`` is the href as written (HTML entities decoded), possibly with Jinja in it;
    ``text`` the anchor text, or the image's alt text for an image link.
    """

    index: int
    url: str
    text: str


@dataclass(frozen=True, slots=True)
class LinkRewrite:
    protected: ProtectedMarkup
    links: tuple[Link, ...]
    sources: tuple[str, ...]
    """Each link's URL as a template source (literal braces escaped)."""
    lines: tuple[int, ...]
    """Line of each link's tag in the original source."""


@dataclass(slots=True)
class _Found:
    start: int
    end: int
    url: str
    tag_start: int
    tag: str
    text: list[str]
    alts: list[str]


def is_trackable(url: str) -> bool:
    """Whether a (restored) href value is a link to track."""
    if _HTTP.match(url):
        return True
    return url.startswith(("{{", "{%")) and not _CONTEXT_URL.match(url)


class _LinkScanner(HTMLParser):
    def __init__(self, source: str, base: int, in_conditional: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.base = base
        self.in_conditional = in_conditional
        self.line_starts = [0] + [i + 1 for i, char in enumerate(source) if char == "\n"]
        self.found: list[_Found] = []
        self.open: _Found | None = None

    def source_offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.open is not None and tag == "img":
            self.open.alts.extend(value for name, value in attrs if name == "alt" and value)
        if tag != "a" and not (self.in_conditional and tag.startswith("v:")):
            return
        start_tag = self.get_starttag_text() or ""
        href = _HREF.search(start_tag)
        if href is None:
            return
        group = next(i for i in (1, 2, 3) if href.group(i) is not None)
        tag_offset = self.base + self.source_offset()
        found = _Found(
            start=tag_offset + href.start(group),
            end=tag_offset + href.end(group),
            url=unescape_attribute(href.group(group)),
            tag_start=tag_offset,
            tag=tag,
            text=[],
            alts=[],
        )
        self.found.append(found)
        self.open = found

    def handle_endtag(self, tag: str) -> None:
        if self.open is not None and tag == self.open.tag:
            self.open = None

    def handle_data(self, data: str) -> None:
        if self.open is not None:
            self.open.text.append(data)

    def handle_comment(self, data: str) -> None:
        condition = _CONDITIONAL_COMMENT.match(data)
        if self.in_conditional or condition is None:
            return
        inner = _CONDITIONAL_END.sub("", data[condition.end() :])
        inner_offset = self.source_offset() + len("<!--") + condition.end()
        nested = _LinkScanner(inner, self.base + inner_offset, in_conditional=True)
        nested.feed(inner)
        nested.close()
        self.found.extend(nested.found)


def _scan(text: str) -> list[_Found]:
    scanner = _LinkScanner(text, 0, in_conditional=False)
    scanner.feed(text)
    scanner.close()
    found = sorted(scanner.found, key=lambda found: found.start)
    # A VML button usually opens in one conditional comment and closes in another, with
    # the <a> for other clients in between: it is labelled like that <a>.
    for position, vml in enumerate(found):
        if vml.tag != "a" and not "".join(vml.text).strip():
            twin = next(
                (f for f in found[position + 1 :] if f.tag == "a" and f.url == vml.url), None
            )
            if twin is not None:
                vml.text, vml.alts = twin.text, twin.alts
    return found


def _clean_text(protected: ProtectedMarkup, parts: list[str]) -> str:
    return protected.restore(" ".join(_INVISIBLE.sub("", "".join(parts)).split()))


def rewrite_links(protected: ProtectedMarkup) -> LinkRewrite:
    """Find the trackable links in ``protected`` and point their hrefs at ``_link(N)``."""
    links: list[Link] = []
    sources: list[str] = []
    lines: list[int] = []
    added: list[tuple[str, int]] = []
    pieces: list[str] = []
    position = 0
    next_token = len(protected.markup)
    for found in _scan(protected.text):
        url = protected.restore(found.url).strip()
        if not is_trackable(url):
            continue
        sources.append(protected.restore(escape_literal_jinja(found.url)).strip())
        index = len(links)
        line = protected.source_line(found.tag_start)
        text = _clean_text(protected, found.text) or _clean_text(protected, [" ".join(found.alts)])
        links.append(Link(index=index, url=url, text=text))
        lines.append(line)
        added.append((link_call(index, sources[-1]), line))
        pieces += [protected.text[position : found.start], protected.token(next_token)]
        position = found.end
        next_token += 1
    pieces.append(protected.text[position:])
    return LinkRewrite(
        protected=protected.with_text("".join(pieces), tuple(added)),
        links=tuple(links),
        sources=tuple(sources),
        lines=tuple(lines),
    )
