"""Campaign delivery throughput, end to end, counted at the receiving end.

N recipients (default 200,000) of a personalised newsletter (about 20 KB of HTML, tracked
links, the open pixel), DKIM RSA-2048, through the whole engine to Postfix's smtp-sink on
127.0.0.1 (which shares the two cores); what arrives at the sink is counted.

- scale mode (default): PostgreSQL + Redis and two `mailer worker` processes;
- ``--embedded``: SQLite + the in-process broker, worker threads in this process.

Timing starts when the campaign is started (audience snapshot included) and stops when the
campaign is completed.  The last line is JSON:
``{"messages":..., "seconds":..., "per_hour":..., "mode":"scale"|"embedded", ...}``.

    .venv/bin/python scripts/bench/email_throughput.py --recipients 200000
    .venv/bin/python scripts/bench/email_throughput.py --recipients 50000 --embedded
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from engine import (
    REDIS,
    bench_env,
    counts,
    flush_redis,
    prepare_campaign,
    scratch_database,
    start_workers,
    stop_workers,
    wait_until_done,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--embedded", action="store_true", help="SQLite + in-process broker")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="worker threads per process")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--connections", type=int, default=8, help="relay connections/process")
    parser.add_argument("--html-kb", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    from tests.mta import SmtpSink

    workdir = Path(tempfile.mkdtemp(prefix="mailer-throughput-"))
    mode = "embedded" if args.embedded else "scale"
    sink = SmtpSink(max_connections=1000)
    sink.start()
    try:
        with scratch_database("sqlite" if args.embedded else "postgresql", workdir) as url:
            env = bench_env(
                workdir,
                MAILER_DATABASE_URL=url,
                MAILER_BROKER_URL="" if args.embedded else REDIS,
                MAILER_RELAY__PORT=str(sink.port),
                MAILER_RELAY__MAX_CONNECTIONS=str(args.connections),
                MAILER_RELAY__MESSAGES_PER_CONNECTION="1000",
                MAILER_BATCH_SIZE=str(args.batch_size),
                MAILER_WORKER_THREADS=str(args.threads),
            )
            if not args.embedded:
                flush_redis(REDIS)
            setup_started = time.perf_counter()
            account_id, campaign_id = prepare_campaign(
                workdir, args.recipients, html_kb=args.html_kb
            )
            setup_seconds = time.perf_counter() - setup_started
            result = run(args, env, account_id, campaign_id, sink)
            result["setup_seconds"] = round(setup_seconds, 1)
            result["mode"] = mode
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


def run(
    args: argparse.Namespace, env: dict[str, str], account_id: int, campaign_id: int, sink: object
) -> dict[str, object]:
    from mailer.campaigns.service import send_now
    from mailer.core.config import get_settings
    from mailer.workers import configure_broker, start_worker

    settings = get_settings()
    broker = configure_broker(settings, force=True)
    workers = None
    local = None
    if args.embedded:
        local = start_worker(broker, args.threads)
    else:
        workers = start_workers(env, args.processes, args.threads)
        time.sleep(3)  # let the worker processes boot before the clock starts
    try:
        started = time.perf_counter()
        send_now(account_id, campaign_id, actor="bench")
        final = wait_until_done(account_id, campaign_id, args.timeout)
        seconds = time.perf_counter() - started
        arrived = sink.wait_for(final.get("sent", 0), timeout=10)  # type: ignore[attr-defined]
    finally:
        if local is not None:
            local.stop()
        if workers is not None:
            stop_workers(workers)
    final = counts(account_id, campaign_id)
    return {
        "messages": arrived,
        "seconds": round(seconds, 2),
        "per_hour": round(arrived / seconds * 3600),
        "recipients": args.recipients,
        "ledger": {k: v for k, v in final.items() if v},
        "processes": 1 if args.embedded else args.processes,
        "threads": args.threads,
        "html_kb": args.html_kb,
    }


if __name__ == "__main__":
    main()
