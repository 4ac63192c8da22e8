"""Tracking endpoints under load: open-pixel and click-redirect hits against the app in
two processes, from a separate load generator (wrk) on 127.0.0.1.

Prepares a database (a scratch PostgreSQL database by default, dropped afterwards; or
--database-url / --sqlite) with a campaign of --messages sent messages, starts
``uvicorn --workers 2 --factory`` on it, runs wrk with a Lua script that cycles through
open and click URLs of those messages (bounded: --hits in total and --seconds), stops
the server (its shutdown writes what is still buffered), and counts the events written.
Prints JSON last: hits, seconds, hits_per_s, p99_ms, recorded.

The app is ``create_app``'s: a :class:`~mailer.web.tracking.TrackingApp`, which answers
the hits before any middleware, each worker handing its hits to a writer process of its own
(``tracking.writer``).  ``--fast-path`` also wraps it in ``TrackingFastPath`` as
``mailer serve`` does (the same path).  The machine is shared: ``load_before`` is the
1-minute load average when the run starts.

    apt-get install -y wrk
    .venv/bin/python scripts/bench/tracking_load.py --hits 60000 --connections 64
    .venv/bin/python scripts/bench/tracking_load.py --sqlite --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("MAILER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)

# Each wrk thread sends its share of tracked requests, then only /healthz until every
# tracked request has its answer, then stops: hits counts exactly the tracked answers.
WRK_SCRIPT = r"""
local paths = {}
local sent, limit = 0, 0
answered, t0, t1 = 0, 0, 0
local function now_us()
  local clock = io.popen("date +%s%6N")
  local value = tonumber(clock:read("*l"))
  clock:close()
  return value
end
local counter = 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  threads[#threads + 1] = thread
end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  limit = tonumber(args[2])
  sent = (id - 1) * 7919
end
function request()
  -- wrk builds one request per thread before the run and never sends it: one spare.
  if sent - (id - 1) * 7919 < limit + 1 then
    if t0 == 0 then t0 = now_us() end
    sent = sent + 1
    return wrk.format("GET", paths[(sent % #paths) + 1], {["User-Agent"] = args_ua})
  end
  return wrk.format("GET", "/healthz")
end
function response(status, headers, body)
  local kind = headers["content-type"] or headers["Content-Type"] or ""
  if status == 302 or kind == "image/gif" then
    answered = answered + 1
    if answered >= limit then
      t1 = now_us()
      wrk.thread:stop()
    end
  end
end
function done(summary, latency, requests)
  local tracked, first, last = 0, 0, 0
  for _, thread in ipairs(threads) do
    tracked = tracked + thread:get("answered")
    local start, stop = thread:get("t0"), thread:get("t1")
    if first == 0 or start < first then first = start end
    if stop > last then last = stop end
  end
  local elapsed = summary.duration
  if last > 0 then elapsed = last - first end
  io.write(string.format(
    '{"tracked": %d, "requests": %d, "duration_us": %d, "elapsed_us": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"status_errors": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d}\n',
    tracked, summary.requests, summary.duration, elapsed,
    latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not come up at {url}")


def scratch_database() -> tuple[str, str]:
    import psycopg

    name = f"mailer_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(messages: int, workdir: Path) -> tuple[list[int], str]:
    """A campaign with *messages* ledger rows, sent an hour ago; returns ids and secret."""
    sys.path.insert(0, str(REPO))
    from datetime import timedelta

    from sqlalchemy import select, update
    from sqlmodel import col

    from mailer.campaigns.service import start_campaign
    from mailer.core.clock import utcnow
    from mailer.core.config import get_settings
    from mailer.messages.models import Message
    from mailer.storage.db import session_scope
    from mailer.storage.migrate import upgrade
    from tests.helpers import build_world

    settings = get_settings()
    upgrade(settings)
    world = build_world(settings, workdir, messages)
    with session_scope(settings) as session:
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope(settings) as session:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == world.campaign_id)
            .values(state="sent", sent_at=utcnow() - timedelta(hours=1))
        )
    with session_scope(settings) as session:
        ids = list(
            session.execute(
                select(col(Message.id)).where(col(Message.campaign_id) == world.campaign_id)
            ).scalars()
        )
    if not ids:
        raise SystemExit("the campaign has no messages")
    return ids, settings.secret_key


def count_events() -> int:
    from sqlalchemy import func, select
    from sqlmodel import col

    from mailer.events.models import Event
    from mailer.storage.db import dispose_engines, session_scope

    dispose_engines()
    with session_scope() as session:
        return int(
            session.execute(
                select(func.count()).where(col(Event.kind).in_(["opened", "clicked"]))
            ).scalar_one()
        )


def fast_app() -> object:
    """uvicorn factory: the app with :class:`TrackingFastPath` in front (--fast-path)."""
    from mailer.asgi import create_app
    from mailer.web.tracking import TrackingFastPath

    return TrackingFastPath(create_app())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=60000, help="tracked requests in total")
    parser.add_argument("--seconds", type=int, default=60, help="upper bound on the run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PG")
    parser.add_argument("--fast-path", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    workdir = Path(tempfile.mkdtemp(prefix="mailer-tracking-bench-"))
    scratch = None
    if args.database_url:
        url = args.database_url
    elif args.sqlite:
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        url, scratch = scratch_database()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "MAILER_DATABASE_URL": url,
            "MAILER_DATA_DIR": str(workdir / "var"),
            "MAILER_SENDING_DOMAINS_DIR": str(workdir / "domains"),
            "MAILER_CONFIG": str(workdir / "none.toml"),
            "MAILER_SECRET_KEY": "bench-secret-" + "b" * 40,
            "MAILER_BASE_URL": base,
            "MAILER_BROKER_URL": "",
            # Nothing leaves the machine: cleaning at start asks a closed local port.
            "MAILER_DNS_SERVERS": f"127.0.0.1:{free_port()}",
        }
    )
    server = None
    try:
        ids, secret = prepare(args.messages, workdir)
        from mailer.tracking.urls import click_url, open_url

        paths = []
        for message_id in ids:
            paths.append(open_url("", secret, message_id))
            paths.append(
                click_url("", secret, message_id, 0, f"https://www.example.pe/p?m={message_id}")
            )
        random.Random(7).shuffle(paths)
        (workdir / "paths.txt").write_text("\n".join(paths) + "\n")
        script = WRK_SCRIPT.replace("args_ua", json.dumps(CHROME).replace('"', "'"))
        (workdir / "load.lua").write_text(script)

        factory = "tracking_load:fast_app" if args.fast_path else "mailer.asgi:create_app"
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            factory,
            "--factory",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        if args.fast_path:
            command += ["--app-dir", str(Path(__file__).parent)]
        server = subprocess.Popen(command, cwd=REPO, start_new_session=True)
        wait_ready(f"{base}/healthz")
        per_thread = args.hits // args.threads
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        load = subprocess.run(
            [
                "wrk",
                "-t",
                str(args.threads),
                "-c",
                str(args.connections),
                "-d",
                f"{args.seconds}s",
                "--timeout",
                "5s",
                "-s",
                str(workdir / "load.lua"),
                base,
                "--",
                str(workdir / "paths.txt"),
                str(per_thread),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if load.returncode != 0:
            raise SystemExit(f"wrk failed: {load.args} {load.stdout}{load.stderr}")
        seconds = time.perf_counter() - started
        report = json.loads(load.stdout.strip().splitlines()[-1])
        time.sleep(1.0)  # a few flush intervals
        server.send_signal(signal.SIGTERM)  # shutdown writes what is still buffered
        server.wait(timeout=60)
        server = None
        recorded = count_events()
        hits = report["tracked"]
        wrk_seconds = report["elapsed_us"] / 1e6  # first tracked request to last answer
        print(
            json.dumps(
                {
                    "benchmark": "tracking_load",
                    "database": url.split(":", 1)[0],
                    "fast_path": args.fast_path,
                    "connections": args.connections,
                    "load_before": round(load_before, 2),
                    "wrk": report,
                    "run_seconds": round(seconds, 2),
                    "hits": hits,
                    "seconds": round(wrk_seconds, 2),
                    "hits_per_s": round(hits / wrk_seconds),
                    "p99_ms": round(report["p99_us"] / 1000, 1),
                    "recorded": recorded,
                }
            )
        )
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        if scratch:
            from mailer.storage.db import dispose_engines

            dispose_engines()
            drop_database(scratch)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
