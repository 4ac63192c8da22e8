"""The template studio: library, versions, check, previews by contact, test sends."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from mailer.accounts.service import create_user
from mailer.asgi import create_app
from mailer.audience.models import Contact
from mailer.content import store
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from tests.conftest import IN_CI
from tests.helpers import DOMAIN, Recorder, World, build_world, dkim_verifies, start_recording_relay

PASSWORD = "una clave larga 123"


@pytest.fixture
def relay(sqlite_settings: Settings, configure: object) -> Iterator[tuple[Settings, Recorder]]:
    capture, recorder = start_recording_relay()
    settings = configure(sqlite_settings.database_url, MAILER_RELAY__PORT=str(capture.port))  # type: ignore[operator]
    yield settings, recorder
    capture.stop()


@pytest.fixture
def world(relay: tuple[Settings, Recorder], tmp_path: Path) -> World:
    world = build_world(relay[0], tmp_path, 3)
    with session_scope() as session:
        for role in ("viewer", "editor", "manager"):
            create_user(session, world.account_id, f"{role}@example.pe", PASSWORD, role)
    return world


@pytest.fixture
def client(relay: tuple[Settings, Recorder], world: World) -> Iterator[TestClient]:
    with TestClient(create_app(relay[0])) as test_client:
        yield test_client


def login(client: TestClient, email_address: str) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post(
        "/login", data={"email": email_address, "password": PASSWORD, "csrf_token": token.group(1)}
    )
    after = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/templates").text)
    assert after
    return after.group(1)


def test_versions_are_kept_and_restored(relay: tuple[Settings, Recorder], world: World) -> None:
    with session_scope() as session:
        store.update_template(
            session,
            world.account_id,
            world.template_id,
            subject="Segunda",
            html="<p>dos</p>",
            saved_by="user:1",
        )
        store.update_template(
            session, world.account_id, world.template_id, subject="Segunda", html="<p>dos</p>"
        )  # no change: no new version
        restored = store.restore_version(session, world.account_id, world.template_id, 1)
        assert restored.version == 3 and "Aviso para" in restored.subject
        versions = store.list_versions(session, world.account_id, world.template_id)
        assert [v.version for v in versions] == [3, 2, 1]
        assert versions[0].note == "restaurada la versión 1"
        copy = store.duplicate_template(session, world.account_id, world.template_id)
        again = store.duplicate_template(session, world.account_id, world.template_id)
        assert (copy.name, again.name) == ("Aviso (copia)", "Aviso (copia 2)")


def test_gallery_library_and_editor(client: TestClient, world: World) -> None:
    token = login(client, "editor@example.pe")
    gallery = client.get("/templates")
    assert 'id="library"' in gallery.text and "/library/comunicado/preview" in gallery.text
    assert (
        client.get("/library/comunicado/preview")
        .headers["content-security-policy"]
        .startswith("sandbox")
    )
    created = client.post(
        "/library/comunicado/use", data={"csrf_token": token}, follow_redirects=False
    )
    assert created.status_code == 303
    editor = client.get(created.headers["location"])
    assert "Revisión" in editor.text and 'id="versions"' in editor.text
    # The demo template reads contact.ruc, which these contacts do not have.
    assert 'data-code="unknown_field"' in editor.text and "contact.ruc" in editor.text
    assert 'id="test-form"' not in editor.text  # an editor may not send


def test_preview_as_a_real_contact(client: TestClient, world: World) -> None:
    login(client, "viewer@example.pe")
    with session_scope() as session:
        contact = session.exec(
            select(Contact).where(Contact.email == "persona00001@example.pe")
        ).one()
    mine = client.get(f"/templates/{world.template_id}/preview?contact={contact.email}")
    assert "Hola Nombre1 de Empresa 1 S.A.C." in mine.text
    unknown = client.get(f"/templates/{world.template_id}/preview?contact=nadie@example.pe")
    assert unknown.status_code == 404 and "No hay ningún contacto" in unknown.text
    sample = client.get(f"/templates/{world.template_id}/preview?version=1")
    assert "Hola María" in sample.text


def test_send_a_test_through_the_normal_delivery_path(
    client: TestClient, world: World, relay: tuple[Settings, Recorder]
) -> None:
    settings, recorder = relay
    token = login(client, "manager@example.pe")
    response = client.post(
        f"/templates/{world.template_id}/test",
        data={
            "csrf_token": token,
            "addresses": "revisora@example.pe, reject-x@example.pe",
            "from_email": f"pruebas@{DOMAIN}",
            "from_name": "Pruebas",
            "contact": "persona00002@example.pe",
        },
    )
    assert "revisora@example.pe: enviada" in response.text
    assert "reject-x@example.pe: no enviada (550" in response.text
    assert len(recorder.messages) == 1
    data = recorder.messages[0][2]
    assert dkim_verifies(settings, data)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == "[PRUEBA] Aviso para Nombre2 ñandú"
    assert "Hola Nombre2" in message.get_body(("html",)).get_content()
    with session_scope() as session:
        rows = session.exec(select(Message).where(Message.campaign_id.is_(None))).all()  # type: ignore[union-attr]
        assert sorted(r.state for r in rows) == ["failed", "sent"]
        assert all(r.contact_id is None for r in rows)  # its unsubscribe link touches no one


def test_api_check_versions_and_test(
    client: TestClient, world: World, relay: tuple[Settings, Recorder]
) -> None:
    auth = {"Authorization": f"Bearer {world.api_key}"}
    check = client.get(f"/api/v1/templates/{world.template_id}/check", headers=auth).json()
    assert check["findings"][0]["code"] == "no_preheader"
    assert check["findings"][0]["message"].startswith("no hay preencabezado")
    put = client.put(
        f"/api/v1/templates/{world.template_id}",
        json={"name": "Aviso", "subject": "Nuevo", "html": "<p>Nuevo {{ unsubscribe_url }}</p>"},
        headers=auth,
    )
    assert put.json()["version"] == 2
    versions = client.get(f"/api/v1/templates/{world.template_id}/versions", headers=auth).json()
    assert [v["version"] for v in versions] == [2, 1]
    restored = client.post(
        f"/api/v1/templates/{world.template_id}/versions/1/restore", headers=auth
    ).json()
    assert restored["version"] == 3 and restored["subject"].startswith("Aviso para")
    sent = client.post(
        f"/api/v1/templates/{world.template_id}/test",
        json={"addresses": ["a@example.pe"], "from_email": f"x@{DOMAIN}"},
        headers=auth,
    ).json()
    assert sent == [{"address": "a@example.pe", "state": "sent", "reply": sent[0]["reply"]}]
    library = client.get("/api/v1/library", headers=auth).json()
    assert "comunicado" in {item["key"] for item in library}
    used = client.post("/api/v1/library/comunicado/use", headers=auth)
    assert used.status_code == 201 and used.json()["version"] == 1
    assert client.post("/api/v1/library/nope/use", headers=auth).status_code == 404


def test_gallery_thumbnails_are_real_screenshots(client: TestClient, world: World) -> None:
    if not Path("/usr/bin/chromium").exists():
        if IN_CI:
            pytest.fail("Chromium is required under CI=true")
        pytest.skip("Chromium is not installed")
    login(client, "viewer@example.pe")
    first = client.get(f"/templates/{world.template_id}/thumbnail.png")
    assert first.headers["content-type"] == "image/png"
    assert first.content.startswith(b"\x89PNG")
    again = client.get(f"/templates/{world.template_id}/thumbnail.png")
    assert again.content == first.content  # from the cache
    library = client.get("/library/boletin/thumbnail.png")
    assert library.headers["content-type"] == "image/png"


def test_the_campaign_page_shows_the_check_before_sending(client: TestClient, world: World) -> None:
    login(client, "manager@example.pe")
    page = client.get(f"/campaigns/{world.campaign_id}")
    assert 'id="findings"' in page.text and 'data-code="no_preheader"' in page.text


def test_live_preview_renders_what_is_typed(client: TestClient, world: World) -> None:
    token = login(client, "editor@example.pe")
    response = client.post(
        "/templates/live-preview",
        data={"csrf_token": token, "subject": "x", "html": "<p>Hola {{ contact.first_name }}</p>"},
    )
    assert response.status_code == 200 and "Hola María" in response.text
    assert response.headers["content-security-policy"].startswith("sandbox")
    broken = client.post(
        "/templates/live-preview", data={"csrf_token": token, "subject": "x", "html": "{% if %}"}
    )
    assert broken.status_code == 422 and "línea 1" in broken.text
    assert client.post("/templates/live-preview", data={"html": "<p>"}).status_code == 403
