"""The template check: what a reviewer would point out in a template that compiles."""

from __future__ import annotations

import pytest

from mailer.content import TemplateError
from mailer.content.check import check_template

GOOD = """<html><body>
<span style="display:none">Novedades de noviembre</span>
<p>Hola {{ contact.first_name }}, de {{ contact.company }}</p>
<img src="https://example.pe/logo.png" alt="Logo de la entidad">
<a href="https://example.pe/portal?c={{ contact.codigo }}">Portal</a>
<a href="{{ unsubscribe_url }}">Darse de baja</a>
</body></html>"""


def codes(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.code for f in findings]


def test_a_good_template_has_no_findings() -> None:
    assert check_template("Hola {{ contact.first_name }}", GOOD, contact_fields={"codigo"}) == []


def test_fields_no_contact_has_and_bare_variables() -> None:
    findings = check_template("Hola {{ nombre }}", GOOD)
    assert codes(findings) == ["unknown_variable", "unknown_field"]
    assert "contact.nombre" in findings[0].text()
    assert "contact.codigo" in findings[1].text()


def test_missing_unsubscribe_preheader_alt_https_and_bad_links() -> None:
    html = (
        '<p>Hola</p><img src="http://example.pe/x.png">'
        '<a href="https://{{ contact.dominio }}">roto</a>'
    )
    found = codes(check_template("Asunto", html, contact_fields={"dominio"}))
    assert found == [
        "no_unsubscribe",
        "image_without_alt",
        "image_not_https",
        "no_preheader",
        "bad_link",
    ]


def test_gmail_clipping() -> None:
    html = GOOD.replace("</body>", "<p>" + "texto " * 20000 + "</p></body>")
    assert "too_large" in codes(check_template("Asunto", html, contact_fields={"codigo"}))


def test_a_template_that_does_not_compile_raises() -> None:
    with pytest.raises(TemplateError):
        check_template("Asunto", "{% if x %}")
