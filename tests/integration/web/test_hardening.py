"""Hostile and broken input against the HTTP surfaces: nothing leaks, nothing crashes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mailer.accounts.service import create_account, create_user
from mailer.asgi import create_app
from mailer.content.store import create_template
from mailer.core.config import Settings
from mailer.delivery.service import CaptureStore
from mailer.storage.db import session_scope
from tests.helpers import World, build_world

PASSWORD = "una clave larga 123"


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    world = build_world(sqlite_settings, tmp_path, 2)
    with session_scope() as session:
        create_user(session, world.account_id, "editor@example.pe", PASSWORD, "editor")
        other = create_account(session, "Otra entidad")
        assert other.id
        create_user(session, other.id, "otra@example.pe", PASSWORD, "admin")
    return world


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def login(client: TestClient, email: str) -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    response = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303


def test_preview_errors_are_escaped_and_sandboxed(client: TestClient, world: World) -> None:
    with session_scope() as session:
        template = create_template(
            session,
            world.account_id,
            name="Trampa",
            subject="x",
            html='<p>{{ "x".encode("<img src=x onerror=alert(1)>") }}</p>',
        )
    login(client, "editor@example.pe")
    response = client.get(f"/templates/{template.id}/preview")
    assert response.status_code == 422
    assert "<img" not in response.text and "&lt;img" in response.text
    assert response.headers["content-security-policy"].startswith("sandbox")


def test_captured_mail_stays_in_its_account(
    client: TestClient, world: World, sqlite_settings: Settings
) -> None:
    store = CaptureStore(sqlite_settings)
    message = f"X-Mailer-Account: {world.account_id}\r\nSubject: Secreto\r\n\r\n<p>cuerpo</p>\r\n"
    store("boletin@example.pe", ["a@example.pe"], message.encode())
    store("otro@example.pe", ["b@example.pe"], b"Subject: Sin cuenta\r\n\r\nhola\r\n")
    assert store.flush() == 2
    login(client, "otra@example.pe")  # an admin of another account
    listing = client.get("/captured")
    assert "Secreto" not in listing.text and "Sin cuenta" not in listing.text
    assert client.get("/captured/1").status_code == 404
    assert client.get("/captured/1/html").status_code == 404
    client.cookies.clear()
    login(client, "editor@example.pe")  # the account that sent it
    listing = client.get("/captured")
    assert "Secreto" in listing.text and "Sin cuenta" not in listing.text


@pytest.mark.parametrize(
    "path",
    [
        "/lists/1?page=100000000000000000000",
        "/captured?page=-3",
        "/campaigns/99999999999999",
        "/lists/abc",
        "/templates/0",
    ],
)
def test_out_of_range_addresses_answer_cleanly(client: TestClient, path: str) -> None:
    login(client, "editor@example.pe")
    response = client.get(path)
    assert response.status_code in {400, 404, 422}
    assert "text/html" in response.headers["content-type"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/campaigns/99999999999999",
        "/api/v1/lists/1/contacts?limit=-1",
        "/api/v1/lists/1/contacts?offset=-5",
    ],
)
def test_out_of_range_api_parameters_are_refused(
    client: TestClient, world: World, path: str
) -> None:
    response = client.get(path, headers={"Authorization": f"Bearer {world.api_key}"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_failed"


def test_a_letter_where_a_number_goes_gets_a_page_not_json(client: TestClient) -> None:
    login(client, "editor@example.pe")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/campaigns/new").text)
    assert token
    response = client.post(
        "/campaigns/new", data={"csrf_token": token.group(1), "template_id": "uno", "list_id": "x"}
    )
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"] and "no es válido" in response.text


def test_renaming_a_template_onto_another_is_refused(client: TestClient, world: World) -> None:
    with session_scope() as session:
        other = create_template(session, world.account_id, name="Otra", subject="s", html="<p>")
    login(client, "editor@example.pe")
    token = re.search(
        r'name="csrf_token" value="([^"]+)"', client.get(f"/templates/{other.id}").text
    )
    assert token
    response = client.post(
        f"/templates/{other.id}",
        data={"csrf_token": token.group(1), "name": "Aviso", "subject": "s", "html": "<p>"},
    )
    assert (
        response.status_code == 422 and "ya existe una plantilla llamada «Aviso»" in response.text
    )


def test_a_csv_with_a_quote_never_closed_imports_what_it_can(
    client: TestClient, world: World
) -> None:
    csv = 'email,nombre\nuno@example.pe,Uno\ndos@example.pe,"Dos\n' + "x" * 200_000 + "\n"
    response = client.post(
        f"/api/v1/lists/{world.list_id}/import",
        files={"file": ("roto.csv", csv.encode(), "text/csv")},
        headers={"Authorization": f"Bearer {world.api_key}"},
    )
    assert response.status_code == 200
    report = response.json()
    assert report["created"] == 1
    assert report["errors"][-1]["line"] >= 3
    assert "no se puede leer" in report["errors"][-1]["reason"]


def test_metrics_only_for_this_machine_or_the_token(sqlite_settings: Settings) -> None:
    with TestClient(create_app(sqlite_settings), client=("203.0.113.9", 5000)) as remote:
        assert remote.get("/metrics").status_code == 403
    secured = sqlite_settings.model_copy(update={"metrics_token": "s3cr3t"})
    with TestClient(create_app(secured)) as local:
        assert local.get("/metrics").status_code == 403
        ok = local.get("/metrics", headers={"Authorization": "Bearer s3cr3t"})
        assert ok.status_code == 200 and "mailer_messages" in ok.text
