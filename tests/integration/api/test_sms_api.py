"""The SMS routes of the API: send to numbers (202 with ids, rejected numbers reported),
look up one SMS until its receipt settles it, count parts, allowance balances, an SMS
campaign to a list, and the status callback of an HTTP provider (signed URL)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from fastapi.testclient import TestClient

from mailer.accounts import credits
from mailer.api.sms import status_webhook_url
from mailer.asgi import create_app
from mailer.audience.service import find_contact, update_contact
from mailer.campaigns import sms
from mailer.core.config import Settings
from mailer.messages.models import SmsPart
from mailer.storage.db import session_scope
from mailer.workers import start_worker
from tests.helpers import World, build_world


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[World]:
    built = build_world(settings, tmp_path, 1)
    with session_scope(settings) as session:
        credits.grant(session, built.account_id, "sms", 1_000)
    worker = start_worker(dramatiq.get_broker(), 2)  # sends what the API queues
    try:
        yield built
    finally:
        worker.stop()
        sms.close_gateway_loop()


def auth(world: World) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.api_key}"}


def wait_for_state(client: TestClient, world: World, message_id: int, state: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 15
    while True:
        body = client.get(f"/api/v1/sms/{message_id}", headers=auth(world)).json()
        if body["state"] == state or time.monotonic() > deadline:
            return body  # type: ignore[no-any-return]
        time.sleep(0.1)


def test_send_sms_to_numbers_and_follow_them_to_delivered(settings: Settings, world: World) -> None:
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/api/v1/sms",
            headers=auth(world),
            json={
                "to": ["987654321", "987650000", "01 4261234"],
                "text": "Su orden {{ orden }} vence el 30/11.",
                "variables": {"orden": "OC-118"},
            },
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert [m["to"] for m in body["messages"]] == ["+51987654321", "+51987650000"]
        assert body["rejected"][0]["index"] == 2 and "mobile" in body["rejected"][0]["reason"]
        assert body["parts"] == 2
        delivered = wait_for_state(client, world, body["messages"][0]["id"], "delivered")
        assert delivered["state"] == "delivered", delivered
        assert delivered["text"] == "Su orden OC-118 vence el 30/11."
        assert delivered["origin"].startswith("apikey:")
        assert delivered["part_states"][0]["state"] == "delivered"
        failed = wait_for_state(client, world, body["messages"][1]["id"], "undelivered")
        assert failed["state"] == "undelivered"
        [balance] = client.get("/api/v1/credits", headers=auth(world)).json()
        assert (balance["channel"], balance["available"], balance["held"]) == ("sms", 999, 0)


def test_bad_requests_get_clear_errors(settings: Settings, world: World) -> None:
    with TestClient(create_app(settings)) as client:
        both = client.post(
            "/api/v1/sms", headers=auth(world), json={"to": "987654321", "list_id": 1, "text": "x"}
        )
        assert both.status_code == 422 and both.json()["error"]["field"] == "to"
        broken = client.post(
            "/api/v1/sms", headers=auth(world), json={"to": "987654321", "text": "{{ x"}
        )
        assert broken.status_code == 422 and broken.json()["error"]["code"] == "template_error"
        nobody = client.post("/api/v1/sms", headers=auth(world), json={"to": "12", "text": "x"})
        assert nobody.status_code == 422 and nobody.json()["error"]["field"] == "to[0]"
        too_much = client.post(
            "/api/v1/sms",
            headers=auth(world),
            json={"to": "987654321", "text": "á" * 70 * 20},
        )
        assert too_much.status_code in (409, 422), too_much.text


def test_count_parts(settings: Settings, world: World) -> None:
    with TestClient(create_app(settings)) as client:
        counted = client.post(
            "/api/v1/sms/count",
            headers=auth(world),
            json={"text": "Canción: ¿Qué tal, señor Núñez?"},
        ).json()
        assert (counted["encoding"], counted["parts"]) == ("ucs2", 1)
        assert counted["normalised"] == "Cancion: ¿Qué tal, señor Nuñez?"  # é ñ ¿ are GSM-7
        assert counted["ucs2_chars"] == ["ó", "ú"]
        assert counted["normalised_parts"] == 1


def test_an_sms_campaign_to_a_list_through_the_api(settings: Settings, world: World) -> None:
    with session_scope(settings) as session:
        person = find_contact(session, world.account_id, "persona00000@example.pe")
        assert person is not None and person.id is not None
        update_contact(session, world.account_id, person.id, phone="987654321")
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/api/v1/sms",
            headers=auth(world),
            json={"list_id": world.list_id, "name": "Aviso", "text": "Hola {{ contact.nombre }}"},
        )
        assert answer.status_code == 202, answer.text
        campaign_id = answer.json()["campaign_id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            figures = client.get(
                f"/api/v1/sms/campaigns/{campaign_id}/stats", headers=auth(world)
            ).json()
            if figures["delivered"] == 1:
                break
            time.sleep(0.1)
        assert figures["recipients"] == 1 and figures["delivered"] == 1, figures
        campaign = client.get(f"/api/v1/campaigns/{campaign_id}", headers=auth(world)).json()
        assert campaign["channel"] == "sms" and campaign["template_id"] is None


def test_an_http_providers_status_callback_settles_its_messages(
    configure: object, tmp_path: Path
) -> None:
    gateway = {
        "name": "aggregator",
        "kind": "http",
        "http_url": "http://127.0.0.1:9/never-called",
        "http_status_id_path": "messageId",
        "http_status_state_path": "status",
    }
    settings: Settings = configure(  # type: ignore[operator]
        None, MAILER_SMS_GATEWAYS=json.dumps([gateway]), MAILER_SMS__GATEWAY="aggregator"
    )
    world = build_world(settings, tmp_path, 1)
    with session_scope(settings) as session:
        queued = sms.queue_sms(session, world.account_id, ["987654321"], "Hola")
        [row] = queued.messages
        message_id = row.id
        assert message_id is not None
        # As if the provider had accepted it with id "AB12".
        row.state, row.relay = "sent", "aggregator"
        session.add(SmsPart(message_id=message_id, gateway="aggregator", provider_id="ab12"))
    url = status_webhook_url(settings.base_url, settings.secret_key, "aggregator")
    path = url.split("127.0.0.1:8000", 1)[1] if "127.0.0.1:8000" in url else url
    with TestClient(create_app(settings)) as client:
        forged = client.post(path[:-3] + "xyz", json={"messageId": "AB12", "status": "DELIVRD"})
        assert forged.status_code == 404
        answer = client.post(path, json={"messageId": "AB12", "status": "DELIVRD"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["delivered"] == 1
        body = client.get(f"/api/v1/sms/{message_id}", headers=auth(world)).json()
        assert body["state"] == "delivered"
