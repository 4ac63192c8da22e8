"""A real SMSC for tests and benchmarks: ``tests/smsc/smsc.js`` (npm ``smpp``) on 127.0.0.1.

``Smsc`` starts the script on a free port (or a given one), talks to it over its stdin and
stdout (one JSON line per command and answer), and stops the process it started::

    with Smsc(system_id="mailer", password="secret", receipt_delay_ms=20) as smsc:
        settings = smsc.gateway_settings(name="smsc")  # SmsGatewaySettings for SmppGateway
        ...
        smsc.submitted()        # every submit_sm as received (addresses, UDH, payload hex)
        smsc.stats()            # counters: accepted, throttled, receipts_acked, ...

What the SMSC does is set with keyword arguments or :meth:`Smsc.configure` (see the script's
header): ``undeliverable``/``bad_bytes`` numbers, ``reject`` statuses, ``throttle_rate``,
``receipt_text_id`` ("same" or "decimal"), ``receipt_tlvs``, ``receipt_delay_ms``.
Inbound messages: :meth:`Smsc.send_mo`; any deliver_sm: :meth:`Smsc.deliver_raw`.

Needs ``node`` and ``tests/smsc/node_modules`` (``npm ci --prefix tests/smsc``);
:func:`smsc_missing` says what is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMSC_DIR = REPO / "tests" / "smsc"
SCRIPT = SMSC_DIR / "smsc.js"
NODE_MODULES = SMSC_DIR / "node_modules"


def smsc_missing() -> str | None:
    """Why the SMSC cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_MODULES / "smpp").is_dir():
        return f"{NODE_MODULES} is missing (npm ci --prefix tests/smsc)"
    return None


class SmscError(RuntimeError):
    pass


class Smsc:
    """The scripted SMSC process.  Keyword arguments configure it (see the module)."""

    def __init__(self, port: int = 0, **config: Any) -> None:
        self.port = port
        self.config: dict[str, Any] = {"system_id": "mailer", "password": "secret", **config}
        self._process: subprocess.Popen[str] | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self._condition = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self._write_lock = threading.Lock()

    # --- process --------------------------------------------------------------------------

    def start(self) -> Smsc:
        missing = smsc_missing()
        if missing:
            raise SmscError(missing)
        node = shutil.which("node")
        assert node is not None
        self._process = subprocess.Popen(
            [node, str(SCRIPT), "--port", str(self.port), "--config", json.dumps(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            cwd=SMSC_DIR,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        if not first:
            self._stderr.seek(0)
            raise SmscError(f"the SMSC did not start: {self._stderr.read()[-2000:]}")
        event = json.loads(first)
        if event.get("event") != "listening":
            raise SmscError(f"the SMSC did not start: {event}")
        self.port = int(event["port"])
        self._reader = threading.Thread(target=self._read, name="smsc-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("id") is None:
                continue
            with self._condition:
                self._answers[int(message["id"])] = message
                self._condition.notify_all()
        with self._condition:
            self._condition.notify_all()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()  # the script exits at the end of its input
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def restart(self, **config: Any) -> None:
        """Stop the process and start a new one on the same port (its state is lost)."""
        self.stop()
        self.config.update(config)
        self.start()

    def close(self) -> None:
        self.stop()
        self._stderr.close()

    def __enter__(self) -> Smsc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- commands -------------------------------------------------------------------------

    def command(self, cmd: str, timeout: float = 15.0, **args: Any) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None:
            raise SmscError("the SMSC is not running")
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, **args})
        with self._write_lock:
            process.stdin.write(line + "\n")
            process.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._condition:
            while request_id not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or process.poll() is not None:
                    raise SmscError(f"no answer from the SMSC to {cmd}")
                self._condition.wait(left)
            answer = self._answers.pop(request_id)
        if not answer.get("ok"):
            raise SmscError(f"{cmd}: {answer.get('error')}")
        return answer

    def configure(self, **config: Any) -> dict[str, Any]:
        self.config.update(config)
        return dict(self.command("configure", **config)["config"])

    def stats(self) -> dict[str, Any]:
        answer = self.command("stats")
        return {**answer["stats"], "bound": answer["bound"], "pending": answer["pending_receipts"]}

    def submitted(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.command("submitted", since=since)["submitted"])

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self.command("deliveries")["deliveries"])

    def clear(self) -> None:
        self.command("clear")

    def kick(self) -> int:
        """Drop every ESME connection without unbind."""
        return int(self.command("kick")["closed"])

    def send_mo(
        self,
        source: str,
        destination: str,
        *,
        text: str | None = None,
        parts: list[bytes] | None = None,
        ref_bits: int = 8,
        ref: int | None = None,
        data_coding: int = 0,
        order: list[int] | None = None,
        timeout: float = 15.0,
    ) -> list[int]:
        """Send an inbound message and wait for the ESME's answers: one ``deliver_sm`` for
        *text* (Latin-1 bytes: use GSM-7 basic letters), or one per payload of *parts*
        (with a UDH of *ref_bits*), in *order* (part indexes; leave one out to send an incomplete
        message).  Returns the final answer status of each part sent, in the order sent."""
        args: dict[str, Any] = {
            "source": source,
            "destination": destination,
            "ref_bits": ref_bits,
            "data_coding": data_coding,
        }
        if parts is not None:
            args["parts_hex"] = [part.hex() for part in parts]
        else:
            args["text"] = text or ""
        if ref is not None:
            args["ref"] = ref
        if order is not None:
            args["order"] = order
        return list(self.command("mo", timeout=timeout, **args)["statuses"])

    def deliver_raw(
        self,
        short_message: bytes,
        *,
        esm_class: int = 0,
        data_coding: int = 0,
        source: str = "51987000000",
        destination: str = "",
        tlvs: dict[str, Any] | None = None,
        timeout: float = 15.0,
    ) -> int:
        """Send any ``deliver_sm`` (TLVs by node-smpp name) and return the final answer."""
        answer = self.command(
            "deliver_raw",
            timeout=timeout,
            short_message_hex=short_message.hex(),
            esm_class=esm_class,
            data_coding=data_coding,
            source=source,
            destination=destination,
            tlvs=tlvs or {},
        )
        return int(answer["status"])

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Poll :meth:`stats` until *predicate* holds; return the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise SmscError(f"timed out waiting; stats: {stats}")
            time.sleep(0.05)

    def gateway_settings(self, **overrides: Any) -> Any:
        """``SmsGatewaySettings`` for an ``SmppGateway`` bound to this SMSC."""
        from mailer.core.config import SmsGatewaySettings

        values: dict[str, Any] = {
            "name": "smsc",
            "kind": "smpp",
            "host": "127.0.0.1",
            "port": self.port,
            "system_id": self.config["system_id"],
            "password": self.config["password"],
            "default_sender": "MAILER",
            "reconnect_min_seconds": 0.2,
            "reconnect_max_seconds": 2.0,
            "response_timeout_seconds": 10.0,
            "throttle_backoff_seconds": 0.1,
            **overrides,
        }
        return SmsGatewaySettings(**values)
