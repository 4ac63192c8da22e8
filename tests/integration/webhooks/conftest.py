"""A real HTTP receiver on 127.0.0.1 that verifies every request with the independent
``standardwebhooks`` package and answers as a test scripts it (a status, or a stall
longer than the sender's timeout)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

STALL = "stall"  # answer 200, but only after the sender has given up
STALL_SECONDS = 1.5


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answer: int | str

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """Scripted by ``answers(webhook_id, attempt_number) -> status or STALL``."""

    url: str = ""
    secrets: list[str] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    answers: Callable[[str, int], int | str] = lambda _id, _n: 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: dict[str, str], body: bytes) -> int | str:
        webhook_id = headers.get("webhook-id", "")
        verified = False
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                continue
        with self.lock:
            number = 1 + sum(1 for r in self.requests if r.webhook_id == webhook_id)
            answer = self.answers(webhook_id, number)
            self.requests.append(Received(webhook_id, headers, body, verified, answer))
        return answer

    def delivered(self) -> list[Received]:
        """Requests answered 2xx in time: what the receiver really processed."""
        with self.lock:
            return [r for r in self.requests if isinstance(r.answer, int) and r.answer < 300]

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.delivered()
            if len(done) >= count:
                return done
            time.sleep(0.05)
        raise AssertionError(f"{len(self.delivered())} of {count} webhooks delivered")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = state.handle({k.lower(): v for k, v in self.headers.items()}, body)
            if answer == STALL:
                time.sleep(STALL_SECONDS)
                answer = 200
            assert isinstance(answer, int)
            reply = json.dumps({"ok": answer < 300}).encode()
            self.send_response(answer)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the sender may have given up (timeout)
                self.wfile.write(reply)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
