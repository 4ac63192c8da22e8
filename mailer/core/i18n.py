"""Translations: gettext catalogs (``mailer/locale/<lang>/LC_MESSAGES/mailer.po``), read with
Babel, Spanish (es-PE) first.

Error messages are English templates with named parameters (see ``mailer.core.errors``);
``localise`` translates the template and then fills it in, so the values (a list name, a
line number) are never part of what translators see.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

from mailer.core.errors import MailerError, Term

LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
DEFAULT_LOCALE = "es"
SUPPORTED = ("es", "en")  # English is the source language of error messages


@lru_cache(maxsize=8)
def catalog(locale: str) -> dict[str, str]:
    path = LOCALE_DIR / locale / "LC_MESSAGES" / "mailer.po"
    if not path.exists():
        return {}
    with path.open("rb") as handle:
        po = read_po(handle, locale=locale)
    return {
        str(message.id): str(message.string)
        for message in po
        if message.id and message.string and not message.fuzzy
    }


def gettext(message: str, locale: str = DEFAULT_LOCALE) -> str:
    """*message* translated.  A message of another library of the form "Head: detail" that
    is not in the catalog as a whole is translated by its head ("Head:" in the catalog)."""
    entries = catalog(locale)
    found = entries.get(message)
    if found is not None:
        return found
    head, separator, detail = message.partition(": ")
    if separator and f"{head}:" in entries:
        return f"{entries[head + ':']} {detail}"
    return message


def localise_text(template: str, params: dict[str, Any], locale: str = DEFAULT_LOCALE) -> str:
    """A message template translated into *locale*, then filled in with *params*."""
    translated = gettext(template, locale)
    values = {
        key: gettext(value, locale) if isinstance(value, Term) else value
        for key, value in params.items()
    }
    try:
        return translated.format(**values) if values else translated
    except (KeyError, IndexError, ValueError):  # a broken translation must not hide the text
        return template.format(**params) if params else template


def localise(error: MailerError, locale: str = DEFAULT_LOCALE) -> str:
    """The error's message in *locale* (the English one when no translation exists)."""
    return localise_text(error.template, error.params, locale)


def negotiate(accept_language: str | None) -> str:
    """The best supported locale for an ``Accept-Language`` header (default: Spanish)."""
    if not accept_language:
        return DEFAULT_LOCALE
    ranked = []
    for part in accept_language.split(","):
        tag, _, quality = part.strip().partition(";q=")
        try:
            weight = float(quality) if quality else 1.0
        except ValueError:
            weight = 0.0
        ranked.append((weight, tag.strip().lower().split("-")[0]))
    for _weight, language in sorted(ranked, reverse=True):
        if language in SUPPORTED:
            return language
    return DEFAULT_LOCALE
