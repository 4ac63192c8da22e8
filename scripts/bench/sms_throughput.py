"""SMS throughput, end to end: N personalised SMS (default 20,000) of a campaign to a list,
through the queue and the SMPP gateway to the test SMSC (npm ``smpp``, scripted, on
127.0.0.1, sharing the two cores), until every delivery receipt is settled in the ledger
(and the allowance charged).

- scale mode (default): PostgreSQL + Redis and two ``mailer worker`` processes, each with
  its own SMPP bind;
- ``--embedded``: SQLite + the in-process broker, worker threads in this process.

Timing starts when the campaign is started (audience snapshot and reservation included)
and stops when no message is waiting for a receipt.  The last line is JSON:
``{"messages":..., "seconds":..., "per_hour":..., "receipts_settled":..., ...}``.

    .venv/bin/python scripts/bench/sms_throughput.py
    .venv/bin/python scripts/bench/sms_throughput.py --messages 5000 --embedded
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import (
    REDIS,
    REPO,
    bench_env,
    flush_redis,
    scratch_database,
    start_workers,
    stop_workers,
)

sys.path.insert(0, str(REPO))

TEXT = (
    "{{ contact.first_name }}, la Entidad le recuerda que su orden {{ contact.orden }} "
    "vence el 30/11. Detalle: https://www.example.gob.pe/ordenes"
)


def prepare(workdir: Path, messages: int) -> tuple[int, int]:
    """Migrate; an account with an SMS allowance, N contacts with mobiles in a list, and a
    draft SMS campaign to it."""
    from mailer.accounts import credits
    from mailer.accounts.service import create_account
    from mailer.audience.service import create_list, import_contacts
    from mailer.campaigns.sms import create_sms_campaign
    from mailer.core.config import get_settings
    from mailer.storage.db import session_scope
    from mailer.storage.migrate import upgrade

    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    csv = workdir / "contacts.csv"
    with csv.open("w", encoding="utf-8") as out:
        out.write("email,nombre,celular,orden\n")
        for i in range(messages):
            out.write(f"p{i:07d}@empresa{i % 500}.com.pe,Nombre{i},9{i:08d},OC-{i}\n")
    with session_scope(settings) as session:
        account = create_account(session, "Entidad de prueba")
        assert account.id is not None
        credits.grant(session, account.id, "sms", messages * 3)
        lst = create_list(session, account.id, "Proveedores")
        assert lst.id is not None
        report = import_contacts(session, account.id, csv, list_id=lst.id)
        campaign = create_sms_campaign(
            session, account.id, name="Recordatorio (benchmark)", text=TEXT, list_id=lst.id
        )
        assert campaign.id is not None
        print(f"imported {report.created} contacts", file=sys.stderr)
        return account.id, campaign.id


def settled(campaign_id: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from mailer.messages.models import Message
    from mailer.storage.db import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Message.state, func.count())  # type: ignore[call-overload]
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.state)
        ).all()
    return {state: int(n) for state, n in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--embedded", action="store_true", help="SQLite + in-process broker")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="worker threads per process")
    parser.add_argument("--window", type=int, default=100, help="SMPP messages in flight")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    from tests.smsc import Smsc

    workdir = Path(tempfile.mkdtemp(prefix="mailer-sms-"))
    mode = "embedded" if args.embedded else "scale"
    smsc = Smsc(receipt_delay_ms=20, record=False)
    smsc.start()
    try:
        gateway = smsc.gateway_settings(
            name="smsc", window=args.window, rate_per_second=0
        ).model_dump(mode="json")
        gateway["password"] = smsc.config["password"]
        with scratch_database("sqlite" if args.embedded else "postgresql", workdir) as url:
            env = bench_env(
                workdir,
                MAILER_DATABASE_URL=url,
                MAILER_BROKER_URL="" if args.embedded else REDIS,
                MAILER_SMS_GATEWAYS=json.dumps([gateway]),
                MAILER_SMS__BATCH_SIZE=str(args.batch_size),
                MAILER_WORKER_THREADS=str(args.threads),
            )
            if not args.embedded:
                flush_redis(REDIS)
            setup_started = time.perf_counter()
            account_id, campaign_id = prepare(workdir, args.messages)
            setup_seconds = time.perf_counter() - setup_started
            result = run(args, env, account_id, campaign_id)
            result["setup_seconds"] = round(setup_seconds, 1)
            result["mode"] = mode
            result["smsc"] = {k: v for k, v in smsc.stats().items() if isinstance(v, int) and v}
    finally:
        smsc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


def run(
    args: argparse.Namespace, env: dict[str, str], account_id: int, campaign_id: int
) -> dict[str, Any]:
    from mailer.accounts import credits
    from mailer.campaigns.service import send_now
    from mailer.campaigns.sms import close_gateway_loop, gateway_loop
    from mailer.core.config import get_settings
    from mailer.storage.db import session_scope
    from mailer.workers import configure_broker, start_worker

    settings = get_settings()
    broker = configure_broker(settings, force=True)
    workers = local = None
    if args.embedded:
        local = start_worker(broker, args.threads)
        gateway_loop(settings)
    else:
        workers = start_workers(env, args.processes, args.threads)
        time.sleep(4)  # let the worker processes boot and bind before the clock starts
    waiting = {"queued", "sending", "deferred", "sent"}
    try:
        started = time.perf_counter()
        send_now(account_id, campaign_id, actor="bench")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            states = settled(campaign_id)
            if sum(states.values()) and not waiting & {s for s, n in states.items() if n}:
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - started
    finally:
        if local is not None:
            local.stop()
            close_gateway_loop()
        if workers is not None:
            stop_workers(workers)
    states = settled(campaign_id)
    final = sum(states.get(s, 0) for s in ("delivered", "undelivered", "expired"))
    with session_scope() as session:
        balance = credits.balance(session, account_id, "sms")
        ledger_ok = credits.verify(session, account_id, "sms") == (
            (balance.available, balance.held) if balance else (0, 0)
        )
    return {
        "messages": sum(states.values()),
        "seconds": round(seconds, 2),
        "per_hour": round(final / seconds * 3600),
        "receipts_settled": final,
        "ledger": states,
        "allowance": {
            "available": balance.available if balance else None,
            "held": balance.held if balance else None,
            "consistent": ledger_ok,
        },
        "processes": 1 if args.embedded else args.processes,
        "threads": args.threads,
        "window": args.window,
    }


if __name__ == "__main__":
    main()
