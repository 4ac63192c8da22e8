"""The `mailer` command, run with typer's runner against a migrated SQLite database."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from typer.testing import CliRunner

from mailer.cli import app
from mailer.core.config import Settings
from tests.helpers import contacts_csv, start_recording_relay

runner = CliRunner()


def test_domain_add_writes_a_private_key_and_prints_the_dns_records(
    sqlite_settings: Settings,
) -> None:
    result = runner.invoke(app, ["domain", "add", "boletin.example.pe", "--selector", "s2026"])
    assert result.exit_code == 0, result.output
    folder = sqlite_settings.sending_domains_dir / "boletin.example.pe"
    key = folder / "s2026.rsa.pem"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "s2026._domainkey.boletin.example.pe" in result.output
    assert "v=DKIM1; k=rsa; p=" in result.output
    assert "v=spf1" in result.output and "_dmarc.boletin.example.pe" in result.output
    again = runner.invoke(app, ["domain", "add", "boletin.example.pe"])
    assert again.exit_code == 1 and "--replace" in again.output
    bad = runner.invoke(app, ["domain", "add", "not a domain"])
    assert bad.exit_code == 1 and "not a valid domain" in bad.output


def test_user_import_and_campaign_send_from_the_command_line(
    sqlite_settings: Settings, tmp_path: Path, configure: object
) -> None:
    relay, recorder = start_recording_relay()
    try:
        configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
        created = runner.invoke(
            app,
            [
                "user",
                "create",
                "jefa@example.pe",
                "--password",
                "una clave larga",
                "--account-name",
                "Municipalidad",
            ],
        )
        assert created.exit_code == 0, created.output
        short = runner.invoke(app, ["user", "create", "x@example.pe", "--password", "corta"])
        assert short.exit_code == 1 and "at least 10" in short.output
        csv_path = contacts_csv(tmp_path / "c.csv", 25, extra_rows="roto-sin-arroba,X,Y,Z\n")
        imported = runner.invoke(app, ["import", str(csv_path), "--list", "Vecinos"])
        assert imported.exit_code == 0, imported.output
        assert "line 27" in imported.output
        assert runner.invoke(app, ["domain", "add", "avisos.example.pe"]).exit_code == 0
        from mailer.content.store import create_template
        from mailer.storage.db import session_scope

        with session_scope() as session:
            template = create_template(
                session,
                1,
                name="Aviso",
                subject="Aviso {{ contact.first_name }}",
                html="<p>Hola {{ contact.first_name }}</p>",
            )
        made = runner.invoke(
            app,
            [
                "campaign",
                "create",
                "Aviso vecinal",
                "--template",
                str(template.id),
                "--list",
                "Vecinos",
                "--from-email",
                "avisos@avisos.example.pe",
                "--from-name",
                "Municipalidad",
            ],
        )
        assert made.exit_code == 0, made.output
        sent = runner.invoke(app, ["campaign", "send", "1"])
        assert sent.exit_code == 0, sent.output
        listing = runner.invoke(app, ["campaign", "list"])
        assert "completed" in listing.output
        status = runner.invoke(app, ["campaign", "status", "1", "--json"])
        assert status.exit_code == 0, status.output
        progress = json.loads(status.output)
        assert (progress["state"], progress["sent"], progress["pending"]) == ("completed", 25, 0)
        table = runner.invoke(app, ["campaign", "status", "1"])
        assert "tiempo estimado" in table.output and "enviados" in table.output
        nothing_failed = runner.invoke(app, ["campaign", "resend-failed", "1"])
        assert nothing_failed.exit_code == 1 and "no failed recipients" in nothing_failed.output
        relays = runner.invoke(app, ["relays"])
        assert relays.exit_code == 0 and "127.0.0.1" in relays.output
    finally:
        relay.stop()
    assert len(recorder.messages) == 25


def test_bounces_parse_prints_the_classification_as_json(sqlite_settings: Settings) -> None:
    sample = Path(__file__).parents[2] / "fixtures" / "bounces" / "samples"
    result = runner.invoke(
        app, ["bounces", "parse", str(sample / "lhost-postfix-02.eml"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "bounce"
    by_address = {r["address"]: r for r in report["recipients"]}
    assert by_address["userunknown@example.co.jp"]["hard"] is True
    assert by_address["userunknown@example.co.jp"]["reason"] == "userunknown"
    assert by_address["userunknown@example.co.jp"]["status"] == "5.1.1"
    missing = runner.invoke(app, ["bounces", "parse", "/nonexistent.eml"])
    assert missing.exit_code != 0


def test_worker_refuses_to_run_without_a_shared_broker(sqlite_settings: Settings) -> None:
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2 and "MAILER_BROKER_URL" in result.output


def test_demo_is_idempotent(sqlite_settings: Settings) -> None:
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "admin@demo.example.pe" in first.output and "Contraseña" in first.output
    second = runner.invoke(app, ["demo"])
    assert second.exit_code == 0 and "already set up" in second.output
    from mailer.audience.service import list_lists
    from mailer.content.store import list_templates
    from mailer.storage.db import session_scope

    with session_scope() as session:
        assert [members for _lst, members in list_lists(session, 1)] == [40]
        assert len(list_templates(session, 1)) >= 2


def test_template_commands(sqlite_settings: Settings, tmp_path: Path, configure: object) -> None:
    relay, recorder = start_recording_relay()
    try:
        configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(relay.port))  # type: ignore[operator]
        assert runner.invoke(app, ["demo"]).exit_code == 0
        library = runner.invoke(app, ["template", "library"])
        assert "comunicado" in library.output
        used = runner.invoke(app, ["template", "use", "recordatorio"])
        assert used.exit_code == 0, used.output
        # A real-world template in another language (Postmark's Mustachio) is refused with
        # the line; the others go through.
        fixtures = Path(__file__).resolve().parents[2] / "fixtures" / "email_templates"
        refused = runner.invoke(
            app,
            [
                "template",
                "import",
                str(fixtures / "postmark_basic-full_invoice.html"),
                "--name",
                "Factura",
                "--subject",
                "Factura",
            ],
        )
        assert refused.exit_code == 1 and "line" in refused.output and "{% for" in refused.output
        imported = runner.invoke(
            app,
            [
                "template",
                "import",
                str(fixtures / "cerberus-responsive.html"),
                "--name",
                "Cerberus",
                "--subject",
                "Hola {{ contact.first_name }}",
            ],
        )
        assert imported.exit_code == 0, imported.output
        assert "no_unsubscribe" in imported.output
        listing = runner.invoke(app, ["template", "list"])
        assert "Cerberus" in listing.output and "Recordatorio" in listing.output
        cerberus = re.search(r"template (\d+) created", imported.output)
        assert cerberus
        check = runner.invoke(app, ["template", "check", cerberus.group(1)])
        assert check.exit_code == 1 and "no_unsubscribe" in check.output
        sent = runner.invoke(
            app,
            [
                "template",
                "test",
                "1",
                "--to",
                "jefa@example.pe",
                "--from-email",
                "boletin@demo.example.pe",
            ],
        )
        assert sent.exit_code == 0 and "jefa@example.pe: sent" in sent.output
    finally:
        relay.stop()
    assert len(recorder.messages) == 1


def test_sms_and_allowances_from_the_command_line(sqlite_settings: Settings) -> None:
    from mailer.campaigns.sms import close_gateway_loop

    created = runner.invoke(
        app,
        ["user", "create", "sms@example.pe", "--role", "admin", "--account-name", "Ent"],
        input="una clave larga 123\nuna clave larga 123\n",
    )
    assert created.exit_code == 0, created.output
    granted = runner.invoke(app, ["credits", "grant", "sms", "10"])
    assert granted.exit_code == 0 and "10 disponibles" in granted.output, granted.output
    account = runner.invoke(app, ["sms", "account", "--sender", "ENTIDAD"])
    assert "remitente: ENTIDAD" in account.output and "baja: BAJA, STOP, SALIR" in account.output
    counted = runner.invoke(app, ["sms", "count", "Canción: ¿Qué tal?"])
    assert "UCS2" in counted.output and "Cancion: ¿Qué tal?" in counted.output
    try:
        sent = runner.invoke(
            app, ["sms", "send", "Hola", "--to", "987654321", "--to", "987650000", "--to", "12"]
        )
    finally:
        close_gateway_loop()
    assert sent.exit_code == 0, sent.output
    assert "+51987654321: delivered" in sent.output
    assert "+51987650000: undelivered" in sent.output
    assert "12" in sent.output and "not a valid phone number" in sent.output
    shown = runner.invoke(app, ["credits", "show"])
    assert "sms: 9 disponibles, 0 reservados" in shown.output, shown.output
    assert "charge 1" in shown.output and "release 1" in shown.output
    too_much = runner.invoke(app, ["sms", "send", "x" * 2000, "--to", "987654321"])
    assert too_much.exit_code == 1 and "parts long" in too_much.output
