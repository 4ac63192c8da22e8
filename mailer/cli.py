"""The ``mailer`` command.

``mailer demo --serve`` sets everything up on the embedded default and starts it;
``mailer serve`` runs HTTP, workers, scheduler and capture relay in one process;
``mailer worker`` runs worker processes against Redis or RabbitMQ at scale.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from mailer.core.config import Settings, get_settings
from mailer.core.errors import MailerError

app = typer.Typer(help="mailer: campañas de correo y SMS autoalojadas.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
user_app = typer.Typer(help="Portal users.", no_args_is_help=True)
domain_app = typer.Typer(help="Sending domains and their DKIM keys.", no_args_is_help=True)
campaign_app = typer.Typer(help="Campaigns.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys, one per application.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(domain_app, name="domain")
app.add_typer(campaign_app, name="campaign")
app.add_typer(apikey_app, name="apikey")
template_app = typer.Typer(
    help="Templates: library, import, check, test sends.", no_args_is_help=True
)
app.add_typer(template_app, name="template")

console = Console()
err = Console(stderr=True)


def _fail(exc: MailerError) -> typer.Exit:
    where = f" ({exc.field})" if exc.field else ""
    err.print(f"[bold red]error{where}:[/] {exc.message}")
    return typer.Exit(code=1)


def _account_id(account: int | None) -> int:
    from mailer.accounts.service import first_account
    from mailer.storage.db import session_scope

    if account is not None:
        return account
    with session_scope() as session:
        found = first_account(session)
    if found is None or found.id is None:
        err.print(
            "[red]no account yet:[/] run `mailer demo` or `mailer user create --account-name ...`"
        )
        raise typer.Exit(1)
    return found.id


# -- database --------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to the configured database."""
    from mailer.storage.migrate import current_revision, upgrade

    settings = get_settings()
    upgrade(settings)
    console.print(f"[green]database at revision[/] {current_revision(settings)}")


# -- users and API keys ----------------------------------------------------------------


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="Login e-mail.")],
    role: Annotated[str, typer.Option(help="admin, manager, editor or viewer.")] = "admin",
    password: Annotated[str | None, typer.Option(help="Prompted when not given.")] = None,
    account: Annotated[int | None, typer.Option(help="Account id (default: the first).")] = None,
    account_name: Annotated[
        str | None, typer.Option(help="Create a new account with this name.")
    ] = None,
    name: str = "",
) -> None:
    """Create a portal user (and, with --account-name, its account)."""
    from mailer.accounts.service import audit, create_account, create_user
    from mailer.storage.db import session_scope

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with session_scope() as session:
            account_id = (
                create_account(session, account_name).id if account_name else _account_id(account)
            )
            assert account_id is not None
            user = create_user(session, account_id, email, password, role, name=name)
            audit(session, None, "user.create", f"user:{user.id}", account_id=account_id, via="cli")
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]user created:[/] {user.email} ({user.role}) in account {account_id}")


@apikey_app.command("create")
def apikey_create(
    application: Annotated[str, typer.Argument(help="Name of the application using the key.")],
    role: Annotated[str, typer.Option(help="admin, manager, editor or viewer.")] = "manager",
    account: int | None = None,
    scopes: Annotated[
        str | None, typer.Option(help="Restrict it to scopes: read,edit,send,admin,...")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Its own requests/s (0: none).")] = None,
    burst: Annotated[int | None, typer.Option(help="Its own burst.")] = None,
) -> None:
    """Create an API key; it is shown once and stored hashed."""
    from mailer.accounts.service import audit, create_api_key
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            key, plaintext = create_api_key(
                session,
                account_id,
                application,
                role,
                scopes=scopes,
                rate_per_second=rate,
                burst=burst,
            )
            audit(session, None, "apikey.create", f"apikey:{key.id}", account_id=account_id)
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"API key for [bold]{application}[/] ({role}), shown only once:")
    print(plaintext)


# -- sending domains -------------------------------------------------------------------


@domain_app.command("add")
def domain_add(
    domain: str,
    selector: Annotated[str | None, typer.Option(help="DKIM selector (default mYYYYMM).")] = None,
    ed25519: Annotated[bool, typer.Option(help="Also an Ed25519 key (two signatures).")] = False,
    replace: Annotated[bool, typer.Option(help="Rotate the keys of an existing domain.")] = False,
) -> None:
    """Generate the domain's RSA-2048 DKIM key and print the DNS records to publish."""
    from mailer.delivery.domains import add_domain

    settings = get_settings()
    try:
        sending = add_domain(
            settings.sending_domains_dir,
            domain,
            selector=selector,
            ed25519=ed25519,
            replace=replace,
        )
    except MailerError as exc:
        raise _fail(exc) from None
    _print_records(sending.records(), settings.sending_domains_dir / sending.domain)


def _print_records(records: list[tuple[str, str, str]], folder: Path) -> None:
    console.print(f"[green]keys written to[/] {folder} (mode 0600, git-ignored)")
    console.print("Publish these DNS records:")
    for name, kind, value in records:
        console.print(f"\n[bold]{name}[/]  {kind}")
        print(value)


@domain_app.command("list")
def domain_list() -> None:
    """The configured sending domains and their DNS records."""
    from mailer.delivery.domains import list_domains

    settings = get_settings()
    for sending in list_domains(settings.sending_domains_dir):
        console.rule(sending.domain)
        _print_records(sending.records(), settings.sending_domains_dir / sending.domain)


# -- import ----------------------------------------------------------------------------


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    list_name: Annotated[
        str, typer.Option("--list", help="List to add the contacts to (created if new).")
    ],
    mode: Annotated[str, typer.Option(help="add, update or add_or_update.")] = "add_or_update",
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="HEADER=FIELD to override the automatic mapping (field: email, first_name, "
            "last_name, phone, company, position, document, attr:NAME, or empty to skip).",
        ),
    ] = None,
    account: int | None = None,
    errors_out: Annotated[
        Path | None, typer.Option(help="Write rejected rows to this CSV.")
    ] = None,
) -> None:
    """Import contacts from a CSV or XLSX file into a list; bad rows are reported by line."""
    from mailer.audience.importer import map_columns
    from mailer.audience.service import create_list, get_list_by_name, import_contacts
    from mailer.audience.tables import open_table
    from mailer.storage.db import session_scope

    total_bytes = file.stat().st_size
    try:
        mapping = None
        if column:
            with open_table(file, file.name) as source:
                mapping = map_columns(source.headers)
            for item in column:
                header, sep, target = item.partition("=")
                if not sep or header not in mapping:
                    err.print(
                        f"[red]--map {item!r}:[/] use HEADER=FIELD with one of {list(mapping)}"
                    )
                    raise typer.Exit(2)
                mapping[header] = target.strip()
        with (
            session_scope() as session,
            Progress(
                TextColumn("[bold]Importando[/]"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f} %"),
                TextColumn("{task.fields[rows]} filas"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            account_id = _account_id(account)
            lst = get_list_by_name(session, account_id, list_name) or create_list(
                session, account_id, list_name
            )
            bar = progress.add_task("import", total=100, rows=0)

            def advance(so_far: Any, fraction: float) -> None:
                progress.update(bar, completed=fraction * 100, rows=so_far.rows)

            report = import_contacts(
                session,
                account_id,
                file,
                actor="cli",
                list_id=lst.id,
                mode=mode,
                mapping=mapping,
                progress=advance,
            )
    except MailerError as exc:
        raise _fail(exc) from None
    where = f"{report.encoding}, '{report.delimiter}'" if report.format == "csv" else "xlsx"
    table = Table(title=f"{file.name} → {list_name} ({total_bytes // 1024} KB, {where})")
    figures = {
        "filas": report.rows,
        "nuevos": report.created,
        "actualizados": report.updated,
        "sin cambios": report.unchanged,
        "duplicados": report.duplicates_in_file,
        "suprimidos": report.suppressed,
        "en la lista": report.added_to_list,
        "errores": len(report.errors),
    }
    for name in figures:
        table.add_column(name, justify="right")
    table.add_row(*map(str, figures.values()))
    console.print(table)
    for error in report.errors[:20]:
        err.print(
            f"[yellow]line {error.line}[/], column {error.column!r}: "
            f"{error.message()} ({error.value!r})"
        )
    if len(report.errors) > 20:
        err.print(f"... and {len(report.errors) - 20} more")
    if errors_out and report.errors:
        errors_out.write_text(report.errors_csv(), encoding="utf-8")
        err.print(f"rejected rows written to {errors_out}")


# -- cleaning, segments, suppression, personal data ---------------------------------------


@app.command("clean")
def clean(
    file: Annotated[Path | None, typer.Argument(exists=True, dir_okay=False, readable=True)] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Cleaned file (.csv or .xlsx).")
    ] = None,
    list_name: Annotated[str | None, typer.Option("--list", help="Clean a stored list.")] = None,
    segment_name: Annotated[
        str | None, typer.Option("--segment", help="Clean a stored segment.")
    ] = None,
    account: int | None = None,
    english: Annotated[bool, typer.Option(help="Verdict columns in English codes.")] = False,
) -> None:
    """Clean addresses: syntax, MX, null MX, disposable, role, typos (depuración).

    `mailer clean FILE -o OUT` writes the file back with verdict and reason columns;
    `mailer clean --list NAME` stores verdicts on the list's contacts."""
    from mailer.audience import clean as cleaning
    from mailer.audience.service import get_list_by_name, list_segments, target_filter
    from mailer.storage.db import session_scope

    settings = get_settings()
    checker = cleaning.get_checker(settings)
    try:
        if file is not None:
            if output is None:
                output = file.with_name(f"{file.stem}.depurado{file.suffix or '.csv'}")
            with console.status("Depurando…"):
                if account is not None:
                    with session_scope() as session:
                        tally = cleaning.clean_file(
                            file,
                            output,
                            checker,
                            suppressed=cleaning.suppression_checker(session, account),
                            spanish=not english,
                        )
                else:
                    tally = cleaning.clean_file(file, output, checker, spanish=not english)
            console.print(f"written to {output}")
        elif list_name or segment_name:
            with session_scope() as session:
                account_id = _account_id(account)
                list_id = segment_id = None
                if list_name:
                    lst = get_list_by_name(session, account_id, list_name)
                    if lst is None:
                        err.print(f"[red]no list named {list_name!r}[/]")
                        raise typer.Exit(1)
                    list_id = lst.id
                if segment_name:
                    found = [
                        s for s in list_segments(session, account_id) if s.name == segment_name
                    ]
                    if not found:
                        err.print(f"[red]no segment named {segment_name!r}[/]")
                        raise typer.Exit(1)
                    segment_id = found[0].id
                where = target_filter(session, account_id, list_id=list_id, segment_id=segment_id)
                with Progress(
                    TextColumn("[bold]Depurando[/]"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    console=console,
                ) as progress:
                    bar = progress.add_task("clean", total=None)
                    tally = cleaning.clean_contacts(
                        session,
                        account_id,
                        where,
                        checker,
                        progress=lambda done, total: progress.update(
                            bar, completed=done, total=total
                        ),
                    )
        else:
            err.print("[red]give a FILE, --list or --segment[/]")
            raise typer.Exit(2)
    except MailerError as exc:
        raise _fail(exc) from None
    _print_cleaning(tally.as_json())


def _print_cleaning(report: dict[str, Any]) -> None:
    from mailer.cleaning.verdicts import REASON_LABELS_ES, VERDICT_LABELS_ES, Reason, Verdict

    summary = Table(title=f"{report['total']} direcciones")
    summary.add_column("resultado")
    summary.add_column("cantidad", justify="right")
    for verdict, count in sorted(report["verdicts"].items(), key=lambda kv: -kv[1]):
        summary.add_row(VERDICT_LABELS_ES.get(Verdict(verdict), verdict), str(count))
    console.print(summary)
    reasons = Table(title="motivos")
    reasons.add_column("motivo")
    reasons.add_column("cantidad", justify="right")
    for reason, count in sorted(report["reasons"].items(), key=lambda kv: -kv[1]):
        reasons.add_row(REASON_LABELS_ES.get(Reason(reason), reason), str(count))
    console.print(reasons)
    if report["suggestions"]:
        fixes = Table(title="posibles errores de escritura")
        for name in ("dominio", "sugerencia", "cantidad"):
            fixes.add_column(name)
        for item in report["suggestions"][:20]:
            fixes.add_row(item["from"], item["to"], str(item["count"]))
        console.print(fixes)


segment_app = typer.Typer(help="Segments: saved rules over contacts.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
suppress_app = typer.Typer(help="The suppression list.", no_args_is_help=True)
app.add_typer(suppress_app, name="suppression")
contact_app = typer.Typer(
    help="One contact's data (access and deletion requests).", no_args_is_help=True
)
app.add_typer(contact_app, name="contact")


def _rules(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        err.print(f"[red]--rules is not valid JSON:[/] {exc}")
        raise typer.Exit(2) from None


@segment_app.command("create")
def segment_create(
    name: str,
    rules: Annotated[str, typer.Option(help='JSON, e.g. {"match":"all","conditions":[...]}')],
    account: int | None = None,
) -> None:
    """Save a segment; prints how many contacts it matches now."""
    from mailer.audience.service import audience_counts, create_segment
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            segment = create_segment(session, account_id, name, _rules(rules))
            counts = audience_counts(session, account_id, segment_id=segment.id)
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(
        f"segment {segment.id} {name!r}: {counts['matching']} contacts, "
        f"{counts['sendable']} can receive e-mail"
    )


@segment_app.command("list")
def segment_list(account: int | None = None) -> None:
    from mailer.audience.segments import describe
    from mailer.audience.service import audience_counts, list_segments
    from mailer.storage.db import session_scope

    with session_scope() as session:
        account_id = _account_id(account)
        table = Table()
        for column in ("id", "name", "rules", "matching", "sendable"):
            table.add_column(column)
        for segment in list_segments(session, account_id):
            counts = audience_counts(session, account_id, segment_id=segment.id)
            table.add_row(
                str(segment.id),
                segment.name,
                describe(segment.rules),
                str(counts["matching"]),
                str(counts["sendable"]),
            )
    console.print(table)


@segment_app.command("count")
def segment_count(
    rules: Annotated[str, typer.Option(help="Rules as JSON.")], account: int | None = None
) -> None:
    """Count the contacts some rules match, without saving them."""
    from mailer.audience.service import count_matching
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            counts = count_matching(session, _account_id(account), _rules(rules))
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"{counts['matching']} contacts, {counts['sendable']} can receive e-mail")


@suppress_app.command("add")
def suppression_add(
    values: list[str],
    channel: Annotated[str, typer.Option(help="email or sms.")] = "email",
    reason: str = "manual",
    account: int | None = None,
) -> None:
    """Add addresses (or phones) that must never be messaged."""
    from mailer.audience.suppression import suppress
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            added = suppress(session, _account_id(account), channel, values, reason, "cli")
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"{added} added")


@suppress_app.command("list")
def suppression_list(
    channel: str | None = None, search: str = "", account: int | None = None
) -> None:
    from mailer.audience.suppression import list_suppressions
    from mailer.storage.db import session_scope

    with session_scope() as session:
        table = Table()
        for column in ("channel", "value", "reason", "source", "since"):
            table.add_column(column)
        for entry in list_suppressions(
            session, _account_id(account), channel=channel, search=search, limit=1000
        ):
            table.add_row(
                entry.channel,
                entry.value or "(erased)",
                entry.reason,
                entry.source,
                entry.created_at.date().isoformat(),
            )
    console.print(table)


def _contact_by_email(session: Any, account_id: int, email: str) -> Any:
    from mailer.audience.service import find_contact

    contact = find_contact(session, account_id, email)
    if contact is None:
        err.print(f"[red]no contact {email!r}[/]")
        raise typer.Exit(1)
    return contact


@contact_app.command("export")
def contact_export(email: str, account: int | None = None) -> None:
    """Print everything kept about a person as JSON (access request, Ley 29733)."""
    import json

    from mailer.audience.service import export_contact
    from mailer.storage.db import session_scope

    with session_scope() as session:
        account_id = _account_id(account)
        contact = _contact_by_email(session, account_id, email)
        data = export_contact(session, account_id, contact.id)
    print(json.dumps(data, ensure_ascii=False, indent=2))


@contact_app.command("erase")
def contact_erase(
    email: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    account: int | None = None,
) -> None:
    """Erase a person's data; a hashed suppression entry keeps the address from returning."""
    from mailer.audience.service import erase_contact
    from mailer.storage.db import session_scope

    if not yes:
        typer.confirm(f"Erase every personal datum of {email}?", abort=True)
    with session_scope() as session:
        account_id = _account_id(account)
        contact = _contact_by_email(session, account_id, email)
        erase_contact(session, account_id, contact.id, source="cli")
    console.print(f"{email}: erased; the address stays suppressed (hashed)")


# -- campaigns -------------------------------------------------------------------------


@campaign_app.command("list")
def campaign_list(account: int | None = None) -> None:
    """Campaigns with their ledger counts."""
    from mailer.campaigns.service import campaign_counts, list_campaigns
    from mailer.storage.db import session_scope

    with session_scope() as session:
        table = Table()
        for column in ("id", "name", "state", "total", "sent", "deferred", "failed"):
            table.add_column(column)
        for campaign in list_campaigns(session, _account_id(account)):
            counts = campaign_counts(session, campaign)
            table.add_row(
                str(campaign.id),
                campaign.name,
                campaign.state,
                str(counts["total"]),
                str(counts["sent"]),
                str(counts["deferred"]),
                str(counts["failed"]),
            )
    console.print(table)


@campaign_app.command("create")
def campaign_create(
    name: str,
    template: Annotated[int, typer.Option(help="Template id.")],
    list_name: Annotated[str, typer.Option("--list", help="List name.")],
    from_email: Annotated[str, typer.Option(help="Sender address on a sending domain.")],
    from_name: Annotated[str, typer.Option(help="Sender display name.")],
    subject: str | None = None,
    account: int | None = None,
) -> None:
    """Create a draft campaign."""
    from mailer.audience.service import get_list_by_name
    from mailer.campaigns.service import create_campaign
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            lst = get_list_by_name(session, account_id, list_name)
            if lst is None or lst.id is None:
                raise typer.BadParameter(f"no list named {list_name!r}")
            campaign = create_campaign(
                session,
                account_id,
                name=name,
                template_id=template,
                list_id=lst.id,
                from_email=from_email,
                from_name=from_name,
                subject=subject,
                created_by="cli",
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]campaign {campaign.id} created[/] (draft)")


@campaign_app.command("send")
def campaign_send(
    campaign_id: int,
    account: int | None = None,
    wait: Annotated[
        bool, typer.Option(help="With the in-process broker: send here and wait.")
    ] = True,
) -> None:
    """Start sending a campaign.  With Redis/RabbitMQ the workers deliver it; with the
    in-process broker this command runs the workers itself until the campaign is done."""
    from mailer.campaigns.service import campaign_counts, get_campaign, send_now
    from mailer.storage.db import session_scope
    from mailer.workers import configure_broker, start_worker

    settings = get_settings()
    broker = configure_broker(settings)
    try:
        account_id = _account_id(account)
        send_now(account_id, campaign_id, actor="cli")
    except MailerError as exc:
        raise _fail(exc) from None
    if settings.broker_url or not wait:
        console.print(f"campaign {campaign_id} queued for the workers")
        return
    worker = start_worker(broker, settings.worker_threads)
    with Progress(
        TextColumn("[bold]Enviando[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
    ) as progress:
        bar = progress.add_task("send", total=None)
        while True:
            with session_scope() as session:
                campaign = get_campaign(session, account_id, campaign_id)
                counts = campaign_counts(session, campaign)
            progress.update(
                bar,
                total=counts["total"],
                completed=counts["sent"] + counts["failed"] + counts["cancelled"],
            )
            if campaign.state != "sending" or counts["queued"] + counts["sending"] == 0:
                break
            threading.Event().wait(0.5)
    worker.stop()
    console.print(counts)


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _print_progress(campaign_id: int, progress: dict[str, Any]) -> None:
    rate = f"{progress['rate_per_hour']:,}".replace(",", " ")
    console.print(f"[bold]Campaña {campaign_id}[/]: {progress['state']}")
    console.print(
        f"  enviados {progress['sent']} de {progress['total']} · pendientes "
        f"{progress['pending']} · diferidos {progress['deferred']} · fallidos "
        f"{progress['failed'] + progress['bounced']}"
    )
    console.print(f"  ritmo {rate} por hora · tiempo estimado {_duration(progress['eta_seconds'])}")
    if progress["state_reason"]:
        console.print(f"  [yellow]{progress['state_reason']}[/]")


@campaign_app.command("status")
def campaign_status(
    campaign_id: int,
    account: int | None = None,
    watch: Annotated[bool, typer.Option(help="Refresh every 2 s until it stops sending.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Progress of a campaign: sent, pending, deferred, failed, rate and time left."""
    import json

    from mailer.campaigns.service import campaign_progress, get_campaign
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    while True:
        try:
            with session_scope() as session:
                campaign = get_campaign(session, account_id, campaign_id)
                progress = campaign_progress(session, campaign)
        except MailerError as exc:
            raise _fail(exc) from None
        if as_json:
            console.print_json(json.dumps(progress))
        else:
            _print_progress(campaign_id, progress)
        if not watch or progress["state"] != "sending":
            return
        threading.Event().wait(2.0)


@campaign_app.command("resend-failed")
def campaign_resend_failed(campaign_id: int, account: int | None = None) -> None:
    """Create a draft campaign for the failed recipients of CAMPAIGN_ID."""
    from mailer.campaigns.service import resend_failed
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            child = resend_failed(session, _account_id(account), campaign_id, created_by="cli")
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(
        f"[green]campaign {child.id} created[/] (draft) for the failed recipients of "
        f"{campaign_id}: `mailer campaign send {child.id}`"
    )


@app.command()
def relays() -> None:
    """The relay pool: limits, warm-up and today's use of each relay."""
    from datetime import datetime

    from mailer.campaigns.pipeline import local_day
    from mailer.delivery.quota import usage_on
    from mailer.storage.db import session_scope

    settings = get_settings()
    day = local_day(settings, datetime.now().astimezone())
    with session_scope(settings) as session:
        used = usage_on(session, settings.pool_relays, day)
    console.print(f"[bold]Relays[/] ({day.isoformat()})")
    for relay in settings.pool_relays:
        taken, allowed = used[relay.label]
        tls = " TLS" if relay.implicit_tls else " STARTTLS" if relay.starttls else ""
        rate = f"{relay.max_rate:g}/s" if relay.max_rate else "sin límite"
        console.print(
            f"  {relay.label}: {relay.host}:{relay.port}{tls} · {relay.max_connections} "
            f"conexiones × {relay.messages_per_connection} mensajes · ritmo {rate} · hoy "
            f"{taken} de {'sin límite' if allowed is None else allowed}"
        )


bounces_app = typer.Typer(help="Bounce and complaint messages.", no_args_is_help=True)
app.add_typer(bounces_app, name="bounces")


@app.command()
def inbound(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    poll_once: Annotated[
        bool,
        typer.Option(
            "--poll-once",
            help="Poll the mailbox (inbound.mailbox) once, print a JSON summary and exit.",
        ),
    ] = False,
) -> None:
    """Receive bounces, complaints (feedback loops) and mailto unsubscribes by SMTP, and
    poll an IMAP or POP3 mailbox for them when inbound.mailbox.host is set.

    Point the MX of the bounce domain (delivery.bounce_domain) here."""
    from mailer.bounces import MailboxPoller, run_inbound

    _log_setup()
    try:
        settings = get_settings()
    except MailerError as exc:
        raise _fail(exc) from exc
    if poll_once:
        import json

        try:
            summary = MailboxPoller(settings).poll()
        except MailerError as exc:
            raise _fail(exc) from exc
        typer.echo(json.dumps(summary.as_dict()))
        if summary.aborted:
            err.print(f"[bold red]poll ended early:[/] {summary.aborted}")
            raise typer.Exit(code=1)
        return
    updates: dict[str, Any] = {}
    if host:
        updates["host"] = host
    if port:
        updates["port"] = port
    if updates:
        settings = settings.model_copy(
            update={"inbound": settings.inbound.model_copy(update=updates)}
        )
    console.print(f"inbound receiver on smtp://{settings.inbound.host}:{settings.inbound.port}")
    mailbox = settings.inbound.mailbox
    if mailbox.enabled:
        console.print(
            f"polling {mailbox.protocol}://{mailbox.host}:{mailbox.effective_port} "
            f"every {mailbox.poll_seconds:g} s"
        )
    with MailboxPoller(settings):  # nothing when no mailbox is configured
        run_inbound(settings)


@bounces_app.command("parse")
def bounces_parse(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Classify one message (.eml): bounce, complaint, delayed, autoreply, delivered."""
    import json

    from mailer.bounces import parse_message, report_json

    report = report_json(parse_message(file.read_bytes()))
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        return
    console.print(f"[bold]{report['kind']}[/]")
    for recipient in report["recipients"]:
        hard = "hard" if recipient["hard"] else "soft"
        console.print(
            f"  {recipient['address']}: {hard} {recipient['reason']} {recipient['status']} "
            f"{recipient['diagnostic'][:120]}"
        )


# -- templates -------------------------------------------------------------------------


@template_app.command("list")
def template_list(account: int | None = None) -> None:
    """The account's saved templates."""
    from mailer.content.store import list_templates
    from mailer.storage.db import session_scope

    with session_scope() as session:
        table = Table()
        for column in ("id", "name", "version", "subject"):
            table.add_column(column)
        for template in list_templates(session, _account_id(account)):
            table.add_row(str(template.id), template.name, str(template.version), template.subject)
    console.print(table)


@template_app.command("library")
def template_library() -> None:
    """The ready-made templates shipped in templates/."""
    from mailer.content.store import load_library

    table = Table()
    for column in ("key", "name", "description"):
        table.add_column(column)
    for item in load_library(get_settings().templates_dir):
        table.add_row(item.key, item.name, item.description)
    console.print(table)


@template_app.command("use")
def template_use(key: str, account: int | None = None) -> None:
    """Copy a library template into the account."""
    from mailer.content.store import create_from_library, library_template
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            item = library_template(get_settings().templates_dir, key)
            template = create_from_library(session, _account_id(account), item, saved_by="cli")
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]template {template.id} created:[/] {template.name}")


@template_app.command("import")
def template_import(
    html_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str, typer.Option(help="Name of the new template.")],
    subject: Annotated[str, typer.Option(help="Subject (Jinja).")],
    text_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    account: int | None = None,
) -> None:
    """Save an HTML file as a template; syntax errors are refused with their line."""
    from mailer.content.store import create_template
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            template = create_template(
                session,
                _account_id(account),
                name=name,
                subject=subject,
                html=html_file.read_text(encoding="utf-8"),
                text=text_file.read_text(encoding="utf-8") if text_file else None,
                saved_by="cli",
                note=f"importada de {html_file.name}",
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]template {template.id} created:[/] {template.name}")
    _print_findings(template.id or 0, account)


@template_app.command("check")
def template_check(template_id: int, account: int | None = None) -> None:
    """What to fix before sending (unknown variables, size, unsubscribe link, images...)."""
    if _print_findings(template_id, account):
        raise typer.Exit(1)


def _print_findings(template_id: int, account: int | None) -> bool:
    """Print the check's findings; True when one of them is an error."""
    from mailer.audience.service import attribute_names
    from mailer.content.check import check_template
    from mailer.content.store import get_template
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            template = get_template(session, account_id, template_id)
            findings = check_template(
                template.subject,
                template.html,
                template.text,
                contact_fields=attribute_names(session, account_id),
            )
    except MailerError as exc:
        raise _fail(exc) from None
    if not findings:
        console.print("[green]no findings[/]")
    for finding in findings:
        colour = "red" if finding.severity == "error" else "yellow"
        console.print(f"[{colour}]{finding.severity}[/] {finding.code}: {finding.text()}")
    return any(f.severity == "error" for f in findings)


@template_app.command("test")
def template_test(
    template_id: int,
    to: Annotated[list[str], typer.Option(help="Recipient (repeat for more, 10 at most).")],
    from_email: Annotated[str, typer.Option(help="Sender on a sending domain.")],
    from_name: str = "Prueba",
    contact: Annotated[
        str | None, typer.Option(help="Personalise as this contact (e-mail).")
    ] = None,
    account: int | None = None,
) -> None:
    """Send a test of the template now, through the configured relay."""
    from mailer.audience.service import find_contact
    from mailer.campaigns.proofs import send_test_message
    from mailer.storage.db import session_scope

    try:
        account_id = _account_id(account)
        contact_id = None
        if contact:
            with session_scope() as session:
                found = find_contact(session, account_id, contact)
                if found is None:
                    err.print(f"[red]no contact {contact}[/]")
                    raise typer.Exit(1)
                contact_id = found.id
        results = send_test_message(
            account_id,
            template_id,
            to,
            from_email=from_email,
            from_name=from_name,
            contact_id=contact_id,
        )
    except MailerError as exc:
        raise _fail(exc) from None
    for result in results:
        console.print(f"{result.address}: {result.state} {result.reply}")


# -- running ---------------------------------------------------------------------------


def _log_setup() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every SMTP command of the capture relay at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run everything in one process: portal, API, tracking, workers, scheduler, capture relay."""
    _log_setup()
    run_server(get_settings(), host=host, port=port)


def run_server(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from mailer.asgi import create_app
    from mailer.campaigns.pipeline import recover_journals
    from mailer.core.queue import enqueue
    from mailer.delivery.service import start_capture_relay
    from mailer.scheduler.service import PeriodicLoop
    from mailer.scheduler.tasks import requeue_sending_campaigns
    from mailer.storage.migrate import upgrade
    from mailer.web.tracking import TrackingFastPath
    from mailer.workers import configure_broker, start_worker

    upgrade(settings)
    broker = configure_broker(settings)
    capture = None
    if settings.capture.enabled:
        capture = start_capture_relay(settings)
        console.print(f"capture relay on smtp://{settings.capture.host}:{settings.capture.port}")
    worker = loop = None
    if not settings.broker_url:
        recover_journals(settings, requeue=False)  # requeue_sending_campaigns follows
        worker = start_worker(broker, settings.worker_threads)
        loop = PeriodicLoop()
        loop.start()
        enqueue(requeue_sending_campaigns)
    bind_host, bind_port = host or settings.http_host, port or settings.http_port
    console.print(f"[bold green]mailer[/] on http://{bind_host}:{bind_port}  (API docs: /api/docs)")
    try:
        # Tracking hits (pixel, click, trap) skip the portal's middleware: the busiest routes.
        app = TrackingFastPath(create_app(settings))
        uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning")
    finally:
        if loop:
            loop.stop()
        if worker:
            worker.stop()
        if capture:
            capture[0].stop()
            capture[1].stop()


def _worker_process(threads: int, scheduler: bool) -> None:
    from mailer.campaigns.pipeline import recover_journals
    from mailer.scheduler.service import PeriodicLoop
    from mailer.workers import configure_broker, start_worker

    _log_setup()
    settings = get_settings()
    broker = configure_broker(settings)
    # What workers killed on this machine had sent goes into the ledger before anything
    # is sent again (their rows are then queued anew).
    recover_journals(settings)
    worker = start_worker(broker, threads)
    if settings.sms_gateways:
        from mailer.campaigns.sms import gateway_loop

        gateway_loop(settings)  # bound now: receipts of earlier sends arrive here too
    loop = PeriodicLoop() if scheduler else None
    if loop:
        loop.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    if loop:
        loop.stop()
    worker.stop()
    if settings.sms_gateways:
        from mailer.campaigns.sms import close_gateway_loop

        close_gateway_loop()


@app.command()
def worker(
    processes: Annotated[int, typer.Option(help="Worker processes on this machine.")] = 1,
    threads: Annotated[int | None, typer.Option(help="Threads per process.")] = None,
    scheduler: Annotated[
        bool, typer.Option(help="Also run the periodic scheduler (one per install).")
    ] = False,
) -> None:
    """Consume the queues of a Redis or RabbitMQ broker (MAILER_BROKER_URL)."""
    settings = get_settings()
    if not settings.broker_url:
        err.print(
            "[red]mailer worker needs a shared broker:[/] set MAILER_BROKER_URL to "
            "redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672/ "
            "(the embedded default runs its workers inside `mailer serve`)"
        )
        raise typer.Exit(2)
    threads = threads or settings.worker_threads
    console.print(
        f"{processes} worker process(es) × {threads} threads on "
        f"{settings.broker_url.split('@')[-1]}"
    )
    if processes == 1:
        _worker_process(threads, scheduler)
        return
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_worker_process, args=(threads, scheduler and i == 0), daemon=False)
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def stop_children(*_: object) -> None:
        for child in children:
            if child.pid and child.is_alive():
                child.terminate()

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    for child in children:
        child.join()


@app.command()
def demo(
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Start the server afterwards.")
    ] = False,
) -> None:
    """Set up a demo: database, admin user (credentials printed), sending domain with DKIM,
    a list of contacts, the template library and a draft campaign ready to send."""
    from mailer.demo import DEMO_ADMIN, setup_demo

    settings = get_settings()
    try:
        result = setup_demo(settings, password=secrets.token_urlsafe(12))
    except MailerError as exc:
        raise _fail(exc) from None
    console.rule("[bold green]mailer demo")
    if result.password:
        console.print(f"Portal:      {settings.base_url}/login")
        console.print(f"Usuario:     [bold]{DEMO_ADMIN}[/]")
        console.print(f"Contraseña:  [bold]{result.password}[/]")
    else:
        console.print(f"Demo already set up; user {DEMO_ADMIN} (reset with `mailer user password`)")
    console.print(f"API key ({result.api_key_name}): {result.api_key or '(created earlier)'}")
    console.print(
        f"Lista «{result.list_name}»: {result.contacts} contactos; "
        f"campaña #{result.campaign_id} lista para enviar"
    )
    if serve_after:
        _log_setup()
        run_server(settings)


@user_app.command("password")
def user_password(email: str, password: Annotated[str | None, typer.Option()] = None) -> None:
    """Set a user's password."""
    from mailer.accounts.service import audit, set_password
    from mailer.storage.db import session_scope

    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        with session_scope() as session:
            user = set_password(session, email, password)
            audit(session, None, "user.password", f"user:{user.id}", account_id=user.account_id)
    except MailerError as exc:
        raise _fail(exc) from None
    console.print("[green]password changed[/]")


# -- SMS and allowances -----------------------------------------------------------------

sms_app = typer.Typer(help="SMS: send, count parts, gateways.", no_args_is_help=True)
app.add_typer(sms_app, name="sms")
credits_app = typer.Typer(help="Allowances (the credit ledger).", no_args_is_help=True)
app.add_typer(credits_app, name="credits")


@sms_app.command("send")
def sms_send(
    text: str,
    to: Annotated[list[str], typer.Option("--to", help="A phone number (repeat the option).")],
    sender: Annotated[str | None, typer.Option(help="Sender id or short code.")] = None,
    account: int | None = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the receipts (in-process broker).")
    ] = 30.0,
) -> None:
    """Send one SMS per number and show what became of each."""
    import time

    from mailer.campaigns import sms
    from mailer.storage.db import session_scope
    from mailer.workers import configure_broker, start_worker

    settings = get_settings()
    broker = configure_broker(settings)
    account_id = _account_id(account)
    try:
        with session_scope(settings) as session:
            queued = sms.queue_sms(session, account_id, to, text, sender=sender, origin="cli")
            ids = [m.id for m in queued.messages if m.id is not None]
    except MailerError as exc:
        raise _fail(exc) from None
    for rejected in queued.rejected:
        err.print(f"[yellow]{rejected.value}:[/] {rejected.reason}")
    sms.enqueue_sms(ids, settings=settings)
    if settings.broker_url:
        console.print(f"{len(ids)} SMS queued for the workers: {ids}")
        return
    worker = start_worker(broker, settings.worker_threads)
    deadline = time.monotonic() + wait
    try:
        while True:
            with session_scope(settings) as session:
                states = [sms.get_sms(session, account_id, i)[0] for i in ids]
            final = all(m.state not in ("queued", "sending", "deferred", "sent") for m in states)
            if final or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        worker.stop()
        sms.close_gateway_loop()
    for message in states:
        console.print(
            f"#{message.id} {message.to_address}: {sms.display_state(message.state)} "
            f"({message.parts} partes){' · ' + message.reply_text if message.reply_text else ''}"
        )


@sms_app.command("count")
def sms_count(text: str) -> None:
    """Encoding, characters and parts of a text, and what replacing accents would save."""
    from mailer.sms.encoding import saving

    found = saving(text)
    info = found.before
    console.print(
        f"{info.encoding.upper()}: {info.characters} caracteres, {info.units} unidades, "
        f"{info.parts} parte(s), quedan {info.remaining}"
    )
    if info.ucs2_chars:
        console.print(
            f"fuerzan UCS-2: {' '.join(info.ucs2_chars)} · sin ellos: {found.after.parts} "
            f"parte(s): {found.text}"
        )


@sms_app.command("account")
def sms_account(
    account: int | None = None,
    sender: Annotated[str | None, typer.Option(help="Sender id or short code.")] = None,
    stop: Annotated[str | None, typer.Option(help="Stop keywords, comma-separated.")] = None,
    start: Annotated[str | None, typer.Option(help="Start keywords, comma-separated.")] = None,
) -> None:
    """Show or set an account's SMS sender and reply keywords."""
    from mailer.accounts.models import Account
    from mailer.accounts.service import audit
    from mailer.campaigns.sms import check_sender
    from mailer.storage.db import session_scope

    settings = get_settings()
    account_id = _account_id(account)
    try:
        with session_scope(settings) as session:
            row = session.get(Account, account_id)
            assert row is not None
            keywords = dict(row.sms_keywords or {})
            if sender is not None:
                row.sms_sender = check_sender(sender) if sender else ""
            for key, given in (("stop", stop), ("start", start)):
                if given is not None:
                    keywords[key] = [w.strip().upper() for w in given.split(",") if w.strip()]
            if sender is not None or stop is not None or start is not None:
                row.sms_keywords = keywords or None
                session.add(row)
                audit(session, None, "sms.account", f"account:{account_id}", account_id=account_id)
            shown_sender = row.sms_sender or f"{settings.sms.default_sender} (por defecto)"
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"remitente: {shown_sender}")
    console.print(f"baja: {', '.join(keywords.get('stop') or settings.sms.stop_keywords)}")
    console.print(f"alta: {', '.join(keywords.get('start') or settings.sms.start_keywords)}")


@sms_app.command("gateways")
def sms_gateways() -> None:
    """The configured SMS gateways, and the status callback URL of each HTTP one."""
    from mailer.api.sms import status_webhook_url

    settings = get_settings()
    if not settings.sms_gateways:
        console.print("no sms_gateways configured: the capture gateway sends nothing")
    for gateway in settings.sms_gateways:
        if gateway.kind == "smpp":
            console.print(
                f"{gateway.name}: SMPP {gateway.system_id}@{gateway.host}:{gateway.port} · "
                f"{gateway.rate_per_second:g}/s · ventana {gateway.window}"
            )
        else:
            url = status_webhook_url(settings.base_url, settings.secret_key, gateway.name)
            console.print(f"{gateway.name}: HTTP {gateway.http_url}\n  estados: {url}")


@credits_app.command("show")
def credits_show(account: int | None = None, movements: int = 10) -> None:
    """The allowances of an account and its latest movements."""
    from mailer.accounts import credits
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    with session_scope() as session:
        balances = credits.balances(session, account_id)
        latest = credits.movements(session, account_id, limit=movements)
    if not balances:
        console.print("no allowance: this account is not metered")
    for b in balances:
        until = b.valid_until.date().isoformat() if b.valid_until else "sin vencimiento"
        console.print(f"{b.channel}: {b.available} disponibles, {b.held} reservados ({until})")
    for m in latest:
        console.print(
            f"  {m.created_at:%Y-%m-%d %H:%M} {m.channel} {m.kind} {m.quantity} → "
            f"{m.available_after} {m.ref} {m.note}"
        )


@credits_app.command("grant")
def credits_grant(
    channel: str,
    quantity: int,
    account: int | None = None,
    days: Annotated[int, typer.Option(help="Validity in days (0: no end).")] = 365,
    note: str = "",
) -> None:
    """Give an account an allowance (e.g. `mailer credits grant sms 80000`)."""
    from mailer.accounts import credits
    from mailer.accounts.service import audit
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    try:
        with session_scope() as session:
            entry = credits.grant(
                session, account_id, channel, quantity, valid_days=days or None, actor="cli"
            )
            audit(
                session,
                None,
                "credits.grant",
                f"account:{account_id}",
                account_id=account_id,
                channel=channel,
                quantity=quantity,
                note=note,
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]{channel}: {entry.available_after} disponibles[/]")


@credits_app.command("transfer")
def credits_transfer(channel: str, quantity: int, from_account: int, to_account: int) -> None:
    """Move allowance between an account and one of its sub-accounts."""
    from mailer.accounts import credits
    from mailer.accounts.service import audit
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            out, into = credits.transfer(
                session, from_account, to_account, channel, quantity, actor="cli"
            )
            audit(
                session,
                None,
                "credits.transfer",
                f"account:{to_account}",
                account_id=from_account,
                channel=channel,
                quantity=quantity,
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(
        f"[green]{channel}: cuenta {from_account} {out.available_after} · "
        f"cuenta {to_account} {into.available_after}[/]"
    )


# -- API keys and OAuth clients --------------------------------------------------------

secrets_app = typer.Typer(
    help="Secrets kept sealed in the database (two-factor seeds, webhook secrets).",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("reseal")
def secrets_reseal() -> None:
    """Seal every stored secret again under the current secret_key.

    After changing secret_key (the old value listed in previous_secret_keys), run this once;
    when it reports nothing unreadable, the old key can leave previous_secret_keys.  (Answers
    kept for Idempotency-Key retries are not resealed: they expire within a day.)"""
    import json
    from dataclasses import asdict

    from mailer.accounts import totp
    from mailer.accounts.service import audit
    from mailer.storage.db import session_scope
    from mailer.webhooks import service as webhooks

    settings = get_settings()
    with session_scope(settings) as session:
        report = {
            "totp": asdict(totp.reseal_secrets(session, settings)),
            "webhooks": asdict(webhooks.reseal_secrets(session, settings)),
        }
        audit(session, None, "secrets.reseal", totp=report["totp"], webhooks=report["webhooks"])
    typer.echo(json.dumps(report))
    if any(part["unreadable"] for part in report.values()):
        typer.echo(
            "Some secrets could not be read with secret_key or previous_secret_keys: they were "
            "left as they were (list the key they were sealed with, or reset them).",
            err=True,
        )
        raise typer.Exit(1)


oauth_app = typer.Typer(
    help="OAuth 2.0 clients (client credentials), one per application.", no_args_is_help=True
)
app.add_typer(oauth_app, name="oauth")


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


@apikey_app.command("list")
def apikey_list(account: int | None = None) -> None:
    """The API keys of an account (their secrets are never shown again)."""
    from mailer.accounts.service import list_api_keys
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    with session_scope() as session:
        keys = list_api_keys(session, account_id)
    prefix = Column("prefix", no_wrap=True)
    table = Table("id", "application", "role", "scopes", prefix, "last used", "revoked")
    for key in keys:
        table.add_row(
            str(key.id),
            key.name,
            key.role,
            key.scopes or "(role)",
            f"mk_{key.prefix}_...",
            _when(key.last_used_at),
            _when(key.revoked_at),
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(key_id: int, account: int | None = None) -> None:
    """Revoke an API key: the next request with it is refused."""
    from mailer.accounts.service import audit, revoke_api_key
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    try:
        with session_scope() as session:
            key = revoke_api_key(session, account_id, key_id)
            audit(session, None, "apikey.revoke", f"apikey:{key.id}", account_id=account_id)
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]API key {key_id} ({key.name}) revoked[/]")


@oauth_app.command("create")
def oauth_create(
    application: Annotated[str, typer.Argument(help="Name of the application using it.")],
    role: Annotated[str, typer.Option(help="admin, manager, editor or viewer.")] = "manager",
    scopes: Annotated[
        str | None,
        typer.Option(help="What its tokens may ask for: read,edit,send,admin,email:send,..."),
    ] = None,
    account: int | None = None,
    rate: Annotated[float | None, typer.Option(help="Its own requests/s (0: none).")] = None,
    burst: Annotated[int | None, typer.Option(help="Its own burst.")] = None,
) -> None:
    """Create an OAuth client; its secret is shown once and stored hashed."""
    from mailer.accounts.service import audit, create_oauth_client
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            client, secret = create_oauth_client(
                session,
                account_id,
                application,
                role,
                scopes=scopes,
                rate_per_second=rate,
                burst=burst,
            )
            audit(
                session,
                None,
                "oauth_client.create",
                f"oauthclient:{client.client_id}",
                account_id=account_id,
                via="cli",
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(
        f"OAuth client for [bold]{application}[/] ({role}; scopes: {client.scopes}); "
        "the secret is shown only once:"
    )
    print(f"client_id={client.client_id}")
    print(f"client_secret={secret}")


@oauth_app.command("list")
def oauth_list(account: int | None = None) -> None:
    """The OAuth clients of an account."""
    from mailer.accounts.service import list_oauth_clients
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    with session_scope() as session:
        clients = list_oauth_clients(session, account_id)
    table = Table(
        Column("client_id", no_wrap=True), "application", "role", "scopes", "last token", "revoked"
    )
    for client in clients:
        table.add_row(
            client.client_id,
            client.name,
            client.role,
            client.scopes,
            _when(client.last_used_at),
            _when(client.revoked_at),
        )
    console.print(table)


@oauth_app.command("revoke")
def oauth_revoke(client_id: str, account: int | None = None) -> None:
    """Revoke an OAuth client: no new tokens, and its tokens stop working at once."""
    from mailer.accounts.service import audit, revoke_oauth_client
    from mailer.storage.db import session_scope

    account_id = _account_id(account)
    try:
        with session_scope() as session:
            client = revoke_oauth_client(session, account_id, client_id)
            audit(
                session,
                None,
                "oauth_client.revoke",
                f"oauthclient:{client.client_id}",
                account_id=account_id,
                via="cli",
            )
    except MailerError as exc:
        raise _fail(exc) from None
    console.print(f"[green]OAuth client {client_id} ({client.name}) revoked[/]")


def main() -> None:  # pragma: no cover
    sys.exit(app())
