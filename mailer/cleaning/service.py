"""Judging one e-mail address by itself: syntax, role accounts, disposable domains, typos, and
the combination of those with what DNS said about the domain (``judge``).

The DNS side lives in ``mailer.cleaning.dns``; duplicates and suppression are ``audience``'s
business.  Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import email_validator
from disposable_email_domains import blocklist as _DISPOSABLE_DOMAINS
from email_validator import EmailNotValidError, validate_email

from mailer.cleaning.verdicts import DomainVerdict, EmailVerdict, Reason, Verdict, worst


@dataclass(frozen=True, slots=True)
class SyntaxVerdict:
    ok: bool
    normalized: str
    reason: str = ""


# --- syntax ---------------------------------------------------------------------------------

# The shape of nearly every real address: an ASCII dot-atom local part of at most 64
# characters, LDH labels, an alphabetic TLD.  email-validator accepts all of these unchanged
# (its normalisation only lower-cases the domain), so they skip its ~100 µs of work.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(
    rf"(?=[^@]{{1,64}}@){_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+([A-Za-z]{{2,63}})",
    re.ASCII,
)
_EMAIL_MAX_LENGTH = 254
# Top-level names email-validator refuses (localhost, local, test, invalid, onion, arpa...).
_SPECIAL_USE_TLDS = frozenset(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def ascii_fast_path(candidate: str) -> str | None:
    """The lower-cased address if *candidate* is a plain ASCII address email-validator
    certainly accepts, else None (meaning: ask email-validator)."""
    if len(candidate) > _EMAIL_MAX_LENGTH:
        return None
    match = _PLAIN_ADDRESS.fullmatch(candidate)
    if match is None or match.group(1).lower() in _SPECIAL_USE_TLDS:
        return None
    lowered = candidate.lower()
    # "ab--" labels are reserved for IDNA ("xn--"), which email-validator decodes: leave them
    # to it rather than re-implementing that rule here.
    if "--" in lowered:
        return None
    return lowered


def check_syntax(address: str) -> SyntaxVerdict:
    """Syntax per RFC 5321/5322 with internationalised domains (email-validator), no DNS."""
    candidate = address.strip()
    if not candidate:
        return SyntaxVerdict(False, "", "empty address")
    plain = ascii_fast_path(candidate)
    if plain is not None:
        return SyntaxVerdict(True, plain)
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        return SyntaxVerdict(False, candidate, str(exc))
    # Local parts are case-sensitive in theory, never in practice: lower-case for dedupe.
    return SyntaxVerdict(True, result.normalized.lower())


def split_address(normalized: str) -> tuple[str, str]:
    """``(local, domain)`` of an address that passed ``check_syntax``."""
    local, _, domain = normalized.rpartition("@")
    return local, domain


@lru_cache(maxsize=65536)
def domain_forms(domain: str) -> tuple[str, str] | None:
    """``(normalised, ascii)`` forms of a mail domain, or None if it is not one: normalised as
    in ``check_syntax`` (lower case, U-label), ascii the A-label (punycode) DNS is asked
    about.  ``correo.españa.pe`` -> ``("correo.españa.pe", "correo.xn--espaa-rta.pe")``."""
    name = domain.strip().rstrip(".").lower()
    if ascii_fast_path(f"postmaster@{name}") is not None:
        return name, name
    try:
        result = validate_email(f"postmaster@{name}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return result.domain.lower(), result.ascii_domain.lower()


# --- role accounts --------------------------------------------------------------------------

# Compared after dropping "+tag", dots, dashes, underscores and trailing digits, so
# "mesa.de.partes", "no-reply" and "ventas2" all match.
ROLE_ACCOUNTS = frozenset(
    {
        # Spanish
        "admin", "administracion", "administrador", "admision", "admisiones", "atencion",
        "atencionalcliente", "ayuda", "citas", "clientes", "cobranza", "cobranzas", "comercial",
        "compras", "comunicaciones", "consultas", "contabilidad", "contacto", "contactos",
        "correo", "cotizaciones", "empleos", "equipo", "eventos", "facturacion", "facturas",
        "finanzas", "gerencia", "hola", "informacion", "informes", "legal", "logistica",
        "mesadeayuda", "mesadepartes", "noresponder", "notificaciones", "oficina", "pagos",
        "pedidos", "prensa", "reclamaciones", "reclamos", "recepcion", "recursoshumanos",
        "reservas", "rrhh", "rrpp", "sac", "secretaria", "seguridad", "servicioalcliente",
        "sistemas", "soporte", "suscripciones", "tesoreria", "ti", "tramites", "ventas",
        # English
        "abuse", "accounting", "accounts", "billing", "careers", "contact", "customerservice",
        "donotreply", "ftp", "hello", "help", "helpdesk", "hostmaster", "hr", "info", "it",
        "jobs", "list", "listserv", "mailerdaemon", "marketing", "news", "newsletter", "no",
        "noc", "nobody", "noreply", "notifications", "office", "orders", "payments",
        "postmaster", "press", "privacy", "root", "sales", "security", "servicedesk",
        "subscribe", "support", "team", "unsubscribe", "usenet", "uucp", "webmaster", "www",
    }
)  # fmt: skip
_ROLE_NOISE = re.compile(r"[._-]|\d+$")


def is_role(local: str) -> bool:
    """Whether *local* names a function (ventas@, info@, no-reply@) rather than a person."""
    base = local.lower().split("+", 1)[0]
    return _ROLE_NOISE.sub("", base) in ROLE_ACCOUNTS


# --- disposable domains ---------------------------------------------------------------------


def is_disposable(domain: str) -> bool:
    """Whether *domain*, or a domain it is under, is a known throw-away mail service."""
    labels = domain.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in _DISPOSABLE_DOMAINS for i in range(len(labels) - 1))


# --- typos ----------------------------------------------------------------------------------

# Most used first: on a tie the earlier one is suggested.
KNOWN_DOMAINS: tuple[str, ...] = (
    "gmail.com", "hotmail.com", "outlook.com", "yahoo.com", "hotmail.es", "outlook.es",
    "yahoo.es", "live.com", "icloud.com", "msn.com", "live.com.pe", "googlemail.com",
    "ymail.com", "rocketmail.com", "me.com", "mac.com", "aol.com", "protonmail.com",
    "proton.me", "gmx.com", "mail.com", "email.com", "zoho.com", "yandex.com",
    "terra.com.pe", "speedy.com.pe", "pucp.edu.pe", "pucp.pe", "unmsm.edu.pe", "uni.edu.pe",
    "uni.pe", "upc.edu.pe", "ulima.edu.pe", "up.edu.pe", "usil.edu.pe", "usmp.pe",
    "upch.pe", "unfv.edu.pe", "unac.edu.pe", "unsa.edu.pe", "utp.edu.pe", "gob.pe",
    "minedu.gob.pe", "minsa.gob.pe", "sunat.gob.pe", "essalud.gob.pe",
)  # fmt: skip
_KNOWN = frozenset(KNOWN_DOMAINS)
_KNOWN_PARTS = tuple((domain, *domain.split(".", 1)) for domain in KNOWN_DOMAINS)

# Top-level names that do not exist but are typed for an existing one.
_TLD_FIXES = {
    "con": "com", "cmo": "com", "ocm": "com", "comm": "com", "coom": "com", "cpm": "com",
    "xom": "com", "vom": "com", "cim": "com", "clm": "com", "cok": "com", "c": "com",
    "nte": "net", "ent": "net", "nett": "net", "ogr": "org", "rog": "org", "orgg": "org",
}  # fmt: skip
# Peruvian second-level names, whose ".pe" is sometimes cut short or mistyped.
_PE_SECOND_LEVEL = frozenset({"com", "edu", "gob", "org", "net", "nom", "mil"})
_PE_FIXES = frozenset({"p", "ep", "pee", "pw"})
_NAME_FUZZ_MIN = 5  # shorter names (uni, upc, live) are too close to real neighbours
_LONG_DOMAIN = 12  # from this length two edits are still a typo


def damerau_levenshtein(left: str, right: str) -> int:
    """Edit distance counting a transposition of neighbours as one edit (optimal string
    alignment), so "gmial" is one edit from "gmail"."""
    if left == right:
        return 0
    previous2: list[int] = []
    previous = list(range(len(right) + 1))
    for i, lc in enumerate(left, 1):
        current = [i] + [0] * len(right)
        for j, rc in enumerate(right, 1):
            cost = 0 if lc == rc else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and lc == right[j - 2] and left[i - 2] == rc:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _fix_tld(domain: str) -> str:
    labels = domain.split(".")
    if len(labels) < 2:
        return domain
    last = labels[-1]
    if last in _TLD_FIXES:
        labels[-1] = _TLD_FIXES[last]
    elif last in _PE_FIXES and len(labels) >= 3 and labels[-2] in _PE_SECOND_LEVEL:
        labels[-1] = "pe"
    elif last == "pe" and len(labels) >= 3:
        # "gmail.com.pe": a known provider with a Peruvian ending that it does not have.
        without = ".".join(labels[:-1])
        if without in _KNOWN:
            return without
    return ".".join(labels)


def _nearest_known(domain: str) -> str | None:
    name, _, suffix = domain.partition(".")
    best: tuple[int, str] | None = None
    for known, known_name, known_suffix in _KNOWN_PARTS:
        budget = 2 if len(known) >= _LONG_DOMAIN else 1
        if abs(len(domain) - len(known)) > budget:
            continue
        name_distance = damerau_levenshtein(name, known_name)
        if name_distance and len(known_name) < _NAME_FUZZ_MIN:
            continue
        distance = name_distance + damerau_levenshtein(suffix, known_suffix)
        if 0 < distance <= budget and (best is None or distance < best[0]):
            best = (distance, known)
    return None if best is None else best[1]


@lru_cache(maxsize=65536)
def suggest_domain(domain: str) -> str | None:
    """The domain the user probably meant (gmial.com -> gmail.com, hotmail.con ->
    hotmail.com), or None.  A known domain is never corrected."""
    name = domain.strip().rstrip(".").lower()
    if not name or name in _KNOWN:
        return None
    fixed = _fix_tld(name)
    if fixed in _KNOWN:
        return fixed
    nearest = _nearest_known(fixed)
    if nearest is not None:
        return nearest
    return fixed if fixed != name else None


# --- the verdict ----------------------------------------------------------------------------

_NOT_CHECKED = DomainVerdict("", Verdict.UNKNOWN, (Reason.DNS_ERROR,), detail="not checked")


def judge(address: str | SyntaxVerdict, domain: DomainVerdict | None) -> EmailVerdict:
    """Combine the syntax of *address* (raw, or already checked) with the DNS verdict on its
    domain (None: not checked yet, so unknown) and the local checks: a role account, a
    disposable domain or a likely typo make an otherwise valid address risky."""
    syntax = address if isinstance(address, SyntaxVerdict) else check_syntax(address)
    if not syntax.ok:
        return EmailVerdict(
            syntax.normalized, Verdict.INVALID, (Reason.SYNTAX,), None, syntax.reason
        )
    local, domain_name = split_address(syntax.normalized)
    checked = domain if domain is not None else _NOT_CHECKED
    verdicts = [checked.verdict]
    reasons = list(checked.reasons)
    if is_role(local):
        verdicts.append(Verdict.RISKY)
        reasons.append(Reason.ROLE)
    if is_disposable(domain_name):
        verdicts.append(Verdict.RISKY)
        reasons.append(Reason.DISPOSABLE)
    suggestion = None
    corrected = suggest_domain(domain_name)
    if corrected is not None:
        suggestion = f"{local}@{corrected}"
        verdicts.append(Verdict.RISKY)
        reasons.append(Reason.TYPO)
    return EmailVerdict(
        syntax.normalized, worst(*verdicts), tuple(reasons), suggestion, checked.detail
    )


def judge_address(address: str, domains: Mapping[str, DomainVerdict]) -> EmailVerdict:
    """``judge`` with the domain verdict looked up in *domains* (keyed by the lower-cased
    domain as ``split_address`` returns it, e.g. from ``DomainChecker.check_many``)."""
    syntax = check_syntax(address)
    if not syntax.ok:
        return judge(syntax, None)
    return judge(syntax, domains.get(split_address(syntax.normalized)[1]))
