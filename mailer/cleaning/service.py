"""Judging one e-mail address by itself."""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email


@dataclass(frozen=True, slots=True)
class SyntaxVerdict:
    ok: bool
    normalized: str
    reason: str = ""


def check_syntax(address: str) -> SyntaxVerdict:
    """Syntax per RFC 5321/5322 with internationalised domains (email-validator), no DNS."""
    candidate = address.strip()
    if not candidate:
        return SyntaxVerdict(False, "", "empty address")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        return SyntaxVerdict(False, candidate, str(exc))
    # Local parts are case-sensitive in theory, never in practice: lower-case for dedupe.
    return SyntaxVerdict(True, result.normalized.lower())
