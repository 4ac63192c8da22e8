"""API latency under an open load: ``POST /api/v1/sms`` and ``POST /api/v1/messages``
(transactional e-mail), half and half, with API keys, against the server in two processes
(uvicorn ``--workers 2``) on PostgreSQL with Redis as the broker.

The load is *open* (DESIGN.md's note on this benchmark): requests are scheduled at a fixed
offered rate over 200 keep-alive connections, and each latency is measured from the time
the request was *due*, so a slow server cannot hide its queueing (no coordinated omission).
A closed loop of 200 clients on two shared cores measures the machine, not the API.

1. the main run: ``--rate`` (default 1,000 requests/s) for ``--seconds`` (default 30);
2. with ``--search``: short runs at rising rates to find ``max_rps_p99_200ms``, the highest
   offered rate whose p99 stays within the contract's 200 ms.

The load generator is this process (raw asyncio HTTP/1.1, sharing the two cores with the
server).  The work the API queues goes to Redis; no worker consumes it during the run (the
benchmark measures the API, not delivery).  The last line is JSON:
``{"requests":..., "rps":..., "p50_ms":..., "p99_ms":..., "errors":..., "max_rps_p99_200ms":...}``.

    .venv/bin/python scripts/bench/api_latency.py --search
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from engine import DOMAIN, REDIS, REPO, bench_env, flush_redis, scratch_database

sys.path.insert(0, str(REPO))

CONNECTIONS = 200


def prepare(accounts: int) -> list[str]:
    """Migrate; accounts with allowances and an API key each; the sending domain."""
    from mailer.accounts import credits
    from mailer.accounts.service import create_account, create_api_key
    from mailer.core.config import get_settings
    from mailer.delivery.domains import add_domain
    from mailer.storage.db import session_scope
    from mailer.storage.migrate import upgrade

    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    add_domain(settings.sending_domains_dir, DOMAIN, replace=True)
    keys = []
    with session_scope(settings) as session:
        for n in range(accounts):
            account = create_account(session, f"Integrador {n}")
            assert account.id is not None
            credits.grant(session, account.id, "sms", 10_000_000)
            credits.grant(session, account.id, "email", 10_000_000)
            _key, plaintext = create_api_key(session, account.id, f"ERP {n}", "manager")
            keys.append(plaintext)
    return keys


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "uvicorn"),
        "mailer.asgi:create_app",
        "--factory",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    server = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise SystemExit("the server did not start")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def cpu_seconds(server: subprocess.Popen[bytes]) -> dict[str, float]:
    """CPU time (user + system) used so far (Linux /proc) by the server's processes, by
    PostgreSQL's and by Redis's."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals = {"server": 0.0, "postgresql": 0.0, "redis": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, tail = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        name, fields = head.split("(", 1)[1], tail.split()
        used = (int(fields[11]) + int(fields[12])) / ticks
        if int(fields[2]) == server.pid:  # the process group uvicorn's workers share
            totals["server"] += used
        elif name.startswith("postgres"):
            totals["postgresql"] += used
        elif name.startswith("redis-server"):
            totals["redis"] += used
    return totals


def request_bytes(port: int, key: str, n: int) -> bytes:
    if n % 2:
        path = "/api/v1/sms"
        body = {
            "to": [f"9{random.randrange(10**7, 10**8)}"],
            "text": "Su trámite {{ t }} está listo. Detalle: https://www.example.gob.pe/t",
            "variables": {"t": f"T-{n}"},
        }
    else:
        path = "/api/v1/messages"
        body = {
            "to": f"persona{n}@example.pe",
            "from_email": f"notificaciones@{DOMAIN}",
            "subject": "Trámite {{ t }} registrado",
            "html": "<p>Hola, su trámite <b>{{ t }}</b> fue registrado.</p>",
            "variables": {"t": f"T-{n}"},
        }
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(port: int, keys: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Offer *rate* requests/s for *seconds*; latencies from each request's due time."""
    total = int(rate * seconds)
    queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0

    async def connection(index: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, n = item
                try:
                    writer.write(request_bytes(port, keys[n % len(keys)], n))
                    status = await read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append(time.perf_counter() - due)
                statuses[status] = statuses.get(status, 0) + 1
                if status >= 300:
                    errors += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection(i)) for i in range(CONNECTIONS)]
    await asyncio.sleep(0.5)  # connections open before the clock starts
    started = time.perf_counter()
    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, n))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "offered_rps": rate,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "errors": errors,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--accounts", type=int, default=4, help="integrators (API keys)")
    parser.add_argument("--search", action="store_true", help="also find max_rps_p99_200ms")
    parser.add_argument("--sqlite", action="store_true", help="SQLite and the in-process broker")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-api-"))
    port = 18_000 + random.randrange(1000)
    try:
        with scratch_database("sqlite" if args.sqlite else "postgresql", workdir) as url:
            env = bench_env(
                workdir,
                MAILER_DATABASE_URL=url,
                MAILER_BROKER_URL="" if args.sqlite else REDIS,
                MAILER_API__RATE_PER_SECOND="100000",
                MAILER_API__BURST="100000",
                MAILER_CAPTURE__ENABLED="false",
            )
            if not args.sqlite:
                flush_redis(REDIS)
            keys = prepare(args.accounts)
            server = start_server(env, port, args.workers)
            try:
                asyncio.run(run_load(port, keys, 100, 3))  # warm-up: imports, pools, caches
                cpu_before = cpu_seconds(server)
                result = asyncio.run(run_load(port, keys, args.rate, args.seconds))
                # CPU per answered request: the server (both processes), the database, Redis.
                cpu_after = cpu_seconds(server)
                result["cpu_ms_per_request"] = {
                    part: round(
                        1000 * (cpu_after[part] - cpu_before[part]) / max(1, result["requests"]),
                        2,
                    )
                    for part in cpu_after
                }
                if args.search:
                    best = 0.0
                    for rate in (50, 100, 200, 300, 500, 1000, 1500, 2000, 3000, 4000):
                        step = asyncio.run(run_load(port, keys, rate, 10))
                        print(json.dumps({"search": step}), file=sys.stderr)
                        if step["p99_ms"] > 200 or step["errors"]:
                            break
                        best = rate
                    result["max_rps_p99_200ms"] = best
            finally:
                stop_server(server)
            result["server_processes"] = args.workers
            result["database"] = "sqlite" if args.sqlite else "postgresql"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
