"""Cleaning an account's contacts and files against the real DNS server (unbound): verdicts
stored, typo fixes accepted in bulk, stale verdicts renewed when a campaign starts, and the
cleaned file written back."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import select

from mailer.accounts.service import create_account
from mailer.audience import clean, service
from mailer.audience.models import Contact
from mailer.audience.suppression import suppress
from mailer.campaigns.service import create_campaign, start_campaign
from mailer.content.store import create_template
from mailer.core.config import Settings
from mailer.delivery.domains import add_domain
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from tests.unbound import (
    A_ONLY_DOMAIN,
    DISPOSABLE_DOMAIN,
    MX_DOMAIN,
    NULL_MX_DOMAIN,
    NXDOMAIN_DOMAIN,
    TIMEOUT_DOMAIN,
    TYPO_NXDOMAIN,
    TYPO_WITH_MX,
    UnboundServer,
)

ADDRESSES = {
    f"ana@{MX_DOMAIN}": "valid",
    f"info@{MX_DOMAIN}": "risky",  # role account
    f"luis@{A_ONLY_DOMAIN}": "valid",  # implicit MX
    f"rosa@{NULL_MX_DOMAIN}": "invalid",
    f"pepe@{NXDOMAIN_DOMAIN}": "invalid",
    f"juan@{TYPO_WITH_MX}": "risky",
    f"eva@{TYPO_NXDOMAIN}": "invalid",
    f"temp@{DISPOSABLE_DOMAIN}": "risky",
    f"lento@{TIMEOUT_DOMAIN}": "unknown",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def dns_settings(
    request: pytest.FixtureRequest, configure: object, dns_server: UnboundServer
) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return configure(  # type: ignore[operator, no-any-return]
        url, MAILER_DNS_SERVERS=dns_server.address, MAILER_DNS__TIMEOUT_SECONDS="1"
    )


def account_with_list(addresses: list[str]) -> tuple[int, int]:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        lst = service.create_list(session, account.id, "Proveedores")
        assert lst.id
        for address in addresses:
            service.add_contact(session, account.id, address, list_id=lst.id)
        return account.id, lst.id


def verdicts(account_id: int) -> dict[str, tuple[str, str, str]]:
    with session_scope() as session:
        return {
            c.email: (c.email_verdict, c.email_status, c.email_suggestion)
            for c in session.execute(
                select(Contact).where(Contact.account_id == account_id)
            ).scalars()
        }


def test_a_list_is_cleaned_and_typo_fixes_are_accepted_in_bulk(dns_settings: Settings) -> None:
    account_id, list_id = account_with_list([*ADDRESSES, f"juan@{'gmail.com'}"])
    with session_scope() as session:
        run = clean.start_cleaning(session, account_id, list_id=list_id, actor="test")
        run_id = run.id
        assert run_id
    with session_scope() as session:
        run = clean.run_cleaning(session, run_id, clean.get_checker(dns_settings))
        report = run.counts
    assert run.status == "done" and run.total == len(ADDRESSES) + 1
    stored = verdicts(account_id)
    assert {a: stored[a][0] for a in ADDRESSES} == ADDRESSES
    assert stored[f"rosa@{NULL_MX_DOMAIN}"][1] == "invalid"  # channel status follows
    assert stored[f"lento@{TIMEOUT_DOMAIN}"][1] == "active"  # DNS trouble is never invalid
    assert stored[f"juan@{TYPO_WITH_MX}"][2] == "juan@gmail.com"
    assert stored[f"eva@{TYPO_NXDOMAIN}"][2] == "eva@hotmail.com"
    assert report["verdicts"]["invalid"] == 3
    assert report["reasons"]["null_mx"] == 1 and report["reasons"]["role"] == 1
    assert {"from": TYPO_WITH_MX, "to": "gmail.com", "count": 1} in report["suggestions"]
    with session_scope() as session:
        counts = service.audience_counts(session, account_id, list_id=list_id)
    assert counts == {"matching": 10, "sendable": 7}

    with session_scope() as session:
        result = clean.accept_suggestions(
            session,
            account_id,
            [(TYPO_WITH_MX, "gmail.com"), (TYPO_NXDOMAIN, "hotmail.com")],
            clean.get_checker(dns_settings),
        )
    # juan@gmial.com becomes juan@gmail.com, which already existed: merged into it.
    assert result == {"fixed": 1, "merged": 1}
    stored = verdicts(account_id)
    assert f"juan@{TYPO_WITH_MX}" not in stored and f"eva@{TYPO_NXDOMAIN}" not in stored
    assert stored["eva@hotmail.com"][:2] == ("valid", "active")
    with session_scope() as session:
        assert service.audience_counts(session, account_id, list_id=list_id)["matching"] == 9


def test_a_campaign_start_renews_stale_verdicts_and_skips_invalid_addresses(
    dns_settings: Settings,
) -> None:
    account_id, list_id = account_with_list(list(ADDRESSES))
    domain = "envios.example.pe"
    add_domain(dns_settings.sending_domains_dir, domain)
    with session_scope() as session:
        template = create_template(session, account_id, name="t", subject="s", html="<p>Hola</p>")
        assert template.id
        fresh = create_campaign(
            session,
            account_id,
            name="c",
            template_id=template.id,
            list_id=list_id,
            from_email=f"info@{domain}",
            from_name="Entidad",
        )
        assert fresh.id
        campaign_id = fresh.id
        start_campaign(session, account_id, campaign_id, settings=dns_settings)
    with session_scope() as session:
        sent_to = set(
            session.execute(
                select(Message.to_address).where(Message.campaign_id == campaign_id)
            ).scalars()
        )
    assert sent_to == {a for a, v in ADDRESSES.items() if v != "invalid"}
    assert all(v[0] for v in verdicts(account_id).values())  # every contact cleaned


def test_a_file_is_written_back_with_verdict_columns(
    dns_settings: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "lista.csv"
    rows = ["correo;nombre;celular"]
    rows += [f"{a};N;987654321" for a in ADDRESSES]
    rows += [f"ANA@{MX_DOMAIN};Duplicada;", "sin-arroba;Mala;12"]
    source.write_text("\n".join(rows) + "\n", encoding="cp1252")
    account_id, _ = account_with_list([])
    with session_scope() as session:
        suppress(session, account_id, "email", [f"luis@{A_ONLY_DOMAIN}"], "unsubscribed")
    output = tmp_path / "lista.depurada.xlsx"
    with session_scope() as session:
        tally = clean.clean_file(
            source,
            output,
            clean.get_checker(dns_settings),
            suppressed=clean.suppression_checker(session, account_id),
        )
    sheet = openpyxl.load_workbook(output, read_only=True).worksheets[0]
    table = [
        [str(c) if c is not None else "" for c in row] for row in sheet.iter_rows(values_only=True)
    ]
    header, body = table[0], table[1:]
    assert header[:3] == ["correo", "nombre", "celular"] and "resultado" in header
    by_address = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    assert by_address[f"ana@{MX_DOMAIN}"]["resultado"] == "Válido"
    assert by_address[f"ANA@{MX_DOMAIN}"]["motivos"] == "Duplicado"
    assert by_address["sin-arroba"]["resultado"] == "No válido"
    assert "Suprimido" in by_address[f"luis@{A_ONLY_DOMAIN}"]["motivos"]
    assert by_address[f"juan@{TYPO_WITH_MX}"]["sugerencia"] == "juan@gmail.com"
    assert by_address[f"ana@{MX_DOMAIN}"]["celular_e164"] == "+51987654321"
    assert by_address[f"ana@{MX_DOMAIN}"]["apto_sms"] == "sí"
    assert tally.total == len(ADDRESSES) + 2
