"""The Peruvian Spanish filters: fecha and soles."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from mailer.content import TemplateError, compile_template
from mailer.content.filters import fecha, soles


def render_subject(source: str, **context: object) -> str:
    return compile_template(source, "<p></p>").render(context).subject


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(2026, 11, 22), "22 de noviembre de 2026"),
        (datetime(2026, 1, 1, 9, 30), "1 de enero de 2026"),
        ("2026-09-05", "5 de setiembre de 2026"),
        ("2026-12-31T23:59:00", "31 de diciembre de 2026"),
        # 02:00 UTC on the 23rd is still the 22nd in Lima (UTC-5)
        (datetime(2026, 11, 23, 2, 0, tzinfo=UTC), "22 de noviembre de 2026"),
        ("2026-11-23T02:00:00Z", "22 de noviembre de 2026"),
        (None, ""),
        ("", ""),
        ("pronto", "pronto"),
    ],
)
def test_fecha_long(value: object, expected: str) -> None:
    assert fecha(value) == expected


def test_fecha_short_and_in_a_template() -> None:
    assert fecha(date(2026, 11, 22), "corta") == "22/11/2026"
    assert fecha("2026-03-04", "corta") == "04/03/2026"
    subject = render_subject("Vence el {{ d | fecha }} ({{ d | fecha('corta') }})", d="2026-11-22")
    assert subject == "Vence el 22 de noviembre de 2026 (22/11/2026)"
    assert render_subject("[{{ missing | fecha }}]") == "[]"


def test_fecha_unknown_format_is_a_template_error() -> None:
    template = compile_template("{{ d | fecha('larguísima') }}", "<p></p>")

    with pytest.raises(TemplateError) as caught:
        template.render({"d": "2026-11-22"})

    assert caught.value.part == "subject"
    assert "use 'larga'" in caught.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1234.5, "S/ 1,234.50"),
        (0, "S/ 0.00"),
        (1234567.891, "S/ 1,234,567.89"),
        (Decimal("0.005"), "S/ 0.01"),  # half up, as on a receipt
        (2.675, "S/ 2.68"),  # the decimal written, not the binary float
        (-50, "-S/ 50.00"),
        ("1500", "S/ 1,500.00"),
        (None, ""),
        ("", ""),
        ("gratis", "gratis"),
    ],
)
def test_soles(value: object, expected: str) -> None:
    assert soles(value) == expected


def test_soles_in_a_template() -> None:
    assert render_subject("Total: {{ total | soles }}", total=1234.5) == "Total: S/ 1,234.50"
