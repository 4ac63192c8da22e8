"""Crash test: `kill -9` of every worker process, three times, during a campaign.

A campaign of N recipients (default 200,000; a small newsletter so the dump stays small)
goes through PostgreSQL + Redis and `mailer worker --processes 2` to Postfix's smtp-sink,
which appends every message to a dump file.  Three times, once another fifth of the
campaign has been delivered, every worker process is killed with SIGKILL and the workers
are started again (their start-up applies the dead workers' acceptance journals).  At the
end the dump is read back: distinct recipients delivered, duplicates (and whether each
kept its Message-ID), missing.  The goal: nobody missing, at most one duplicate per
connection open at a kill.  The last line is JSON.

    .venv/bin/python scripts/bench/crash_test.py --recipients 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from engine import (
    REDIS,
    bench_env,
    counts,
    launch_on_workers,
    provider_domain,
    scratch_database,
    sent_so_far,
    start_workers,
    stop_workers,
    wait_until_done,
    worker_children,
)
from sinkdump import DumpSink, tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="relay connections/process")
    parser.add_argument("--html-kb", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-crash-"))
    workdir.chmod(0o755)  # smtp-sink writes its dump as nobody
    sink = DumpSink(workdir / "sink" / "dump").start()
    kills: list[dict[str, int]] = []
    try:
        with scratch_database("postgresql", workdir) as url:
            env = bench_env(
                workdir,
                MAILER_DATABASE_URL=url,
                MAILER_BROKER_URL=REDIS,
                MAILER_RELAY__PORT=str(sink.port),
                MAILER_RELAY__MAX_CONNECTIONS=str(args.connections),
                MAILER_WORKER_THREADS=str(args.threads),
            )
            account_id, campaign_id, workers, started = launch_on_workers(
                env, workdir, args, "crash-test"
            )
            step = args.recipients // (args.kills + 2)
            for kill in range(1, args.kills + 1):
                while sent_so_far(campaign_id) < step * kill:
                    time.sleep(0.05)
                children = worker_children(workers)
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                workers.wait()
                kills.append({"after_sent": sent_so_far(campaign_id), "killed": len(children)})
                workers = start_workers(env, args.processes, args.threads)
            final = wait_until_done(account_id, campaign_id, args.timeout)
            seconds = time.perf_counter() - started
            stop_workers(workers)
            final = counts(account_id, campaign_id)
    finally:
        sink.stop()
    expected = {f"p{i:07d}@{provider_domain(i)}" for i in range(args.recipients)}
    result = {
        "recipients": args.recipients,
        **tally([sink.dump], expected),
        "kills": kills,
        "connections_open_at_a_kill": args.processes * args.connections,
        "ledger": {k: v for k, v in final.items() if v},
        "seconds": round(seconds, 1),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
