"""The HTTP gateway's pure parts: templates, dotted paths, and status webhooks to receipts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mailer.core.config import SmsGatewaySettings
from mailer.sms.http import HttpGateway, InvalidStatus, lookup, render_template
from mailer.sms.types import SmsOutbound


def gateway(**overrides: Any) -> HttpGateway:
    values: dict[str, Any] = {"name": "rest", "kind": "http", "http_url": "http://127.0.0.1:9/x"}
    return HttpGateway(SmsGatewaySettings(**{**values, **overrides}))


def test_lookup_follows_keys_and_indexes() -> None:
    data = {"messages": [{"id": "A1"}, {"id": "B2"}], "n": 0}
    assert lookup(data, "messages.0.id") == "A1"
    assert lookup(data, "messages.-1.id") == "B2"
    assert lookup(data, "messages.5.id") is None
    assert lookup(data, "missing.x") is None
    assert lookup(data, "n") == 0
    assert lookup(data, "") is data


def test_render_template_fills_placeholders_and_keeps_numbers() -> None:
    template = {"to": "{to_digits}", "msg": {"body": "{text}", "ref": "{ref}"}, "x": ["{nope}"]}
    values = {"to_digits": "51987654321", "text": 'Dijo "hola" {y}', "ref": 42}
    assert render_template(template, values) == {
        "to": "51987654321",
        "msg": {"body": 'Dijo "hola" {y}', "ref": 42},
        "x": ["{nope}"],
    }


def test_request_fields_of_a_message() -> None:
    fields = gateway(
        http_template={"destination": "+{to_digits}", "from": "{sender}", "parts": "{parts}"},
        default_sender="ENTIDAD",
    ).request_fields(SmsOutbound(1, "+51987654321", "", "a" * 161))
    assert fields == {"destination": "+51987654321", "from": "ENTIDAD", "parts": 2}


def test_parse_status_json_object() -> None:
    receipts = gateway(
        http_status_error_path="error.code", http_status_done_path="ts"
    ).parse_status(
        json.dumps(
            {"id": "0000AB", "status": "DELIVERED", "error": {"code": 0}, "ts": 1764000000}
        ).encode(),
        "application/json; charset=utf-8",
        {},
    )
    [receipt] = receipts
    assert (receipt.provider_id, receipt.state, receipt.final) == ("ab", "delivered", True)
    assert receipt.error == "0"
    assert receipt.gateway == "rest"
    assert receipt.done_at == datetime.fromtimestamp(1764000000, UTC)


def test_parse_status_list_at_a_path_with_a_custom_map() -> None:
    rest = gateway(
        http_status_items_path="data.statuses",
        http_status_id_path="messageId",
        http_status_state_path="state",
        http_status_map={"ok": "delivered", "ko": "undelivered", "wait": "enroute"},
        http_status_done_path="at",
    )
    body = {
        "data": {
            "statuses": [
                {"messageId": "m1", "state": "OK", "at": "2025-11-23T10:00:00Z"},
                {"messageId": "m2", "state": "ko"},
                {"messageId": "m3", "state": "wait"},
                {"messageId": "m4", "state": "strange"},
                {"state": "ok"},  # no id: skipped
            ]
        }
    }
    receipts = rest.parse_status(json.dumps(body).encode(), "application/json", {})
    assert [(r.provider_id, r.state, r.final) for r in receipts] == [
        ("m1", "delivered", True),
        ("m2", "undelivered", True),
        ("m3", "enroute", False),
        ("m4", "unknown", False),
    ]
    assert receipts[0].done_at == datetime(2025, 11, 23, 10, tzinfo=UTC)


def test_parse_status_form_and_query_string() -> None:
    rest = gateway(http_status_id_path="MessageSid", http_status_state_path="MessageStatus")
    form = rest.parse_status(
        b"MessageSid=SM123&MessageStatus=undelivered&ErrorCode=30003",
        "application/x-www-form-urlencoded",
        {},
    )
    assert [(r.provider_id, r.state) for r in form] == [("sm123", "undelivered")]
    query = rest.parse_status(b"", "", {"MessageSid": "SM9", "MessageStatus": "delivered"})
    assert [(r.provider_id, r.state) for r in query] == [("sm9", "delivered")]


def test_parse_status_refuses_a_body_it_cannot_read() -> None:
    with pytest.raises(InvalidStatus):
        gateway().parse_status(b"{not json", "application/json", {})
    with pytest.raises(InvalidStatus):
        gateway(http_status_items_path="items").parse_status(
            b'{"items": 3}', "application/json", {}
        )
