"""The template library under templates/: every e-mail template compiles, renders with its
own sample without asking for anything the sample lacks, and keeps the house rules
(preheader, unsubscribe link, Ley 29733 note, lang, alt texts, https images, size);
the digest's loop shows its items or the empty state; SMS templates stay in GSM-7.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup, Tag
from jinja2 import meta

from mailer.content import CompiledTemplate, RenderedMessage, compile_template
from mailer.content.sandbox import TEMPLATE_GLOBALS, TEXT_ENV
from mailer.content.store import LibraryTemplate, load_library

LIBRARY = Path(__file__).resolve().parents[3] / "templates"
EMAIL_KEYS = sorted(folder.name for folder in (LIBRARY / "email").iterdir() if folder.is_dir())
SMS_FILES = sorted(path.name for path in (LIBRARY / "sms").glob("*.txt"))
UNSUBSCRIBE_URL = "https://example.pe/u/x"
CONTEXT_NAMES = {"contact", "campaign", "unsubscribe_url"}
GMAIL_CLIP_BYTES = 102 * 1024
# Contact fields that collide with dict methods: `contact.items` is dict.items, not the field.
DICT_METHODS = re.compile(r"\bcontact\.(items|keys|values|get|copy|pop|update|setdefault)\b")


class RecordingDict(dict[str, Any]):
    """A sample value that notes every key a template asks for and does not find."""

    def __init__(self, values: dict[str, Any], missing: list[str], path: str) -> None:
        super().__init__(
            {key: _recording(value, missing, f"{path}.{key}") for key, value in values.items()}
        )
        self.missing = missing
        self.path = path

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            self.missing.append(f"{self.path}.{key}")
        return super().__getitem__(key)


def _recording(value: Any, missing: list[str], path: str) -> Any:
    if isinstance(value, dict):
        return RecordingDict(value, missing, path)
    if isinstance(value, list):
        return [_recording(item, missing, f"{path}[]") for item in value]
    return value


@cache
def _library() -> dict[str, LibraryTemplate]:
    return {item.key: item for item in load_library(LIBRARY)}


@cache
def _compiled(key: str) -> CompiledTemplate:
    item = _library()[key]
    return compile_template(item.subject, item.html, item.text)


def _context(contact: dict[str, Any]) -> dict[str, Any]:
    return {"contact": contact, "unsubscribe_url": UNSUBSCRIBE_URL, "campaign": {"name": "x"}}


def _render(key: str, contact: dict[str, Any] | None = None) -> RenderedMessage:
    sample = _library()[key].sample if contact is None else contact
    return _compiled(key).render(_context(sample), link_url=lambda i, url: url)


def _soup(html: str) -> BeautifulSoup:
    return BeautifulSoup(html, "html.parser")


def test_the_library_has_the_expected_templates() -> None:
    assert EMAIL_KEYS == ["aviso", "boletin", "comunicado", "invitacion", "recordatorio", "resumen"]
    assert sorted(_library()) == EMAIL_KEYS
    for item in _library().values():
        assert item.name and item.description and item.subject and item.sample


@pytest.mark.parametrize("key", EMAIL_KEYS)
def test_renders_with_its_sample_and_asks_for_nothing_else(key: str) -> None:
    item = _library()[key]
    missing: list[str] = []
    contact = RecordingDict(item.sample, missing, "contact")

    message = _compiled(key).render(_context(contact), link_url=lambda i, url: url)

    assert missing == []  # every contact field the template reads is in [sample]
    for source in (item.subject, item.html, item.text or "", item.preheader):
        names = meta.find_undeclared_variables(TEXT_ENV.parse(source))
        assert names <= CONTEXT_NAMES | set(TEMPLATE_GLOBALS), names
        assert not DICT_METHODS.search(source)
    assert message.subject.strip() and message.text.strip()
    assert "None" not in message.html and "None" not in message.text


@pytest.mark.parametrize("key", EMAIL_KEYS)
def test_preheader_is_the_hidden_first_element_and_says_what_the_toml_says(key: str) -> None:
    preheader = _library()[key].preheader  # template.toml's `preheader`
    assert preheader.strip()
    sample = _context(_library()[key].sample)
    expected = compile_template(preheader, "<p></p>", "", inline_css=False).render(sample).subject

    body = _soup(_render(key).html).body
    assert body is not None
    first = body.find(True)
    assert isinstance(first, Tag) and first.name == "span"
    assert "preheader" in (first.get("class") or [])
    style = str(first.get("style", "")).replace(" ", "")
    assert "display:none" in style and "mso-hide:all" in style
    assert first.get_text() == expected
    assert expected not in _render(key).text  # hidden: not in the text part either


@pytest.mark.parametrize("key", EMAIL_KEYS)
def test_house_rules(key: str) -> None:
    html = _render(key).html
    soup = _soup(html)

    root = soup.find("html")
    assert isinstance(root, Tag) and str(root.get("lang", "")).startswith("es")
    assert soup.find("meta", attrs={"name": "viewport"}) is not None
    assert re.search(r"@media[^{]*max-width:\s*620px", html)
    assert len(html.encode()) < GMAIL_CLIP_BYTES
    assert "29733" in soup.get_text()

    unsubscribe = soup.find_all("a", href=UNSUBSCRIBE_URL)
    assert unsubscribe and all(link.get_text(strip=True) for link in unsubscribe)

    for image in soup.find_all("img"):
        assert image.get("alt") is not None, image
        assert str(image.get("src", "")).startswith(("https://", "cid:", "data:")), image
    assert not re.search(r"""(?:src=|url\()\s*["']?http://""", html, re.IGNORECASE)

    for table in soup.find_all("table"):  # layout tables say so; data tables have headers
        assert table.get("role") == "presentation" or table.find("th") is not None, table


def test_digest_renders_one_row_per_item() -> None:
    sample = _library()["resumen"].sample
    procesos = sample["procesos"]
    assert len(procesos) == 3

    soup = _soup(_render("resumen").html)

    table = soup.find("table", class_="procesos")
    assert isinstance(table, Tag)
    rows = table.select("tbody tr")
    assert len(rows) == 3
    cells = [[cell.get_text(" ", strip=True) for cell in row.find_all("td")] for row in rows]
    assert cells[0] == [
        "Código: AS-0045-2026",
        "Servicio de mantenimiento de aire acondicionado de la sede central",
        "Fecha límite: 4 de diciembre de 2026",
        "Monto: S/ 48,500.00",
    ]
    assert [row[3] for row in cells] == [
        "Monto: S/ 48,500.00",
        "Monto: S/ 386,250.75",
        "Monto: S/ 12,900.50",
    ]
    assert "3 procesos abiertos" in soup.get_text()
    assert "no hay procesos abiertos" not in soup.get_text()


@pytest.mark.parametrize("procesos", [None, [], ""], ids=["absent", "empty-list", "empty-cell"])
def test_digest_without_items_shows_the_empty_state(procesos: Any) -> None:
    contact: dict[str, Any] = {"first_name": "Lucía", "company": "X S.A.C."}
    if procesos is not None:
        contact["procesos"] = procesos

    message = _render("resumen", contact)

    soup = _soup(message.html)
    assert soup.find("table", class_="procesos") is None
    assert "Esta semana no hay procesos abiertos" in soup.get_text()
    assert "Esta semana no hay procesos abiertos" in message.text


# The GSM 03.38 basic alphabet (one septet each); the extension table ({}[]~\|^€) costs two.
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
SMS_SAMPLE = {
    "first_name": "José",
    "plazo": "2026-12-15",
    "monto": 1250.5,
    "fecha_pago": "2026-12-01",
    "codigo": "482913",
    "fecha_evento": "2026-12-10",
    "hora_evento": "10:00",
}


@pytest.mark.parametrize("name", SMS_FILES)
@pytest.mark.parametrize("contact", [SMS_SAMPLE, {}], ids=["sample", "no-fields"])
def test_sms_templates_fit_one_gsm7_segment(name: str, contact: dict[str, Any]) -> None:
    source = (LIBRARY / "sms" / name).read_text(encoding="utf-8")

    message = TEXT_ENV.from_string(source).render(contact=contact).strip()

    assert message.startswith("Entidad Demo: ")
    assert not set(message) - GSM7_BASIC, set(message) - GSM7_BASIC
    assert len(message) <= 160
    assert "  " not in message


def test_there_are_sms_templates() -> None:
    assert len(SMS_FILES) >= 3
