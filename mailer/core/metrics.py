"""Process-level Prometheus metrics shared by the interfaces."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "mailer_http_requests_total", "HTTP requests answered", ["surface", "status_class"]
)
HTTP_LATENCY = Histogram(
    "mailer_http_request_seconds",
    "HTTP request latency",
    ["surface"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
ERRORS = Counter("mailer_errors_total", "Unexpected errors", ["where"])
