"""Relay faults: three relays; one dies mid-run, another answers 421 for a while.

A campaign of N recipients (default 50,000) goes through PostgreSQL + Redis and
`mailer worker --processes 2` to a pool of three smtp-sink relays, each appending what it
accepts to its own dump file:

- relay "a" works throughout;
- relay "b" is killed (SIGKILL) once a third of the campaign is sent, and stays dead;
- relay "c" answers every MAIL with ``421 4.7.0 Try again later`` for the first
  ``--refuse-seconds`` (default 20 s), then works.

At the end the dumps are read back: delivered, duplicates, missing (goal: nobody missing,
at most one duplicate per connection open on the relay that died).  Last line JSON.

    .venv/bin/python scripts/bench/relay_faults.py --recipients 50000
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
    launch_on_workers,
    provider_domain,
    scratch_database,
    sent_so_far,
    stop_workers,
    wait_until_done,
)
from sinkdump import DumpSink, tally

REFUSE = ("-r", "MAIL", "-b", "421 4.7.0 Try again later")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4, help="per relay and process")
    parser.add_argument("--refuse-seconds", type=float, default=20)
    parser.add_argument("--html-kb", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-relays-"))
    workdir.chmod(0o755)  # smtp-sink writes its dumps as nobody
    a = DumpSink(workdir / "a" / "dump").start()
    b = DumpSink(workdir / "b" / "dump").start()
    c = DumpSink(workdir / "c" / "dump", extra=REFUSE).start()
    events: list[str] = []
    relays = [
        {"name": name, "host": "127.0.0.1", "port": sink.port, "max_connections": args.connections}
        for name, sink in (("a", a), ("b", b), ("c", c))
    ]
    try:
        with scratch_database("postgresql", workdir) as url:
            env = bench_env(
                workdir,
                MAILER_DATABASE_URL=url,
                MAILER_BROKER_URL=REDIS,
                MAILER_RELAYS=json.dumps(relays),
                MAILER_WORKER_THREADS=str(args.threads),
                MAILER_DELIVERY__RELAY_DOWN_SECONDS="5",
            )
            account_id, campaign_id, workers, started = launch_on_workers(
                env, workdir, args, "relay-faults"
            )
            c_restored = b_killed = False
            while True:
                elapsed = time.perf_counter() - started
                sent = sent_so_far(campaign_id)
                if not c_restored and elapsed >= args.refuse_seconds:
                    c.stop()
                    c.extra = ()
                    c.start()
                    c_restored = True
                    events.append(f"c accepts again at {elapsed:.1f} s ({sent} sent)")
                if not b_killed and sent >= args.recipients // 3:
                    b.kill()
                    b_killed = True
                    events.append(f"b killed at {elapsed:.1f} s ({sent} sent)")
                if c_restored and b_killed:
                    break
                if counts(account_id, campaign_id)["state"] != "sending":
                    break
                time.sleep(0.1)
            final = wait_until_done(account_id, campaign_id, args.timeout)
            seconds = time.perf_counter() - started
            stop_workers(workers)
            final = counts(account_id, campaign_id)
    finally:
        for sink in (a, b, c):
            sink.stop()
    expected = {f"p{i:07d}@{provider_domain(i)}" for i in range(args.recipients)}
    sinks = (("a", a), ("b", b), ("c", c))
    per_relay = {name: tally([sink.dump], expected)["received"] for name, sink in sinks}
    result = {
        "recipients": args.recipients,
        **tally([a.dump, b.dump, c.dump], expected),
        "per_relay": per_relay,
        "events": events,
        "connections_open_on_b": args.processes * args.connections,
        "ledger": {k: v for k, v in final.items() if v},
        "seconds": round(seconds, 1),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
