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
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
) -> None:
    """Create an API key; it is shown once and stored hashed."""
    from mailer.accounts.service import audit, create_api_key
    from mailer.storage.db import session_scope

    try:
        with session_scope() as session:
            account_id = _account_id(account)
            key, plaintext = create_api_key(session, account_id, application, role)
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
    account: int | None = None,
    errors_out: Annotated[
        Path | None, typer.Option(help="Write rejected rows to this CSV.")
    ] = None,
) -> None:
    """Import contacts from a CSV file into a list; bad rows are reported by line."""
    from mailer.audience.service import create_list, get_list_by_name, import_contacts
    from mailer.storage.db import session_scope

    total_bytes = file.stat().st_size
    try:
        with (
            session_scope() as session,
            Progress(
                TextColumn("[bold]Importando[/]"),
                BarColumn(),
                TextColumn("{task.completed} filas"),
                TimeElapsedColumn(),
                console=console,
            ) as progress,
        ):
            account_id = _account_id(account)
            lst = get_list_by_name(session, account_id, list_name) or create_list(
                session, account_id, list_name
            )
            bar = progress.add_task("import", total=None)
            report = import_contacts(
                session,
                account_id,
                file,
                actor="cli",
                list_id=lst.id,
                mode=mode,
                progress=lambda rows: progress.update(bar, completed=rows),
            )
    except MailerError as exc:
        raise _fail(exc) from None
    table = Table(
        title=(
            f"{file.name} → {list_name} ({total_bytes // 1024} KB, "
            f"{report.encoding}, '{report.delimiter}')"
        )
    )
    for column in (
        "filas",
        "nuevos",
        "actualizados",
        "sin cambios",
        "duplicados",
        "en la lista",
        "errores",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        *map(
            str,
            (
                report.rows,
                report.created,
                report.updated,
                report.unchanged,
                report.duplicates_in_file,
                report.added_to_list,
                len(report.errors),
            ),
        )
    )
    console.print(table)
    for error in report.errors[:20]:
        err.print(
            f"[yellow]line {error.line}[/], column {error.column!r}: "
            f"{error.reason} ({error.value!r})"
        )
    if len(report.errors) > 20:
        err.print(f"... and {len(report.errors) - 20} more")
    if errors_out and report.errors:
        errors_out.write_text(report.errors_csv(), encoding="utf-8")
        err.print(f"rejected rows written to {errors_out}")


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
    from mailer.core.queue import enqueue
    from mailer.delivery.service import start_capture_relay
    from mailer.scheduler.service import PeriodicLoop
    from mailer.scheduler.tasks import requeue_sending_campaigns
    from mailer.storage.migrate import upgrade
    from mailer.workers import configure_broker, start_worker

    upgrade(settings)
    broker = configure_broker(settings)
    capture = None
    if settings.capture.enabled:
        capture = start_capture_relay(settings)
        console.print(f"capture relay on smtp://{settings.capture.host}:{settings.capture.port}")
    worker = loop = None
    if not settings.broker_url:
        worker = start_worker(broker, settings.worker_threads)
        loop = PeriodicLoop()
        loop.start()
        enqueue(requeue_sending_campaigns)
    bind_host, bind_port = host or settings.http_host, port or settings.http_port
    console.print(f"[bold green]mailer[/] on http://{bind_host}:{bind_port}  (API docs: /api/docs)")
    try:
        uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_level="warning")
    finally:
        if loop:
            loop.stop()
        if worker:
            worker.stop()
        if capture:
            capture[0].stop()
            capture[1].stop()


def _worker_process(threads: int, scheduler: bool) -> None:
    from mailer.scheduler.service import PeriodicLoop
    from mailer.workers import configure_broker, start_worker

    _log_setup()
    settings = get_settings()
    worker = start_worker(configure_broker(settings), threads)
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


def main() -> None:  # pragma: no cover
    sys.exit(app())
