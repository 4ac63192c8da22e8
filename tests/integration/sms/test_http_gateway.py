"""HttpGateway against a real HTTP server on 127.0.0.1 (the standard library's, in a thread):
requests as sent (JSON, form, query; bearer, basic, header auth), answers classified."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from mailer.core.config import SmsGatewaySettings
from mailer.sms.http import HttpGateway
from mailer.sms.types import SmsOutbound
from tests.conftest import free_port
from tests.integration.sms.conftest import Running


class Provider:
    """A pretend SMS provider: answers by destination number (see ``answer``)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counter = 0
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                provider.handle(self)

            do_GET = do_POST
            do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/sms"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        content_type = request.headers.get("Content-Type", "")
        query = dict(parse_qsl(urlsplit(request.path).query))
        if "json" in content_type:
            fields = json.loads(raw)
        elif raw:
            fields = dict(parse_qsl(raw.decode()))
        else:
            fields = query
        with self._lock:
            self.counter += 1
            number = self.counter
            self.requests.append(
                {
                    "method": request.command,
                    "path": urlsplit(request.path).path,
                    "headers": dict(request.headers),
                    "fields": fields,
                }
            )
        status, body, headers = self.answer(fields, number)
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        data = json.dumps(body).encode()
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def answer(self, fields: dict[str, Any], number: int) -> tuple[int, Any, dict[str, str]]:
        to = str(fields.get("to") or fields.get("destination") or "")
        if to.endswith("429"):
            return 429, {"error": "slow down"}, {"Retry-After": "7"}
        if to.endswith("503"):
            return 503, {"error": "maintenance"}, {}
        if to.endswith("400"):
            return 400, {"error": "bad number"}, {}
        if to.endswith("222"):
            return 200, {"status": "error", "reason": "blacklisted"}, {}
        return 200, {"messages": [{"id": f"00MSG{number:04X}", "to": to}]}, {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    server = Provider()
    yield server
    server.close()


@pytest.fixture
def http(provider: Provider, run_gateway: Callable[..., Running]) -> Callable[..., Running]:
    def make(**overrides: Any) -> Running:
        values: dict[str, Any] = {
            "name": "rest",
            "kind": "http",
            "http_url": provider.url,
            "http_id_path": "messages.0.id",
            "http_rejected_body": r'"status":\s*"error"',
            "max_retries": 1,
            "reconnect_min_seconds": 0.05,
            "response_timeout_seconds": 5,
            **overrides,
        }
        return run_gateway(HttpGateway(SmsGatewaySettings(**values)))

    return make


def sms(ref: int, to: str, text: str = "Hola") -> SmsOutbound:
    return SmsOutbound(ref=ref, to=to, sender="ENTIDAD", text=text)


def test_json_body_with_a_bearer_token(provider: Provider, http: Callable[..., Running]) -> None:
    gateway = http(
        http_auth="bearer",
        http_token="t0k3n",
        http_headers={"X-Account": "muni"},
        http_template={"to": "{to}", "from": "{sender}", "text": "{text}", "ref": "{ref}"},
    )
    [result] = gateway.submit([sms(5, "+51987000001", "Canción ñandú " * 6)])
    assert result.status == "submitted"
    assert result.provider_ids == ("msg0001",)
    assert result.parts == 2 and result.code == 200
    [request] = provider.requests
    assert request["method"] == "POST" and request["path"] == "/v1/sms"
    assert request["headers"]["Authorization"] == "Bearer t0k3n"
    assert request["headers"]["X-Account"] == "muni"
    assert request["fields"] == {
        "to": "+51987000001",
        "from": "ENTIDAD",
        "text": "Canción ñandú " * 6,
        "ref": 5,
    }


def test_form_body_with_basic_auth(provider: Provider, http: Callable[..., Running]) -> None:
    gateway = http(
        http_body="form",
        http_auth="basic",
        http_username="entidad",
        http_token="clave",
        http_template={"destination": "{to_digits}", "message": "{text}"},
    )
    [result] = gateway.submit([sms(1, "+51987000001")])
    assert result.status == "submitted"
    [request] = provider.requests
    expected = base64.b64encode(b"entidad:clave").decode()
    assert request["headers"]["Authorization"] == f"Basic {expected}"
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert request["fields"] == {"destination": "51987000001", "message": "Hola"}


def test_query_string_get_with_a_header_key(
    provider: Provider, http: Callable[..., Running]
) -> None:
    gateway = http(
        http_method="GET",
        http_body="query",
        http_auth="header",
        http_header_name="X-Api-Key",
        http_token="k3y",
        http_template={"to": "{to}", "text": "{text}"},
    )
    [result] = gateway.submit([sms(1, "+51987000001")])
    assert result.status == "submitted"
    [request] = provider.requests
    assert request["method"] == "GET"
    assert request["headers"]["X-Api-Key"] == "k3y"
    assert request["fields"] == {"to": "+51987000001", "text": "Hola"}


def test_answers_are_classified(provider: Provider, http: Callable[..., Running]) -> None:
    gateway = http()
    results = gateway.submit(
        [
            sms(1, "+51987000001"),
            sms(2, "+51987000429"),
            sms(3, "+51987000503"),
            sms(4, "+51987000400"),
            sms(5, "+51987000222"),
            sms(6, "+51987000001", ""),
        ]
    )
    assert [(r.ref, r.status, r.code) for r in results] == [
        (1, "submitted", 200),
        (2, "deferred", 429),
        (3, "deferred", 503),
        (4, "rejected", 400),
        (5, "rejected", 200),
        (6, "rejected", None),
    ]
    assert results[1].retry_after == 7.0
    assert "blacklisted" in results[4].text


def test_an_unreachable_provider_defers_after_retries(
    run_gateway: Callable[..., Running],
) -> None:
    settings = SmsGatewaySettings(
        name="down",
        kind="http",
        http_url=f"http://127.0.0.1:{free_port()}/sms",
        max_retries=2,
        reconnect_min_seconds=0.01,
    )
    gateway = run_gateway(HttpGateway(settings))
    [result] = gateway.submit([sms(1, "+51987000001")])
    assert result.status == "deferred"
    assert result.code is None and "ConnectError" in result.text


def test_status_webhooks_reach_the_receipt_callback(http: Callable[..., Running]) -> None:
    gateway = http(http_status_id_path="id", http_status_state_path="status")
    rest = gateway.gateway
    assert isinstance(rest, HttpGateway)
    body = json.dumps([{"id": "00MSG0001", "status": "delivered"}]).encode()
    receipts = gateway.loop.run(rest.handle_status(body, "application/json", {}))
    assert [(r.provider_id, r.state) for r in receipts] == [("msg0001", "delivered")]
    assert gateway.collected.wait_receipts(1)[0].provider_id == "msg0001"
