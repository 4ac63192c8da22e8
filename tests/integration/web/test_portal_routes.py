"""Portal pages over HTTP: login, CSRF, role checks, captured mail, one-click unsubscribe."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from mailer.accounts.service import create_user
from mailer.asgi import create_app
from mailer.audience.models import Contact
from mailer.campaigns import pipeline
from mailer.campaigns.service import start_campaign
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.messages.service import pending_ids
from mailer.storage.db import session_scope
from mailer.tracking.service import unsubscribe_url
from mailer.workers import start_worker
from tests.helpers import World, build_world, start_recording_relay

PASSWORD = "una clave larga 123"


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> World:
    world = build_world(sqlite_settings, tmp_path, 3)
    with session_scope() as session:
        for role in ("viewer", "editor", "manager"):
            create_user(session, world.account_id, f"{role}@example.pe", PASSWORD, role)
    return world


@pytest.fixture
def client(sqlite_settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def csrf(client: TestClient, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: TestClient, email: str, password: str = PASSWORD) -> None:
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def test_login_wrong_password_and_csrf(client: TestClient, world: World) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    wrong = client.post(
        "/login",
        data={"email": world.admin_email, "password": "nope nope nope", "csrf_token": csrf(client)},
    )
    assert wrong.status_code == 401 and "Correo o contraseña incorrectos" in wrong.text
    forged = client.post(
        "/login", data={"email": world.admin_email, "password": world.admin_password}
    )
    assert forged.status_code == 403 and "CSRF" in forged.text
    login(client, world.admin_email, world.admin_password)
    dashboard = client.get("/")
    assert dashboard.status_code == 200 and "Campaña de prueba" in dashboard.text
    cookie = client.cookies.get("mailer_session")
    assert cookie and PASSWORD not in cookie


@pytest.mark.parametrize(
    ("role", "may_edit", "may_send"),
    [("viewer", False, False), ("editor", True, False), ("manager", True, True)],
)
def test_pages_enforce_roles(
    client: TestClient, world: World, role: str, may_edit: bool, may_send: bool
) -> None:
    login(client, f"{role}@example.pe")
    for path in (
        "/",
        "/lists",
        f"/lists/{world.list_id}",
        "/templates",
        f"/templates/{world.template_id}",
        f"/campaigns/{world.campaign_id}",
        "/captured",
    ):
        assert client.get(path).status_code == 200, path
    assert (client.get("/campaigns/new").status_code == 200) is may_edit
    assert (client.get("/templates/new").status_code == 200) is may_edit
    token = csrf(client, "/")
    created = client.post(
        "/lists", data={"name": f"Lista {role}", "csrf_token": token}, follow_redirects=False
    )
    assert (created.status_code == 303) is may_edit
    send = client.post(
        f"/campaigns/{world.campaign_id}/pause", data={"csrf_token": token}, follow_redirects=False
    )
    # Pausing a draft is refused by the state machine, after the role check.
    assert send.status_code == (303 if may_send else 403)


def test_template_with_syntax_error_is_refused_with_its_line(
    client: TestClient, world: World
) -> None:
    login(client, "editor@example.pe")
    response = client.post(
        "/templates/new",
        data={
            "name": "Rota",
            "subject": "Hola",
            "html": "<p>uno</p>\n<p>{{ contact.first_name </p>",
            "csrf_token": csrf(client, "/templates/new"),
        },
    )
    assert response.status_code == 422
    assert 'id="template-error"' in response.text and "HTML, línea 2" in response.text


def test_send_from_portal_and_read_captured_mail(
    client: TestClient, world: World, sqlite_settings: Settings, configure: object
) -> None:
    relay, recorder = start_recording_relay()
    try:
        login(client, "manager@example.pe")
        with session_scope() as session:
            start_campaign(session, world.account_id, world.campaign_id)
        with session_scope() as session:
            ids = pending_ids(session, world.campaign_id)
        settings = sqlite_settings.model_copy(
            update={"relay": sqlite_settings.relay.model_copy(update={"port": relay.port})}
        )
        pipeline.send_batch(world.campaign_id, ids, settings=settings)
    finally:
        relay.stop()
    assert len(recorder.messages) == 3
    page = client.get(f"/campaigns/{world.campaign_id}")
    assert 'id="count-sent">3<' in page.text and "Completada" in page.text


def test_one_click_unsubscribe(client: TestClient, world: World, sqlite_settings: Settings) -> None:
    with session_scope() as session:
        start_campaign(session, world.account_id, world.campaign_id)
    with session_scope() as session:
        message = session.exec(
            select(Message).where(Message.campaign_id == world.campaign_id)
        ).first()
        assert message and message.id
        url = unsubscribe_url("http://testserver", sqlite_settings.secret_key, message.id)
    path = url.removeprefix("http://testserver")
    assert "Darse de baja" in client.get(path).text
    response = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    with session_scope() as session:
        contact = session.get(Contact, message.contact_id)
        assert contact and contact.email_status == "unsubscribed"
    assert "Baja confirmada" in client.get(path).text
    assert client.post(path[:-3] + "AAA", data={"List-Unsubscribe": "One-Click"}).status_code == 404


def test_schedule_in_the_account_time_zone(client: TestClient, world: World) -> None:
    login(client, "manager@example.pe")
    token = csrf(client, f"/campaigns/{world.campaign_id}")
    response = client.post(
        f"/campaigns/{world.campaign_id}/schedule",
        data={"scheduled_at": "2099-03-01T09:30", "csrf_token": token},
    )
    assert "01/03/2099 09:30 (America/Lima)" in response.text
    from mailer.campaigns.service import get_campaign

    with session_scope() as session:
        campaign = get_campaign(session, world.account_id, world.campaign_id)
        assert campaign.state == "scheduled"
        assert campaign.scheduled_at and campaign.scheduled_at.hour == 14  # Lima is UTC-5
    back = client.post(f"/campaigns/{world.campaign_id}/unschedule", data={"csrf_token": token})
    assert "vuelve a borrador" in back.text
    past = client.post(
        f"/campaigns/{world.campaign_id}/schedule",
        data={"scheduled_at": "2001-01-01T00:00", "csrf_token": token},
    )
    assert "la fecha programada ya pasó" in past.text


def test_import_report_in_spanish_and_downloadable(client: TestClient, world: World) -> None:
    """The list page's import form: columns mapped, the import queued, run by a worker, and
    its report with the rejected rows in Spanish, downloadable for Excel."""
    login(client, "editor@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    csv = (
        "correo;nombre\nbueno@example.pe;Bueno\nsin-arroba;Malo\n"
        "malo@@example.pe;Peor\nx@y.pe;A;B\n"
    )
    mapping = client.post(
        f"/lists/{world.list_id}/import",
        data={"csrf_token": token, "mode": "add_or_update"},
        files={"file": ("proveedores.csv", csv.encode("cp1252"), "text/csv")},
    )
    assert mapping.status_code == 200
    assert f'action="/lists/{world.list_id}/import/confirm"' in mapping.text
    stored = re.search(r'name="upload" value="([^"]+)"', mapping.text)
    assert stored
    queued = client.post(
        f"/lists/{world.list_id}/import/confirm",
        data={
            "csrf_token": token,
            "upload": stored.group(1),
            "filename": "proveedores.csv",
            "mode": "add_or_update",
            "column": ["email", "first_name"],
        },
        follow_redirects=False,
    )
    assert queued.status_code == 303
    broker = dramatiq.get_broker()
    worker = start_worker(broker, 1)
    try:
        broker.join("audience", timeout=30_000, fail_fast=True)  # type: ignore[attr-defined]
        worker.join()
    finally:
        worker.stop()
    report = client.get(queued.headers["location"])
    assert report.status_code == 200
    assert "Falta la @ en la dirección." in report.text
    assert "la fila tiene 3 columnas y el encabezado 2" in report.text
    link = re.search(r'href="(/imports/\d+/errors\.csv)"', report.text)
    assert link
    download = client.get(link.group(1))
    assert download.headers["content-type"].startswith("text/csv")
    body = download.content.decode("utf-8-sig").splitlines()
    assert body[0] == "línea,columna,valor,motivo"
    assert body[1].startswith("3,correo,sin-arroba,Falta la @")
    assert len(body) == 4


def test_logout_ends_every_copy_of_the_session(
    client: TestClient, world: World, sqlite_settings: Settings
) -> None:
    login(client, "viewer@example.pe")
    stolen = dict(client.cookies)
    assert client.get("/", follow_redirects=False).status_code == 200
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    with TestClient(create_app(sqlite_settings), cookies=stolen) as thief:
        assert thief.get("/", follow_redirects=False).headers["location"] == "/login"


def test_a_new_password_ends_open_sessions(
    client: TestClient, world: World, sqlite_settings: Settings
) -> None:
    from mailer.accounts.service import set_password

    login(client, "viewer@example.pe")
    with session_scope() as session:
        set_password(session, "viewer@example.pe", "otra clave larga 456")
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_progress_guard_reason_and_resend_to_failed_in_the_portal(
    client: TestClient, world: World, sqlite_settings: Settings
) -> None:
    from mailer.audience.service import add_contact
    from mailer.campaigns.service import check_reputation, get_campaign

    relay, _recorder = start_recording_relay()
    try:
        login(client, "manager@example.pe")
        with session_scope() as session:
            for i in range(2):
                add_contact(
                    session, world.account_id, f"reject-{i}@example.pe", list_id=world.list_id
                )
            start_campaign(session, world.account_id, world.campaign_id)
        with session_scope() as session:
            ids = pending_ids(session, world.campaign_id)
        settings = sqlite_settings.model_copy(
            update={
                "relay": sqlite_settings.relay.model_copy(update={"port": relay.port}),
                "delivery": sqlite_settings.delivery.model_copy(
                    update={"guard_min_sample": 1000}  # judged below, after the send
                ),
            }
        )
        pipeline.send_batch(world.campaign_id, ids[:4], settings=settings)  # one bounces
    finally:
        relay.stop()
    page = client.get(f"/campaigns/{world.campaign_id}")
    assert 'id="live-progress"' in page.text and "Tiempo estimado" in page.text
    # The reputation guard pauses it (one of four bounced) and says why.
    with session_scope() as session:
        strict = sqlite_settings.delivery.model_copy(update={"guard_min_sample": 1})
        reason = check_reputation(
            session, world.campaign_id, sqlite_settings.model_copy(update={"delivery": strict})
        )
    page = client.get(f"/campaigns/{world.campaign_id}")
    assert reason and 'id="state-reason"' in page.text and "tasa de rebote" in page.text
    assert 'id="action-resend-failed"' in page.text
    token = csrf(client, f"/campaigns/{world.campaign_id}")
    response = client.post(
        f"/campaigns/{world.campaign_id}/resend-failed",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303
    child_id = int(response.headers["location"].rsplit("/", 1)[1])
    with session_scope() as session:
        child = get_campaign(session, world.account_id, child_id)
        assert child.parent_id == world.campaign_id and child.state == "draft"
    assert f'href="/campaigns/{world.campaign_id}"' in client.get(f"/campaigns/{child_id}").text
