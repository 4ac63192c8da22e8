"""The plain-text part derived from the HTML part, as a Jinja template.

Runs once per campaign on the protected HTML (template code replaced by tokens, tracked
hrefs already pointing at ``_link(N)``): headings, paragraphs and tables become blocks
separated by blank lines, list items start with "- " (or "1. "), ``<br>`` breaks the line,
links read "anchor text (URL)", and nothing of ``<head>``, ``<style>``, ``<script>``,
comments (Outlook-only markup) or hidden elements (preheaders) is kept. The tokens are then
restored, so the result is a template rendered per recipient like the other parts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from html.parser import HTMLParser

from mailer.content.compiler import ProtectedMarkup, escape_literal_jinja

_SKIPPED = frozenset({"head", "title", "style", "script", "noscript", "template", "svg"})
# fmt: off
_PARAGRAPHS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "hr", "dl",
    "figure", "address", "ul", "ol",
})
_LINES = frozenset({
    "div", "tr", "li", "dt", "dd", "section", "article", "header", "footer", "center", "main",
    "nav", "aside", "form", "caption", "tbody", "thead", "tfoot",
})
_VOID = frozenset({
    "br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "param",
    "source", "track", "wbr",
})
# fmt: on
# Elements whose end tag HTML lets authors omit: skipping one "until its end tag" could
# swallow the rest of the document, so they are not skipped when hidden.
_OPTIONAL_END = frozenset({"p", "li", "dt", "dd", "tr", "td", "th", "tbody", "thead", "tfoot"})
# display:none, or the preheader trick max-height:0 + overflow:hidden. Not mso-hide:all,
# which hides from Outlook only the <a> that other clients show instead of a VML button.
_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none"
    r"|max-height\s*:\s*0(?:px)?\s*(?:;|$|!)(?=.*overflow\s*:\s*hidden)"
    r"|overflow\s*:\s*hidden(?=.*max-height\s*:\s*0(?:px)?\s*(?:;|$|!))",
    re.IGNORECASE | re.DOTALL,
)
_INVISIBLE = re.compile("[\u00ad\u034f\u200b-\u200f\u2060\ufeff]")
_SPACES = re.compile(r"[ \t\r\n\f\u00a0]+")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_WIDE_GAP = re.compile(r"(?<=\S) {3,}")
_EMPTY_LINK = re.compile(r" \(\)")
_STATEMENT = ("{%", "{#")


class _TextWriter(HTMLParser):
    def __init__(self, link_urls: Mapping[str, str], restore: Callable[[str], str]) -> None:
        super().__init__(convert_charrefs=True)
        self.link_urls = link_urls
        self.restore = restore
        self.out: list[str] = []
        self.pending_break = 0
        self.at_line_start = True
        self.cell_gap = False
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.lists: list[list[int]] = []  # one counter per open list; [-1] means bulleted
        self.anchors: list[tuple[str | None, int, list[str]]] = []  # href, out index, alts

    # -- output --------------------------------------------------------------------------

    def request_break(self, newlines: int) -> None:
        self.cell_gap = False
        if self.out:
            self.pending_break = max(self.pending_break, newlines)

    def write(self, text: str) -> None:
        if self.pending_break or self.at_line_start:
            text = text.lstrip(" ")
            if not text:
                return  # spaces between blocks
        if self.pending_break:
            self.out.append("\n" * self.pending_break)
            self.pending_break = 0
            self.at_line_start = True
        if self.at_line_start:
            self.out.append("  " * max(len(self.lists) - 1, 0))
        elif self.cell_gap:  # table cells side by side: "Total  S/ 120.00"
            text = "  " + text.lstrip(" ")
            if self.out[-1].endswith(" "):
                self.out[-1] = self.out[-1].rstrip(" ")
        elif text.startswith(" ") and self.out and self.out[-1].endswith(" "):
            text = text[1:]
        self.cell_gap = False
        self.out.append(text)
        self.at_line_start = False

    # -- parser events -------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip_tag == "head" and tag == "body":  # </head> may be omitted
            self.skip_tag = None
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        attributes = dict(attrs)
        hidden = (
            "hidden" in attributes
            or _HIDDEN_STYLE.search(attributes.get("style") or "") is not None
        )
        if tag in _SKIPPED or (hidden and tag not in _VOID and tag not in _OPTIONAL_END):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "br":
            self.out.append("\n")
            self.at_line_start = True
            self.pending_break = 0
        elif tag == "img":
            if self.anchors and attributes.get("alt"):
                self.anchors[-1][2].append(attributes["alt"] or "")
        elif tag in ("ul", "ol"):
            self.request_break(2 if not self.lists else 1)
            self.lists.append([-1 if tag == "ul" else 0])
        elif tag == "li":
            self.request_break(1)
            if self.lists:
                counter = self.lists[-1]
                if counter[0] >= 0:
                    counter[0] += 1
                self.write("- " if counter[0] < 0 else f"{counter[0]}. ")
            else:
                self.write("- ")
        elif tag in ("td", "th"):
            self.cell_gap = not self.at_line_start and not self.pending_break
        elif tag == "a":
            self.anchors.append((attributes.get("href"), len(self.out), []))
        elif tag in _PARAGRAPHS:
            self.request_break(2)
        elif tag in _LINES:
            self.request_break(1)

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in ("ul", "ol") and self.lists:
            self.lists.pop()
            self.request_break(2 if not self.lists else 1)
        elif tag == "a" and self.anchors:
            self.close_anchor()
        elif tag in _PARAGRAPHS:
            self.request_break(2)
        elif tag in _LINES:
            self.request_break(1)

    def handle_data(self, data: str) -> None:
        if self.skip_tag is not None:
            return
        text = _SPACES.sub(" ", _INVISIBLE.sub("", data))
        if text.strip() or (text and not self.at_line_start):
            self.write(escape_literal_jinja(text))

    def close_anchor(self) -> None:
        href, start, alts = self.anchors.pop()
        label = "".join(self.out[start:]).strip()
        url = self.link_label(href)
        if url is None:
            return
        shown = self.restore(label)
        raw = self.link_urls.get((href or "").strip().upper(), self.restore(url))
        if not label:
            alt = " ".join(" ".join(alts).split())
            self.write(f"{escape_literal_jinja(alt)} ({url})" if alt else url)
        elif shown.rstrip("/") != raw.rstrip("/"):
            self.write(f" ({url})")
        else:  # the text is the URL itself: show it once, tracked
            written = "".join(self.out[start:])
            del self.out[start:]
            self.out.append(written[: len(written) - len(written.lstrip())] + url)

    def link_label(self, href: str | None) -> str | None:
        """What to show for an href in the text, or None to show the anchor text alone."""
        href = (href or "").strip()
        if href.upper() in self.link_urls:
            return href
        lowered = href.lower()
        if lowered.startswith("mailto:"):
            return href[len("mailto:") :].split("?")[0] or None
        if lowered.startswith(("http://", "https://")) or self.restore(href).startswith("{{"):
            return href  # an untracked URL the reader may still need (e.g. unsubscribe)
        return None


def html_to_text_template(protected: ProtectedMarkup, link_urls: Mapping[str, str]) -> str:
    """The text-part template for the protected HTML ``protected.text``.

    ``link_urls`` maps the token in a tracked link's href (upper case) to the link's raw
    URL, so a link whose text is its own URL is written once. The result is meant for an
    environment with ``trim_blocks`` and ``lstrip_blocks``, so that block tags on lines of
    their own leave no blank lines.
    """
    writer = _TextWriter(link_urls, protected.restore)
    writer.feed(protected.text)
    writer.close()
    while writer.anchors:
        writer.close_anchor()
    text = "".join(writer.out)
    lines = [_WIDE_GAP.sub("  ", line.rstrip()) for line in text.split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
    return protected.restore(_keep_newlines_after_trailing_tags(protected, text)) + "\n"


def _keep_newlines_after_trailing_tags(protected: ProtectedMarkup, text: str) -> str:
    """Double the newline after a line of text that ends with a block tag.

    ``trim_blocks`` removes the newline after every block tag: wanted after a line that
    holds only tags, not after "Es cliente VIP{% endif %}", which would run into the next.
    """

    def is_statement(token: re.Match[str]) -> bool:
        return protected.markup[int(token.group(1))][:2] in _STATEMENT

    lines = text.split("\n")
    for number, line in enumerate(lines[:-1]):
        tokens = list(protected.pattern.finditer(line))
        if not tokens or tokens[-1].end() != len(line) or not is_statement(tokens[-1]):
            continue
        content = protected.pattern.sub(lambda t: "" if is_statement(t) else "x", line)
        if content.strip():
            lines[number] = line + "\n"
    return "\n".join(lines)


def tidy_rendered_text(text: str) -> str:
    """Tidy what empty values leave in a rendered text part: runs of blank lines (from
    conditional blocks) and "()" after a link whose URL rendered empty."""
    return _BLANK_LINES.sub("\n\n", _EMPTY_LINK.sub("", text)).strip() + "\n"
