"""One signed POST to a receiver, its outcome returned as a value.

Any answer is an outcome (2xx succeeded, anything else failed, 410 Gone asks us to stop);
a timeout or a refused connection is an outcome too, with no status.  Redirects are not
followed: a receiver that moved says so with its new URL in the subscription.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx2

from mailer import __version__

EXCERPT_CHARS = 500
_READ_LIMIT = 4096  # bytes of the answer read for the excerpt; the rest is discarded
USER_AGENT = f"mailer-webhooks/{__version__}"

_clients: dict[float, httpx2.Client] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    status_code: int | None
    duration_ms: int
    response_excerpt: str = ""
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks never to be called again."""
        return self.status_code == 410


def _client(timeout: float) -> httpx2.Client:
    """One pooled client per timeout and process (thread-safe; keeps connections warm)."""
    with _lock:
        client = _clients.get(timeout)
        if client is None:
            client = _clients[timeout] = httpx2.Client(
                timeout=httpx2.Timeout(timeout),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
            )
        return client


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> AttemptOutcome:
    """POST *body* to *url*; never raises for what the network or the receiver does."""
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        with _client(timeout).stream(
            "POST", url, content=body, headers={**headers, "content-type": "application/json"}
        ) as response:
            received = b""
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) >= _READ_LIMIT:
                    break
            excerpt = received[:_READ_LIMIT].decode("utf-8", "replace")[:EXCERPT_CHARS]
            return AttemptOutcome(response.status_code, elapsed(), excerpt)
    except httpx2.TimeoutException:
        return AttemptOutcome(None, elapsed(), error=f"timeout after {timeout:g} s")
    except (httpx2.HTTPError, httpx2.InvalidURL, httpx2.StreamError) as exc:
        detail = str(exc) or type(exc).__name__
        return AttemptOutcome(None, elapsed(), error=f"{type(exc).__name__}: {detail}"[:1000])
