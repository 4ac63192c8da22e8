"""Postfix's smtp-sink as a recording relay for the fault scripts: ``-D`` appends every
transaction (envelope lines, then the message) to one dump file, at C speed; this module
starts such sinks and reads the dumps back as (recipient, Message-ID) pairs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smtp_sink_binary() -> str:
    for candidate in ("/usr/sbin/smtp-sink", shutil.which("smtp-sink") or ""):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("smtp-sink not found: apt-get install postfix (see .ci/run)")


@dataclass
class DumpSink:
    """One smtp-sink on 127.0.0.1:port appending to ``dump``; extra args e.g. to refuse."""

    dump: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> DumpSink:
        self.dump.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dump.parent, 0o777)  # smtp-sink writes as nobody
        self.process = subprocess.Popen(
            [
                smtp_sink_binary(),
                "-u",
                "nobody",
                "-m",
                "1000",
                *self.extra,
                "-D",
                str(self.dump),
                f"127.0.0.1:{self.port}",
                "1000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not start on port {self.port}")

    def kill(self) -> None:
        """Die at once, as a crashed relay would (connections reset mid-transaction)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def deliveries(dump: Path) -> Iterator[tuple[str, str]]:
    """(recipient, Message-ID) of every transaction in a ``-D`` dump file."""
    if not dump.exists():
        return
    rcpt = message_id = None
    in_headers = False
    with dump.open("rb") as handle:
        for raw in handle:
            if raw.startswith(b"X-Client-Addr: "):
                if rcpt is not None:
                    yield rcpt, message_id or ""
                rcpt, message_id, in_headers = None, None, True
            elif in_headers and raw.startswith(b"X-Rcpt-Args: <"):
                rcpt = raw[14:].split(b">", 1)[0].decode().lower()
            elif in_headers and raw[:11].lower() == b"message-id:":
                message_id = raw[11:].strip().decode()
            elif in_headers and raw in (b"\n", b"\r\n"):
                in_headers = False
    if rcpt is not None:
        yield rcpt, message_id or ""


def tally(dumps: list[Path], expected: set[str]) -> dict[str, int]:
    """Delivered, duplicates (and whether they kept their Message-ID), missing."""
    counts: Counter[str] = Counter()
    ids: dict[str, set[str]] = {}
    for dump in dumps:
        for rcpt, message_id in deliveries(dump):
            counts[rcpt] += 1
            ids.setdefault(rcpt, set()).add(message_id)
    duplicated = [r for r, n in counts.items() if n > 1]
    return {
        "received": sum(counts.values()),
        "delivered": len(set(counts) & expected),
        "duplicates": sum(counts[r] - 1 for r in duplicated),
        "duplicates_with_another_message_id": sum(1 for r in duplicated if len(ids[r]) > 1),
        "missing": len(expected - set(counts)),
        "unexpected": len(set(counts) - expected),
    }
