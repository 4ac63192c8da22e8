"""`mailer worker` processes consuming a shared Redis broker deliver a campaign once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dramatiq

from mailer.campaigns.service import send_now
from tests.conftest import REDIS_URL, require_server
from tests.helpers import build_world, start_recording_relay, wait_for_state


def test_two_worker_processes_share_the_queue(tmp_path: Path, configure: object) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    relay, recorder = start_recording_relay()
    settings = configure(  # type: ignore[operator]
        None,
        MAILER_RELAY__PORT=str(relay.port),
        MAILER_BROKER_URL=REDIS_URL,
        MAILER_BATCH_SIZE="25",
    )
    broker = dramatiq.get_broker()
    broker.flush_all()
    world = build_world(settings, tmp_path, 300)
    mailer = Path(sys.executable).with_name("mailer")
    worker = subprocess.Popen(
        [str(mailer), "worker", "--processes", "2", "--threads", "2"],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        send_now(world.account_id, world.campaign_id)
        assert wait_for_state(settings, world, {"completed"}, timeout=120) == "completed"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            output = worker.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            output = worker.communicate()[0].decode(errors="replace")
        relay.stop()
        broker.flush_all()
        broker.close()
    assert "2 worker process(es)" in output
    counts = Counter(rcpt for _from, rcpts, _data in recorder.messages for rcpt in rcpts)
    assert len(counts) == 300 and set(counts.values()) == {1}
