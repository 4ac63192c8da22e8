"""The check a communicator sees before saving or sending a template.

Syntax errors stop a template (:class:`TemplateError` from ``compile_template``); the
findings here are what a careful reviewer would point out in a template that compiles:
variables no contact provides, a message Gmail will clip, no unsubscribe link, images
without alt text or over plain http, no preheader, links that are not URLs.

Messages are English templates with parameters (translated by ``mailer.core.i18n``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bs4 import BeautifulSoup
from jinja2 import meta

from mailer.content.preview import SAMPLE_CONTACT
from mailer.content.sandbox import TEXT_ENV, RenderBudget
from mailer.content.service import compile_template

GMAIL_CLIP_BYTES = 102 * 1024
CONTEXT_NAMES = frozenset({"contact", "campaign", "unsubscribe_url", "web_version_url"})
BASE_FIELDS = frozenset({"email", "first_name", "last_name", "phone", "company"})


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str  # "error": fix before sending; "warning": worth fixing
    code: str
    message: str  # an English template; ``params`` fill it in
    params: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return self.message.format(**self.params) if self.params else self.message


class _RecordingContact(dict[str, Any]):
    """The sample contact, noting every field a template asks for that it does not have."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            if key not in self.missing:
                self.missing.append(key)
            raise KeyError(key)
        return super().__getitem__(key)


def check_template(
    subject: str,
    html: str,
    text: str | None = None,
    *,
    contact_fields: Iterable[str] = (),
    sample: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Findings for a template that compiles (compile errors raise TemplateError).

    *contact_fields* are the custom attributes the account's contacts have; the standard
    fields are always known.  The template is rendered once for *sample*.
    """
    compiled = compile_template(subject, html, text)
    known = BASE_FIELDS | set(contact_fields)
    values = {**SAMPLE_CONTACT, **(sample or {})}
    contact = _RecordingContact({key: values.get(key, "") for key in known})
    findings: list[Finding] = []
    for source in (subject, html, text or ""):
        for name in sorted(meta.find_undeclared_variables(TEXT_ENV.parse(source)) - CONTEXT_NAMES):
            if name not in TEXT_ENV.globals:
                findings.append(
                    Finding(
                        "error",
                        "unknown_variable",
                        "'{name}' is not a variable: write contact.{name} for a contact field",
                        {"name": name},
                    )
                )
    urls: dict[int, str] = {}

    def personalised(index: int, url: str) -> str:
        urls[index] = url
        return url

    with RenderBudget():
        rendered = compiled.render(
            {
                "contact": contact,
                "campaign": {"name": "Revisión"},
                "unsubscribe_url": "https://example.pe/u/token",
                "web_version_url": "https://example.pe/v/token",
            },
            link_url=personalised,
        )
    for name in contact.missing:
        if name not in known:
            findings.append(
                Finding(
                    "warning",
                    "unknown_field",
                    "contact.{name} is not a field of your contacts: it will be empty unless "
                    'you give it a default, e.g. contact.{name} | default("...")',
                    {"name": name},
                )
            )
    size = len(rendered.html.encode())
    if size > GMAIL_CLIP_BYTES:
        findings.append(
            Finding(
                "warning",
                "too_large",
                "the HTML is {size} KB: Gmail clips messages over 102 KB and hides the rest",
                {"size": size // 1024},
            )
        )
    if "unsubscribe_url" not in html:
        findings.append(
            Finding(
                "error",
                "no_unsubscribe",
                'there is no unsubscribe link: add <a href="{{ unsubscribe_url }}">Darse de '
                "baja</a>",
            )
        )
    findings += _image_findings(rendered.html)
    if not _has_preheader(rendered.html):
        findings.append(
            Finding(
                "warning",
                "no_preheader",
                "there is no preheader: add a hidden first line, shown by inboxes after the "
                "subject",
            )
        )
    for link in compiled.links:
        url = urls.get(link.index, link.url)
        if not _valid_url(url):
            findings.append(
                Finding(
                    "error",
                    "bad_link",
                    "the link '{text}' does not lead to a valid address: {url}",
                    {"text": link.text[:60] or link.url[:60], "url": url[:200]},
                )
            )
    return findings


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme in {"http", "https"}
        and "." in host
        and " " not in url.strip()
        and not host.startswith(".")
    )


def _image_findings(html: str) -> list[Finding]:
    findings = []
    for image in BeautifulSoup(html, "html.parser").find_all("img"):
        source = str(image.get("src", ""))
        if image.get("alt") is None:
            findings.append(
                Finding(
                    "warning",
                    "image_without_alt",
                    "the image {src} has no alt text (screen readers, blocked images)",
                    {"src": source[:120]},
                )
            )
        if not source.startswith(("https://", "data:", "cid:")):
            findings.append(
                Finding(
                    "warning",
                    "image_not_https",
                    "the image {src} is not served over https: many clients will not show it",
                    {"src": source[:120]},
                )
            )
    return findings


def _has_preheader(html: str) -> bool:
    soup = BeautifulSoup(html, "html.parser")
    body = soup.body or soup
    for element in body.find_all(True, limit=12):
        style = str(element.get("style", "")).replace(" ", "").lower()
        classes = " ".join(element.get("class") or []).lower()
        if "preheader" in classes or "display:none" in style:
            return bool(element.get_text(strip=True))
    return False
