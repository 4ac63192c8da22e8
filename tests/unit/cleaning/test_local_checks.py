"""Role accounts, disposable domains, typo suggestions and how judge combines them with DNS."""

from __future__ import annotations

import pytest

from mailer.cleaning.service import (
    KNOWN_DOMAINS,
    damerau_levenshtein,
    is_disposable,
    is_role,
    judge,
    judge_address,
    suggest_domain,
)
from mailer.cleaning.verdicts import (
    REASON_LABELS_ES,
    VERDICT_LABELS_ES,
    DomainVerdict,
    Reason,
    Verdict,
    worst,
)

# --- role accounts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local",
    [
        "info", "ventas", "admin", "contacto", "soporte", "rrhh", "facturacion",
        "mesadepartes", "mesa.de.partes", "mesa_de_partes", "webmaster", "postmaster",
        "noreply", "no-reply", "no_reply", "donotreply", "Ventas", "ventas2", "info+peru",
        "recursos.humanos", "support", "sales", "billing", "atencion.al.cliente",
    ],
)  # fmt: skip
def test_role_accounts(local: str) -> None:
    assert is_role(local)


@pytest.mark.parametrize(
    "local",
    ["juan.perez", "maria", "jlopez", "ventanilla", "informatico.juan", "adminson", "carlos85"],
)
def test_people_are_not_role_accounts(local: str) -> None:
    assert not is_role(local)


# --- disposable domains ---------------------------------------------------------------------


def test_disposable_domains_and_their_subdomains() -> None:
    assert is_disposable("mailinator.com")
    assert is_disposable("MAILINATOR.COM.")
    assert is_disposable("eu.mailinator.com")
    assert not is_disposable("gmail.com")
    assert not is_disposable("com")


def test_no_known_domain_is_disposable() -> None:
    assert [domain for domain in KNOWN_DOMAINS if is_disposable(domain)] == []


# --- typos ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("gmial.com", "gmail.com"),
        ("hotmial.com", "hotmail.com"),
        ("yaho.com", "yahoo.com"),
        ("gmail.con", "gmail.com"),
        ("GMAIL.CON", "gmail.com"),
        ("gmai.com", "gmail.com"),
        ("gamil.com", "gmail.com"),
        ("gmail.c", "gmail.com"),
        ("gmail.comm", "gmail.com"),
        ("hotmail.co", "hotmail.com"),
        ("hotmial.es", "hotmail.es"),
        ("outlook.e", "outlook.es"),
        ("outlok.com", "outlook.com"),
        ("yhaoo.es", "yahoo.es"),
        ("icloud.con", "icloud.com"),
        ("tera.com.pe", "terra.com.pe"),
        ("terra.com.p", "terra.com.pe"),
        ("speddy.com.pe", "speedy.com.pe"),
        ("pucp.edu.pr", "pucp.edu.pe"),
        ("unmsm.edu.ep", "unmsm.edu.pe"),
        ("gmail.com.pe", "gmail.com"),
        ("hotmail.com.pe", "hotmail.com"),
        ("miempresa.con", "miempresa.com"),
        ("sunat.gob.p", "sunat.gob.pe"),
    ],
)
def test_typos_are_corrected(typed: str, meant: str) -> None:
    assert suggest_domain(typed) == meant


@pytest.mark.parametrize(
    "domain",
    [
        # real domains one edit away from a known one
        "unp.edu.pe", "unap.edu.pe", "upc.edu.pe", "live.cl", "mail.com", "email.com",
        "ymail.com", "hotmail.fr", "yahoo.com.ar", "yahoo.com.mx",
        # ordinary company domains
        "empresa.com.pe", "municipalidad.gob.pe", "example.org",
    ],
)  # fmt: skip
def test_real_domains_are_left_alone(domain: str) -> None:
    assert suggest_domain(domain) is None


def test_known_domains_are_never_corrected() -> None:
    assert [domain for domain in KNOWN_DOMAINS if suggest_domain(domain) is not None] == []


def test_every_swap_of_two_letters_in_a_known_name_is_corrected() -> None:
    misses = []
    for domain in KNOWN_DOMAINS:
        name, suffix = domain.split(".", 1)
        if len(name) < 5:
            continue  # short names are too close to real neighbours to correct
        for i in range(len(name) - 1):
            swapped = f"{name[:i]}{name[i + 1]}{name[i]}{name[i + 2 :]}.{suffix}"
            if swapped not in KNOWN_DOMAINS and suggest_domain(swapped) != domain:
                misses.append((swapped, suggest_domain(swapped)))
    assert misses == []


def test_damerau_levenshtein_counts_a_swap_as_one_edit() -> None:
    assert damerau_levenshtein("gmial", "gmail") == 1
    assert damerau_levenshtein("gmail", "gmail") == 0
    assert damerau_levenshtein("yaho", "yahoo") == 1
    assert damerau_levenshtein("", "abc") == 3
    assert damerau_levenshtein("kitten", "sitting") == 3
    assert damerau_levenshtein("ca", "abc") == 3  # optimal string alignment, not unrestricted


# --- verdict values -------------------------------------------------------------------------


def test_worst_orders_invalid_unknown_risky_valid() -> None:
    assert worst(Verdict.VALID, Verdict.RISKY) is Verdict.RISKY
    assert worst(Verdict.RISKY, Verdict.UNKNOWN) is Verdict.UNKNOWN
    assert worst(Verdict.UNKNOWN, Verdict.INVALID, Verdict.VALID) is Verdict.INVALID
    assert worst() is Verdict.VALID


def test_every_reason_and_verdict_has_a_spanish_label() -> None:
    assert set(REASON_LABELS_ES) == set(Reason)
    assert set(VERDICT_LABELS_ES) == set(Verdict)
    assert REASON_LABELS_ES[Reason.NO_MAIL_HOST] == "Sin servidor de correo"
    assert VERDICT_LABELS_ES[Verdict.INVALID] == "No válido"


# --- judge ----------------------------------------------------------------------------------


def mx(domain: str) -> DomainVerdict:
    return DomainVerdict(domain, Verdict.VALID, (Reason.MX,), mx=(f"mx.{domain}",))


def test_a_person_at_a_domain_with_mx_is_valid() -> None:
    verdict = judge("Juan.Perez@Empresa.com.pe", mx("empresa.com.pe"))
    assert (verdict.address, verdict.verdict, verdict.reasons) == (
        "juan.perez@empresa.com.pe",
        Verdict.VALID,
        (Reason.MX,),
    )
    assert verdict.suggestion is None


def test_role_and_disposable_make_an_address_risky() -> None:
    role = judge("ventas@empresa.com.pe", mx("empresa.com.pe"))
    assert (role.verdict, role.reasons) == (Verdict.RISKY, (Reason.MX, Reason.ROLE))
    throwaway = judge("ana@mailinator.com", mx("mailinator.com"))
    assert (throwaway.verdict, throwaway.reasons) == (Verdict.RISKY, (Reason.MX, Reason.DISPOSABLE))


def test_a_typo_is_risky_with_the_corrected_address() -> None:
    verdict = judge("ana.lopez@yaho.com", mx("yaho.com"))
    assert verdict.verdict is Verdict.RISKY
    assert verdict.reasons == (Reason.MX, Reason.TYPO)
    assert verdict.suggestion == "ana.lopez@yahoo.com"


def test_a_typo_on_a_dead_domain_stays_invalid_and_keeps_the_suggestion() -> None:
    dead = DomainVerdict("hotmial.com", Verdict.INVALID, (Reason.NXDOMAIN,))
    verdict = judge("ana@hotmial.com", dead)
    assert verdict.verdict is Verdict.INVALID
    assert Reason.NXDOMAIN in verdict.reasons and Reason.TYPO in verdict.reasons
    assert verdict.suggestion == "ana@hotmail.com"


def test_dns_trouble_is_unknown_even_for_a_role_account() -> None:
    trouble = DomainVerdict("lento.pe", Verdict.UNKNOWN, (Reason.DNS_ERROR,), detail="timeout")
    verdict = judge("info@lento.pe", trouble)
    assert verdict.verdict is Verdict.UNKNOWN
    assert verdict.reasons == (Reason.DNS_ERROR, Reason.ROLE)
    assert verdict.detail == "timeout"


def test_bad_syntax_is_invalid_whatever_the_domain() -> None:
    verdict = judge("juan@@empresa.com.pe", mx("empresa.com.pe"))
    assert (verdict.verdict, verdict.reasons) == (Verdict.INVALID, (Reason.SYNTAX,))
    assert verdict.detail


def test_judge_address_looks_the_domain_up() -> None:
    domains = {"empresa.com.pe": mx("empresa.com.pe")}
    assert judge_address(" Ana@EMPRESA.com.pe ", domains).verdict is Verdict.VALID
    unchecked = judge_address("ana@otra.pe", domains)
    assert (unchecked.verdict, unchecked.detail) == (Verdict.UNKNOWN, "not checked")
    assert judge_address("no es correo", domains).reasons == (Reason.SYNTAX,)
