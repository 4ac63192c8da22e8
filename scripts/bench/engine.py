"""Shared set-up of the delivery benchmarks (email_throughput, crash_test, relay_faults).

A fresh database (a scratch PostgreSQL database, or SQLite), an account with an RSA-2048
sending domain, a personalised newsletter (the library's "boletin" grown to about
``--html-kb`` with more articles and links, each link tracked, plus the open pixel), and
N contacts spread over mailbox providers the way a Peruvian supplier list is (Gmail,
Hotmail/Outlook, Yahoo, and company domains).  Nothing here is timed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PG_ADMIN = os.environ.get("MAILER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("MAILER_TEST_REDIS", "redis://127.0.0.1:6379/14")
DOMAIN = "boletin.example.pe"

ARTICLE = """
<tr><td style="padding:16px 24px">
<h2 style="font-family:Arial,sans-serif;font-size:18px;color:#1a3c6e">{title} {n}</h2>
<p style="font-family:Arial,sans-serif;font-size:14px;line-height:21px;color:#333">
Estimado(a) {{{{ contact.first_name | default("proveedor", true) }}}} de
{{{{ contact.company }}}}: la entidad publica el aviso número {n} sobre contrataciones,
plazos de presentación de ofertas y requisitos del Registro Nacional de Proveedores.
Revise los documentos y las bases integradas antes de la fecha de cierre indicada.</p>
<p><a href="https://www.example.pe/avisos/{n}?utm_source=boletin&amp;utm_campaign=semana"
style="color:#1a3c6e">Leer el aviso completo</a> ·
<a href="https://www.example.pe/documentos/{n}.pdf" style="color:#1a3c6e">Descargar bases</a></p>
</td></tr>"""


def provider_domain(i: int) -> str:
    """About 40 % Gmail, 25 % Hotmail/Outlook, 10 % Yahoo, 25 % 500 company domains."""
    slot = i % 20
    if slot < 8:
        return "gmail.com"
    if slot < 13:
        return "hotmail.com" if slot % 2 else "outlook.com"
    if slot < 15:
        return "yahoo.com"
    return f"empresa{i % 500}.com.pe"


def newsletter_html(html_kb: int) -> str:
    base = (REPO / "templates" / "email" / "boletin" / "body.html").read_text(encoding="utf-8")
    articles = []
    n = 0
    while len(base) + sum(map(len, articles)) < html_kb * 1024:
        n += 1
        articles.append(ARTICLE.format(title="Convocatoria", n=n))
    marker = base.rfind("</table>")
    return base[:marker] + "".join(articles) + base[marker:]


def bench_env(workdir: Path, **values: str) -> dict[str, str]:
    env = {
        "MAILER_DATA_DIR": str(workdir / "var"),
        "MAILER_SENDING_DOMAINS_DIR": str(workdir / "domains"),
        "MAILER_TEMPLATES_DIR": str(REPO / "templates"),
        "MAILER_CONFIG": str(workdir / "none.toml"),
        "MAILER_SECRET_KEY": "bench-" + "s" * 40,
        # Nothing leaves the machine: company domains are not looked up (closed port).
        "MAILER_DNS_SERVERS": "127.0.0.1:9",
        "MAILER_DNS__TIMEOUT_SECONDS": "0.5",
        **values,
    }
    os.environ.update(env)
    return env


@contextlib.contextmanager
def scratch_database(kind: str, workdir: Path) -> Iterator[str]:
    """A new database URL: a scratch PostgreSQL database (dropped after) or SQLite."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    import psycopg

    name = f"mailer_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    finally:
        from mailer.storage.db import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def prepare_campaign(workdir: Path, recipients: int, *, html_kb: int = 20) -> tuple[int, int]:
    """Migrate, then create the account, domain, template, contacts and a draft campaign."""
    from mailer.accounts.service import create_account
    from mailer.audience.service import create_list, import_contacts
    from mailer.campaigns.service import create_campaign
    from mailer.content.store import create_template
    from mailer.core.config import get_settings
    from mailer.delivery.domains import add_domain
    from mailer.storage.db import session_scope
    from mailer.storage.migrate import upgrade

    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    add_domain(settings.sending_domains_dir, DOMAIN, replace=True)
    csv = workdir / "contacts.csv"
    with csv.open("w", encoding="utf-8") as out:
        out.write("email,nombre,empresa\n")
        for i in range(recipients):
            out.write(f"p{i:07d}@{provider_domain(i)},Nombre{i},Empresa {i % 997} S.A.C.\n")
    with session_scope(settings) as session:
        account = create_account(session, "Entidad de prueba")
        assert account.id is not None
        lst = create_list(session, account.id, "Proveedores")
        assert lst.id is not None
        import_contacts(session, account.id, csv, list_id=lst.id)
        template = create_template(
            session,
            account.id,
            name="Boletín semanal",
            subject="Boletín de contrataciones para {{ contact.first_name }} — edición única",
            html=newsletter_html(html_kb),
        )
        assert template.id is not None
        campaign = create_campaign(
            session,
            account.id,
            name="Boletín (benchmark)",
            template_id=template.id,
            list_id=lst.id,
            from_email=f"avisos@{DOMAIN}",
            from_name="Entidad Pública",
            freshness_days=-1,  # the benchmark measures delivery, not cleaning
        )
        assert campaign.id is not None
        return account.id, campaign.id


def start_workers(env: dict[str, str], processes: int, threads: int) -> subprocess.Popen[bytes]:
    """``mailer worker --processes N`` (its children are the worker processes)."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mailer"),
            "worker",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def worker_children(parent: subprocess.Popen[bytes]) -> list[int]:
    """The pids of the worker processes started by a ``mailer worker`` parent."""
    path = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except OSError:
        return []


def stop_workers(parent: subprocess.Popen[bytes]) -> None:
    import signal

    if parent.poll() is None:
        parent.send_signal(signal.SIGTERM)
        try:
            parent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in worker_children(parent):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            parent.kill()
            parent.wait()


def counts(account_id: int, campaign_id: int) -> dict[str, Any]:
    from mailer.campaigns.service import campaign_counts, get_campaign
    from mailer.storage.db import session_scope

    with session_scope() as session:
        campaign = get_campaign(session, account_id, campaign_id)
        return {"state": campaign.state, **campaign_counts(session, campaign)}


def wait_until_done(account_id: int, campaign_id: int, timeout: float) -> dict[str, Any]:
    """Poll the campaign's state (one primary-key read) until it stops sending."""
    from sqlalchemy import select

    from mailer.campaigns.models import Campaign
    from mailer.storage.db import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            state = session.execute(
                select(Campaign.state).where(Campaign.id == campaign_id)
            ).scalar_one()
        if state != "sending":
            break
        time.sleep(0.1)
    return counts(account_id, campaign_id)


def sent_so_far(campaign_id: int) -> int:
    from sqlalchemy import func, select

    from mailer.messages.models import Message
    from mailer.storage.db import session_scope

    with session_scope() as session:
        return int(
            session.execute(
                select(func.count()).where(
                    Message.campaign_id == campaign_id, Message.state == "sent"
                )
            ).scalar_one()
        )


def launch_on_workers(
    env: dict[str, str], workdir: Path, args: Any, actor: str
) -> tuple[int, int, subprocess.Popen[bytes], float]:
    """Prepare the campaign, start `mailer worker` processes, start the campaign: returns
    the account and campaign ids, the workers' parent process and the start time."""
    from mailer.campaigns.service import send_now
    from mailer.workers import configure_broker

    flush_redis(REDIS)
    account_id, campaign_id = prepare_campaign(workdir, args.recipients, html_kb=args.html_kb)
    configure_broker(force=True)
    workers = start_workers(env, args.processes, args.threads)
    time.sleep(3)  # let the worker processes boot before the clock starts
    started = time.perf_counter()
    send_now(account_id, campaign_id, actor=actor)
    return account_id, campaign_id, workers, started
