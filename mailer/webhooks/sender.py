"""One signed POST to a receiver, its outcome returned as a value.

Any answer is an outcome (2xx succeeded, anything else failed, 410 Gone asks us to stop);
a timeout, a refused connection or a target the policy refuses (``targets``: every
connection is checked and pinned to a checked address) is an outcome too, with no status.
Redirects are not followed: a receiver that moved says so with its new URL in the
subscription.  Nothing is taken from the environment (no proxy, no .netrc credentials).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpcore2
import httpx2

from mailer import __version__
from mailer.webhooks.targets import PinnedBackend, RefusedConnection, TargetPolicy

EXCERPT_CHARS = 500
_READ_LIMIT = 4096  # bytes of the answer read for the excerpt; the rest is discarded
USER_AGENT = f"mailer-webhooks/{__version__}"

_LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20)
_clients: dict[tuple[float, TargetPolicy], httpx2.Client] = {}
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


class _PinnedTransport(httpx2.HTTPTransport):
    """httpx's transport whose connections go through :class:`PinnedBackend`."""

    def __init__(self, policy: TargetPolicy) -> None:
        super().__init__(limits=_LIMITS)
        # HTTPTransport takes no network backend: replace its pool by one that has ours.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            network_backend=PinnedBackend(policy),
        )


def _client(timeout: float, policy: TargetPolicy) -> httpx2.Client:
    """One pooled client per timeout, policy and process (thread-safe; keeps connections
    warm: a kept connection was checked when it was opened)."""
    with _lock:
        client = _clients.get((timeout, policy))
        if client is None:
            client = _clients[timeout, policy] = httpx2.Client(
                transport=_PinnedTransport(policy),
                timeout=httpx2.Timeout(timeout),
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
                trust_env=False,
            )
        return client


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    policy: TargetPolicy | None = None,
) -> AttemptOutcome:
    """POST *body* to *url*, connecting only where *policy* (default: public addresses on
    the default ports) allows; never raises for what the network or the receiver does."""
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    try:
        with _client(timeout, policy or TargetPolicy()).stream(
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
        if isinstance(exc.__cause__, RefusedConnection):
            return AttemptOutcome(None, elapsed(), error=f"refused: {exc}"[:1000])
        detail = str(exc) or type(exc).__name__
        return AttemptOutcome(None, elapsed(), error=f"{type(exc).__name__}: {detail}"[:1000])
