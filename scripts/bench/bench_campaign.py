"""End-to-end campaign throughput: import, snapshot, queue, render, MIME, DKIM, SMTP.

Runs the real pipeline (in-process broker, N worker threads) against a local aiosmtpd
sink that discards what it receives, on a fresh SQLite (or --database-url) database.
Prints JSON: messages, seconds, messages_per_hour.

    .venv/bin/python scripts/bench/bench_campaign.py --recipients 20000 --threads 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-bench-"))
    from mailer.delivery.capture import CaptureRelay

    received = 0

    def sink(_mail_from: str, rcpt_tos: list[str], _data: bytes) -> None:
        nonlocal received
        received += len(rcpt_tos)

    relay = CaptureRelay("127.0.0.1", 0, sink=sink, recipient_rules=False)
    relay.start()
    os.environ.update(
        {
            "MAILER_DATABASE_URL": args.database_url or f"sqlite:///{workdir / 'bench.db'}",
            "MAILER_SENDING_DOMAINS_DIR": str(workdir / "domains"),
            "MAILER_RELAY__PORT": str(relay.port),
            "MAILER_BATCH_SIZE": str(args.batch_size),
            "MAILER_CONFIG": str(workdir / "none.toml"),
        }
    )
    from mailer.core.config import get_settings
    from mailer.storage.migrate import upgrade
    from mailer.workers import configure_broker, start_worker

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.helpers import build_world

    settings = get_settings()
    upgrade(settings)
    configure_broker(settings)
    setup_started = time.perf_counter()
    world = build_world(settings, workdir, args.recipients)
    setup_seconds = time.perf_counter() - setup_started

    from mailer.campaigns.service import campaign_counts, get_campaign, send_now
    from mailer.storage.db import session_scope

    worker = start_worker(configure_broker(settings), args.threads)
    started = time.perf_counter()
    send_now(world.account_id, world.campaign_id)
    while True:
        with session_scope() as session:
            campaign = get_campaign(session, world.account_id, world.campaign_id)
            if campaign.state != "sending":
                counts = campaign_counts(session, campaign)
                break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    worker.stop()
    relay.stop()
    print(
        json.dumps(
            {
                "benchmark": "campaign_end_to_end",
                "recipients": args.recipients,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "database": settings.effective_database_url.split(":", 1)[0],
                "import_and_setup_seconds": round(setup_seconds, 2),
                "send_seconds": round(seconds, 2),
                "sent": counts["sent"],
                "received_by_sink": received,
                "messages_per_hour": round(counts["sent"] / seconds * 3600),
            }
        )
    )


if __name__ == "__main__":
    main()
