"""Tracking over HTTP against a campaign sent through the real pipeline: pixel, click
redirect, trap link, web version, unsubscribe preferences, buffered ingest, human and
machine figures, the statistics endpoint and page, and retention (roll up, then purge)."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlmodel import col

from mailer.accounts.service import create_account, create_api_key
from mailer.asgi import create_app
from mailer.audience.models import Contact, ListMember
from mailer.audience.suppression import is_suppressed
from mailer.campaigns import pipeline
from mailer.campaigns.service import start_campaign
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.events.models import CampaignCounter, Event
from mailer.messages.models import Message
from mailer.messages.service import pending_ids
from mailer.storage.db import session_scope
from mailer.tracking.ingest import CLICK, OPEN, Hit, HitBuffer
from mailer.tracking.service import unsubscribe_url
from mailer.tracking.tasks import roll_up_and_purge
from mailer.tracking.urls import PIXEL_GIF, click_url, open_url, trap_url, web_version_url
from mailer.web.tracking import hit_buffer
from tests.helpers import World, build_world, start_recording_relay

BASE = "http://testserver"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PORTAL = "https://www.example.pe/portal?c=C{:05d}"


def sent_world(settings: Settings, tmp_path: Path, recipients: int) -> tuple[World, list[int]]:
    """A campaign sent to *recipients* through the pipeline; all but the last message were
    sent an hour ago (so only the last one is within the scanner window)."""
    world = build_world(settings, tmp_path, recipients)
    relay, recorder = start_recording_relay()
    try:
        with session_scope(settings) as session:
            start_campaign(session, world.account_id, world.campaign_id)
        with session_scope(settings) as session:
            ids = sorted(pending_ids(session, world.campaign_id))
        relayed = settings.model_copy(
            update={"relay": settings.relay.model_copy(update={"port": relay.port})}
        )
        pipeline.send_batch(world.campaign_id, ids, settings=relayed)
    finally:
        relay.stop()
    assert len(recorder.messages) == recipients
    with session_scope(settings) as session:
        session.execute(
            update(Message)
            .where(col(Message.id).in_(ids[:-1]))
            .values(sent_at=utcnow() - timedelta(hours=1))
        )
    return world, ids


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def path_of(url: str) -> str:
    return url.removeprefix(BASE)


def flush(client: TestClient) -> int:
    return hit_buffer(client.app).flush()


def events(settings: Settings, **where: object) -> list[Event]:
    with session_scope(settings) as session:
        query = select(Event).order_by(col(Event.id))
        for name, value in where.items():
            query = query.where(getattr(Event, name) == value)
        return list(session.execute(query).scalars())


def api_key(settings: Settings, account_id: int) -> dict[str, str]:
    with session_scope(settings) as session:
        _key, plaintext = create_api_key(session, account_id, "lector", "viewer")
    return {"Authorization": f"Bearer {plaintext}"}


def test_opens_clicks_human_and_machine_in_the_statistics(
    settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    world, (m0, m1, m2, m3) = sent_world(settings, tmp_path, 4)
    secret = settings.secret_key
    human = {"User-Agent": CHROME}

    # The pixel: exact bytes and headers, answered at once (nothing written yet).
    pixel = client.get(path_of(open_url(BASE, secret, m0)), headers=human)
    assert pixel.status_code == 200 and pixel.content == PIXEL_GIF
    assert pixel.headers["content-type"] == "image/gif"
    assert pixel.headers["cache-control"] == "no-store, no-cache, must-revalidate, private"
    assert pixel.headers["pragma"] == "no-cache" and pixel.headers["expires"] == "0"
    assert events(settings, kind="opened") == []

    def click(message_id: int, index: int, url: str, **kwargs: object) -> str:
        response = client.request(
            str(kwargs.pop("method", "GET")),
            path_of(click_url(BASE, secret, message_id, index, url)),
            follow_redirects=False,
            headers=kwargs.pop("headers", human),  # type: ignore[arg-type]
        )
        assert response.status_code == 302, response.text
        assert response.headers["cache-control"].startswith("no-store")
        return response.headers["location"]

    assert click(m0, 0, PORTAL.format(0)) == PORTAL.format(0)
    client.get(path_of(open_url(BASE, secret, m1)), headers={"User-Agent": "Mozilla/5.0"})
    click(m1, 0, PORTAL.format(1))  # a person who clicked without loading images
    click(m2, 0, PORTAL.format(2), headers={"User-Agent": "Barracuda Sentinel (EE)"})
    click(m2, 0, PORTAL.format(2), method="HEAD")
    click(m3, 0, PORTAL.format(3))  # seconds after sending: a gateway's scanner

    # Refused, and recording nothing: forged, tampered, another install's, unknown message.
    good = path_of(click_url(BASE, secret, m0, 0, PORTAL.format(0)))
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    forged = path_of(click_url(BASE, secret, m0, 0, "https://evil.example/")).split(".")[0]
    forged += "." + good.rsplit(".", 1)[1]  # someone else's target under a valid MAC
    other = path_of(click_url(BASE, "other install " * 4, m0, 0, "https://evil.example/"))
    for path in (tampered, forged, other, "/t/c/nada", "/t/o/nada.nada"):
        refused = client.get(path, follow_redirects=False)
        assert refused.status_code == 404 and "location" not in refused.headers, path
    unknown = client.get(path_of(open_url(BASE, secret, 999_999)))
    assert unknown.status_code == 200  # validly signed, no such message: dropped at flush

    assert flush(client) == 7
    assert flush(client) == 0
    stored = events(settings, campaign_id=world.campaign_id)
    tracked = [e for e in stored if e.kind in ("opened", "clicked")]
    assert len(tracked) == 7
    assert all(e.contact_id is not None and e.account_id == world.account_id for e in tracked)
    by_message = {(e.message_id, e.kind, e.data.get("method", "GET")): e for e in tracked}
    assert by_message[(m0, "opened", "GET")].machine is False
    assert by_message[(m1, "opened", "GET")].data["reasons"] == ["apple_mpp"]
    assert by_message[(m2, "clicked", "GET")].data["reasons"] == ["scanner_agent"]
    assert "head_request" in by_message[(m2, "clicked", "HEAD")].data["reasons"]
    assert by_message[(m3, "clicked", "GET")].data["reasons"] == ["too_soon"]
    assert by_message[(m0, "clicked", "GET")].data["url"] == PORTAL.format(0)

    stats = client.get(
        f"/api/v1/campaigns/{world.campaign_id}/stats", headers=api_key(settings, world.account_id)
    ).json()
    assert stats["recipients"] == 4 and stats["sent"] == 4 and stats["delivered"] == 4
    assert stats["opened"] == {"unique": 2, "total": 2, "human_unique": 2, "human_total": 1}
    clicked = stats["clicked"]
    assert (clicked["unique"], clicked["total"]) == (4, 5)
    assert (clicked["human_unique"], clicked["human_total"]) == (2, 2)
    assert clicked["links"] == [
        {
            "index": 0,
            "url": "https://www.example.pe/portal?…",  # personalised: no one's code shown
            "total": 5,
            "human_total": 2,
            "unique": 4,
            "human_unique": 2,
        }
    ]
    assert stats["machine"]["messages"] == 3
    assert stats["rates"]["open_human"] == 50.0 and stats["rates"]["click_to_open"] == 100.0

    # Another account sees none of it.
    with session_scope(settings) as session:
        stranger = create_account(session, "Otra entidad")
        assert stranger.id
    foreign = client.get(
        f"/api/v1/campaigns/{world.campaign_id}/stats", headers=api_key(settings, stranger.id)
    )
    assert foreign.status_code == 404

    # The campaign page shows the figures, human first.
    login = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
    assert token
    client.post(
        "/login",
        data={
            "email": world.admin_email,
            "password": world.admin_password,
            "csrf_token": token.group(1),
        },
    )
    page = client.get(f"/campaigns/{world.campaign_id}").text
    assert 'id="stat-opened-human">2<' in page and 'id="stat-clicked-human">2<' in page
    assert 'id="stat-clicked-total">(4)<' in page and "Estadísticas" in page


def test_trap_and_bursts_unmask_earlier_activity(settings: Settings, tmp_path: Path) -> None:
    world, (m0, m1, _m2) = sent_world(settings, tmp_path, 3)
    with TestClient(create_app(settings)) as client:
        secret, human = settings.secret_key, {"User-Agent": CHROME}
        # m0: a scanner with a browser's agent opens, clicks; then it follows the trap.
        client.get(path_of(open_url(BASE, secret, m0)), headers=human)
        client.get(
            path_of(click_url(BASE, secret, m0, 0, PORTAL.format(0))),
            headers=human,
            follow_redirects=False,
        )
        flush(client)
        seen = [(e.kind, e.machine) for e in events(settings, message_id=m0)]
        assert seen == [("sent", False), ("opened", False), ("clicked", False)]
        trap = client.get(path_of(trap_url(BASE, secret, m0)), headers=human)
        assert trap.status_code == 200
        flush(client)
        m0_events = events(settings, message_id=m0)
        assert [e.kind for e in m0_events] == ["sent", "opened", "clicked", "scanned"]
        assert all(e.machine for e in m0_events if e.kind != "sent")
        # m1: two different links within a second, split over two flushes.
        client.get(
            path_of(click_url(BASE, secret, m1, 0, PORTAL.format(1))),
            headers=human,
            follow_redirects=False,
        )
        flush(client)
        client.get(
            path_of(click_url(BASE, secret, m1, 1, "https://www.example.pe/ayuda")),
            headers=human,
            follow_redirects=False,
        )
        flush(client)
        clicks = events(settings, message_id=m1, kind="clicked")
        assert len(clicks) == 2 and all(e.machine for e in clicks)
        assert clicks[1].data["reasons"] == ["burst"]
        stats = client.get(
            f"/api/v1/campaigns/{world.campaign_id}/stats",
            headers=api_key(settings, world.account_id),
        ).json()
        assert stats["opened"]["human_unique"] == 0 and stats["clicked"]["human_unique"] == 0
        assert stats["clicked"]["unique"] == 2 and stats["machine"] == {"messages": 2, "scanned": 1}


def test_buffer_is_written_at_shutdown_and_survives_a_database_error(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings
    _world, ids = sent_world(settings, tmp_path, 3)
    with TestClient(create_app(settings)) as client:
        for message_id in ids:
            for _ in range(50):
                client.get(
                    path_of(open_url(BASE, settings.secret_key, message_id)),
                    headers={"User-Agent": CHROME},
                )
        child = hit_buffer(client.app)._child
        assert child is not None and child.alive()  # a writer process of its own
    # No explicit flush: the app's shutdown wrote everything, and the writer process ended.
    assert len(events(settings, kind="opened")) == 150
    assert child.process.returncode == 0

    (tmp_path / "not-a-database").mkdir()
    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/not-a-database"})
    hit = Hit(OPEN, ids[0], time.time(), "GET", CHROME, "10.1.2.3")
    buffer = HitBuffer(broken, writer="thread")
    buffer._hits.append(hit)
    with pytest.raises(Exception):  # noqa: B017 (any database error)
        buffer.flush()
    assert buffer.pending() == 1  # kept for the next flush, not dropped

    buffer = HitBuffer(broken, writer="process")
    buffer.add(hit)
    try:
        with pytest.raises(RuntimeError, match="could not write"):
            buffer.flush()  # the writer process keeps the hit for its next flush
    finally:
        buffer.stop()
    assert buffer._child is None and buffer.pending() == 0


def test_writer_process_crashes_lose_only_what_it_held(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.model_copy(
        update={"tracking": sqlite_settings.tracking.model_copy(update={"flush_seconds": 5})}
    )
    _world, (m0, m1) = sent_world(settings, tmp_path, 2)
    buffer = HitBuffer(settings, writer="process")
    try:
        buffer.add(Hit(OPEN, m0, time.time(), "GET", CHROME, "10.1.2.3"))
        assert buffer.flush() == 1
        first = buffer._child
        assert first is not None
        # The writer process is killed holding one hit: that one is lost, later ones are not.
        buffer.add(Hit(OPEN, m0, time.time(), "GET", CHROME, "10.1.2.3"))
        with buffer._flush_lock:
            buffer._ship()
        first.process.kill()
        first.process.wait()
        buffer.add(Hit(OPEN, m1, time.time(), "GET", CHROME, "10.1.2.3"))
        assert buffer.flush() == 1  # by a new writer process
        assert buffer._child is not None and buffer._child is not first
        # The HTTP process dies (its end of the pipe closes): the writer writes what it
        # was handed, then ends.
        buffer.add(Hit(OPEN, m1, time.time(), "GET", CHROME, "10.1.2.3"))
        with buffer._flush_lock:
            buffer._ship()
        orphan = buffer._child
        orphan._close_pipes()
        assert orphan.process.wait(timeout=30) == 0
        buffer._child = None
    finally:
        buffer.stop()
    opened = [e.message_id for e in events(settings, kind="opened")]
    assert sorted(opened) == [m0, m1, m1]


def test_events_keep_any_agent_and_url_exactly(
    settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    """Tabs, newlines, backslashes and non-ASCII text go through COPY and the JSON as they
    came; the times are the hits' times to the microsecond."""
    _world, (m0,) = sent_world(settings, tmp_path, 1)
    agent = 'Mozilla/5.0 (X11; "ñandú") \\N\ttab\nline \\. end'
    url = "https://www.example.pe/p?q=a\\b&r=ñ%09"
    at = 1_790_000_000.123456
    buffer = hit_buffer(client.app)
    buffer.add(Hit(CLICK, m0, at, "GET", agent, "2001:db8::1", 3, url))
    buffer.add(Hit(OPEN, m0, at + 1, "HEAD", agent, "192.0.2.77"))
    assert buffer.flush() == 2
    clicked, opened = events(settings, kind="clicked")[0], events(settings, kind="opened")[0]
    assert clicked.data["ua"] == agent and clicked.data["url"] == url
    assert clicked.data["link"] == 3 and clicked.data["ip"] == "2001:db8::/48"
    assert opened.data["method"] == "HEAD" and opened.data["ip"] == "192.0.2.0/24"
    assert clicked.occurred_at.timestamp() == pytest.approx(at, abs=1e-6)
    assert opened.occurred_at.timestamp() == pytest.approx(at + 1, abs=1e-6)
    with session_scope(settings) as session:  # stored times compare with the ORM's
        later = select(func.count()).where(
            col(Event.kind) == "opened", col(Event.occurred_at) > clicked.occurred_at
        )
        assert session.execute(later).scalar_one() == 1


def test_hits_skip_the_portal_middleware(settings: Settings, client: TestClient) -> None:
    """The tracking fast path answers before the session and metrics middleware."""
    pixel = client.get(path_of(open_url(BASE, settings.secret_key, 1)))
    assert pixel.status_code == 200 and pixel.content == PIXEL_GIF
    assert "set-cookie" not in pixel.headers and "x-frame-options" not in pixel.headers
    health = client.get("/healthz")
    assert health.headers["x-content-type-options"] == "nosniff"  # the others do not
    assert gc.get_freeze_count() > 0  # while the app runs, what it imported is frozen


def test_unsubscribe_preferences_and_replays(
    settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    world, (m0, m1) = sent_world(settings, tmp_path, 2)
    secret = settings.secret_key
    path = path_of(unsubscribe_url(BASE, secret, m0))
    page = client.get(path).text
    assert "Darse de baja" in page and "Proveedores" in page and "Salir de esta lista" in page

    # One list only: membership gone, still subscribed; a replay records nothing more.
    for _ in range(2):
        left = client.post(path, data={"action": "list", "list_id": str(world.list_id)})
        assert left.status_code == 200 and "Preferencias guardadas" in left.text
    with session_scope(settings) as session:
        message = session.get(Message, m0)
        assert message and message.contact_id
        assert session.get(ListMember, (world.list_id, message.contact_id)) is None
        contact = session.get(Contact, message.contact_id)
        assert contact and contact.email_status == "active"
    assert len(events(settings, kind="unsubscribed")) == 1

    # One-click (RFC 8058), replayed: one event, unsubscribed and suppressed.
    for _ in range(3):
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    unsubscribed = events(settings, kind="unsubscribed")
    assert len(unsubscribed) == 2 and unsubscribed[1].data["source"] == "one-click"
    assert unsubscribed[1].contact_id == message.contact_id
    with session_scope(settings) as session:
        contact = session.get(Contact, message.contact_id)
        assert contact and contact.email_status == "unsubscribed"
        assert is_suppressed(session, world.account_id, "email", contact.email)
    assert "Baja confirmada" in client.get(path).text

    # Resubscribe: active again, off the suppression list, with a consent kept.
    back = client.post(path, data={"action": "resubscribe"})
    assert "Suscripción restablecida" in back.text
    with session_scope(settings) as session:
        contact = session.get(Contact, message.contact_id)
        assert contact and contact.email_status == "active"
        assert not is_suppressed(session, world.account_id, "email", contact.email)
    assert len(events(settings, kind="resubscribed")) == 1

    # Forged and foreign tokens do nothing.
    other = path_of(unsubscribe_url(BASE, "another install " * 3, m1))
    for bad in (path[:-3] + "AAA", other):
        assert client.post(bad, data={"List-Unsubscribe": "One-Click"}).status_code == 404
        assert client.get(bad).status_code == 404
    with session_scope(settings) as session:
        message1 = session.get(Message, m1)
        assert message1 and message1.contact_id
        contact1 = session.get(Contact, message1.contact_id)
        assert contact1 and contact1.email_status == "active"
    assert len(events(settings, kind="unsubscribed")) == 2


def test_web_version(sqlite_settings: Settings, tmp_path: Path) -> None:
    settings = sqlite_settings
    _world, (m0, _m1) = sent_world(settings, tmp_path, 2)
    with TestClient(create_app(settings)) as client:
        url = path_of(web_version_url(BASE, settings.secret_key, m0))
        page = client.get(url, headers={"User-Agent": CHROME})
        assert page.status_code == 200
        assert "Hola Nombre0 de Empresa 0 S.A.C." in page.text
        assert "sandbox" in page.headers["content-security-policy"]
        assert "/t/c/" in page.text and PORTAL.format(0) not in page.text  # links tracked
        assert client.get(url[:-2] + "xx").status_code == 404
        assert client.get(path_of(web_version_url(BASE, "x" * 40, m0))).status_code == 404
        flush(client)
        views = events(settings, kind="opened", message_id=m0)
        assert len(views) == 1 and views[0].data["web"] is True and views[0].machine is False


def test_rollup_then_purge_keeps_the_figures(
    settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    world, (m0, m1, m2) = sent_world(settings, tmp_path, 3)
    buffer = hit_buffer(client.app)
    with session_scope(settings) as session:  # sent long ago
        session.execute(update(Message).values(sent_at=utcnow() - timedelta(days=501)))
        session.execute(update(Event).values(occurred_at=utcnow() - timedelta(days=501)))
    old = time.time() - 500 * 86400
    recent = time.time() - 3600
    ua = CHROME
    hits = [
        Hit(OPEN, m0, old, "GET", ua, "10.0.0.1"),
        Hit(OPEN, m0, old + 60, "GET", ua, "10.0.0.1"),
        Hit(CLICK, m0, old + 120, "GET", ua, "10.0.0.1", 0, PORTAL.format(0)),
        Hit(OPEN, m1, old, "GET", "Mozilla/5.0", "17.1.1.1"),
        Hit(CLICK, m1, old + 5, "GET", "curl/8.0", "10.0.0.2", 0, PORTAL.format(1)),
        # m2 has an old open and a recent click: it is not quiet, nothing of it goes.
        Hit(OPEN, m2, old, "GET", ua, "10.0.0.3"),
        Hit(CLICK, m2, recent, "GET", ua, "10.0.0.3", 0, PORTAL.format(2)),
    ]
    for hit in hits:
        buffer.add(hit)
    assert buffer.flush() == len(hits)
    headers = api_key(settings, world.account_id)
    stats_url = f"/api/v1/campaigns/{world.campaign_id}/stats"
    before = client.get(stats_url, headers=headers).json()
    assert before["opened"]["unique"] == 3 and before["clicked"]["human_unique"] == 2

    result = roll_up_and_purge(settings, chunk=2)
    assert result.messages == 2
    with session_scope(settings) as session:
        left = session.execute(
            select(Event.message_id, func.count()).group_by(Event.message_id)
        ).all()
        assert dict(left) == {m2: 3}  # its sent event, the old open and the recent click
        counters = session.execute(select(func.count()).select_from(CampaignCounter)).scalar()
        assert counters
    after = client.get(stats_url, headers=headers).json()
    assert after == before
    assert roll_up_and_purge(settings).events == 0  # idempotent
    assert client.get(stats_url, headers=headers).json() == before
