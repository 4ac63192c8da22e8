"""Template filters for Spanish-language (Peru) messages: ``fecha``, ``soles``, ``default``.

Filters are lenient with missing data, as a mail merge must be: an undefined, ``None`` or
empty value renders as an empty string, and a value that cannot be read as a date or an
amount is shown as it is rather than failing the whole send.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined

MONTHS = (
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "setiembre",  # the spelling used in Peru (official documents, the press)
    "octubre",
    "noviembre",
    "diciembre",
)

DATE_FORMATS = ("larga", "corta")


def _lima() -> tzinfo:
    try:
        return ZoneInfo("America/Lima")
    except ZoneInfoNotFoundError:  # no tz database here: Peru has kept UTC-5 since 1994
        return timezone(timedelta(hours=-5), "PET")


LIMA = _lima()


def _is_missing(value: Any) -> bool:
    return (
        isinstance(value, Undefined)
        or value is None
        or (isinstance(value, str) and not value.strip())
    )


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        # An aware datetime is shown as the date it is in Peru.
        return value.astimezone(LIMA).date() if value.tzinfo is not None else value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return _as_date(datetime.fromisoformat(text))
        except ValueError:
            pass
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    return None


def fecha(value: Any, formato: str = "larga") -> str:
    """A date, datetime or ISO 8601 string as a date in Peruvian Spanish.

    ``larga`` (default): "22 de noviembre de 2026"; ``corta``: "22/11/2026".
    """
    if formato not in DATE_FORMATS:
        raise ValueError(
            f"fecha: unknown format {formato!r}; use 'larga' (22 de noviembre de 2026)"
            " or 'corta' (22/11/2026)"
        )
    if _is_missing(value):
        return ""
    day = _as_date(value)
    if day is None:
        return str(value)
    if formato == "corta":
        return f"{day.day:02d}/{day.month:02d}/{day.year}"
    return f"{day.day} de {MONTHS[day.month - 1]} de {day.year}"


def soles(value: Any) -> str:
    """An amount in Peruvian soles: 1234.5 -> "S/ 1,234.50" (comma thousands, dot decimals)."""
    if _is_missing(value):
        return ""
    if isinstance(value, bool):  # bool is an int, but True is not one sol
        return str(value)
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else str(value))
    except (InvalidOperation, ValueError, TypeError):
        return str(value)
    if not amount.is_finite():
        return str(value)
    cents = amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ""
    return f"{sign}S/ {abs(cents):,.2f}"


def default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default`` that also treats ``None`` and empty or blank strings as missing.

    Contact fields come from CSV cells and database columns, where "no value" is an empty
    string or NULL as often as an absent key; ``{{ contact.first_name | default("proveedor") }}``
    covers all three. ``boolean=True`` keeps Jinja's meaning: any falsy value is replaced.
    """
    if _is_missing(value) or (boolean and not value):
        return default_value
    return value
