"""The values cleaning hands out: a verdict, the reasons behind it, and their Spanish labels.

A verdict is one of four words, ordered by how much it stops a send (``worst``).  Reasons say
why; ``duplicate`` and ``suppressed`` are decided by ``audience`` but belong to the same
vocabulary so a report can list every reason an address was set aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    VALID = "valid"
    RISKY = "risky"
    INVALID = "invalid"
    UNKNOWN = "unknown"  # DNS trouble: retried later, never treated as invalid


class Reason(StrEnum):
    SYNTAX = "syntax"
    MX = "mx"
    IMPLICIT_MX = "implicit_mx"  # no MX, but A/AAAA (RFC 5321 section 5.1)
    NULL_MX = "null_mx"  # "MX 0 ." (RFC 7505): the domain accepts no mail
    NXDOMAIN = "nxdomain"
    NO_MAIL_HOST = "no_mail_host"
    DNS_ERROR = "dns_error"
    DISPOSABLE = "disposable"
    ROLE = "role"
    TYPO = "typo"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"


REASON_LABELS_ES: dict[Reason, str] = {
    Reason.SYNTAX: "Sintaxis no válida",
    Reason.MX: "Tiene MX",
    Reason.IMPLICIT_MX: "MX implícito (A/AAAA)",
    Reason.NULL_MX: "MX nulo (RFC 7505)",
    Reason.NXDOMAIN: "Dominio inexistente",
    Reason.NO_MAIL_HOST: "Sin servidor de correo",
    Reason.DNS_ERROR: "Error de DNS (se reintentará)",
    Reason.DISPOSABLE: "Dominio desechable",
    Reason.ROLE: "Cuenta de rol",
    Reason.TYPO: "Posible error de escritura",
    Reason.DUPLICATE: "Duplicado",
    Reason.SUPPRESSED: "Suprimido",
}

VERDICT_LABELS_ES: dict[Verdict, str] = {
    Verdict.VALID: "Válido",
    Verdict.RISKY: "Riesgoso",
    Verdict.INVALID: "No válido",
    Verdict.UNKNOWN: "Desconocido",
}

# Higher is worse: an unknown domain outranks a role account (we cannot send to it yet), and
# nothing outranks invalid.
_SEVERITY: dict[Verdict, int] = {
    Verdict.VALID: 0,
    Verdict.RISKY: 1,
    Verdict.UNKNOWN: 2,
    Verdict.INVALID: 3,
}


def worst(*verdicts: Verdict) -> Verdict:
    """The most severe of *verdicts* (invalid > unknown > risky > valid); valid if none."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.VALID)


@dataclass(frozen=True, slots=True)
class DomainVerdict:
    """What DNS says about a domain.  ``mx`` lists the hosts that take its mail (the domain
    itself for an implicit MX); ``detail`` refines a DNS error (timeout, servfail, refused)."""

    domain: str
    verdict: Verdict
    reasons: tuple[Reason, ...]
    mx: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EmailVerdict:
    """The verdict on one address; ``suggestion`` is the full corrected address for a typo."""

    address: str
    verdict: Verdict
    reasons: tuple[Reason, ...]
    suggestion: str | None = None
    detail: str = ""
