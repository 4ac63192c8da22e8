"""The portal's SMS pages over HTTP: the composer (to numbers, to a list, scheduled, with
its errors in Spanish and the form kept), the role checks, an SMS campaign's page against
``sms_campaign_stats``, replies, and the JavaScript counter against the Python one.

SMS go through the capture gateway of the default configuration: it reports each part
delivered a moment later (numbers ending in 0000 undelivered); worker threads of the
in-process broker send what the pages queue.
"""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from mailer.accounts import credits
from mailer.accounts.service import create_user
from mailer.asgi import create_app
from mailer.audience.service import add_contact, create_list, create_segment
from mailer.campaigns import sms
from mailer.campaigns.service import get_campaign
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.messages.models import Message
from mailer.sms.encoding import analyse
from mailer.sms.types import Inbound
from mailer.storage.db import session_scope
from mailer.web.sms import counter_tables
from mailer.workers import start_worker
from tests.conftest import IN_CI, REPO
from tests.helpers import World, build_world

PASSWORD = "una clave larga 123"
PHONES = ("987654321", "912345678", "998877665", "987650000")  # the last is undelivered
SETTLE_TIMEOUT = 20.0
COUNTER_JS = REPO / "mailer" / "web" / "static" / "sms-counter.js"


@dataclass(frozen=True)
class SmsWorld:
    base: World
    phone_list_id: int


@pytest.fixture
def world(sqlite_settings: Settings, tmp_path: Path) -> Iterator[SmsWorld]:
    base = build_world(sqlite_settings, tmp_path, 1)
    with session_scope(sqlite_settings) as session:
        for role in ("viewer", "editor", "manager"):
            create_user(session, base.account_id, f"{role}@example.pe", PASSWORD, role)
        phones = create_list(session, base.account_id, "Celulares")
        assert phones.id is not None
        for i, phone in enumerate(PHONES):
            add_contact(
                session,
                base.account_id,
                f"celular{i}@example.pe",
                list_id=phones.id,
                first_name=f"Persona{i}",
                phone=phone,
            )
        credits.grant(session, base.account_id, "sms", 1_000)
    worker = start_worker(dramatiq.get_broker(), 2)
    try:
        yield SmsWorld(base, phones.id)
    finally:
        worker.stop()
        sms.close_gateway_loop()


@pytest.fixture
def client(sqlite_settings: Settings, world: SmsWorld) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def csrf(client: TestClient, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: TestClient, role: str) -> None:
    response = client.post(
        "/login",
        data={"email": f"{role}@example.pe", "password": PASSWORD, "csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def composer_form(client: TestClient, **fields: str) -> dict[str, str]:
    """The composer's hidden fields (CSRF token, one-time nonce) and *fields*."""
    page = client.get("/sms/new")
    assert page.status_code == 200, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert token and nonce
    return {"csrf_token": token.group(1), "nonce": nonce.group(1), **fields}


def settled(settings: Settings, where: object, expected: int) -> list[Message]:
    """The SMS rows matching *where*, once *expected* of them have a final state."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        with session_scope(settings) as session:
            rows = list(session.execute(select(Message).where(where)).scalars())  # type: ignore[arg-type]
        final = [r for r in rows if r.state in ("delivered", "undelivered", "expired", "failed")]
        if len(final) >= expected:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(final)} of {expected} SMS settled: {rows}")
        time.sleep(0.1)


def figure(page: str, name: str) -> str:
    match = re.search(rf'id="stat-{name}">([^<]*)<', page)
    assert match, f"no figure {name}"
    return match.group(1)


# -- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "may_edit", "may_send"),
    [("viewer", False, False), ("editor", True, False), ("manager", True, True)],
)
def test_roles(
    client: TestClient, world: SmsWorld, role: str, may_edit: bool, may_send: bool
) -> None:
    login(client, role)
    overview = client.get("/sms")
    assert overview.status_code == 200
    assert ('href="/sms/new"' in overview.text) is may_edit
    assert client.get("/sms/replies").status_code == 200
    composer = client.get("/sms/new")
    assert composer.status_code == (200 if may_edit else 403)
    if may_edit:
        assert ('id="action-send"' in composer.text) is may_send
        assert 'id="action-draft"' in composer.text
    token = csrf(client, "/sms")
    fields = {
        "csrf_token": token,
        "name": f"Aviso {role}",
        "text": "Hola",
        "target": "list",
        "list_id": str(world.phone_list_id),
    }
    draft = client.post("/sms/new", data={**fields, "action": "draft"}, follow_redirects=False)
    assert draft.status_code == (303 if may_edit else 403)
    send = client.post("/sms/new", data={**fields, "action": "send"}, follow_redirects=False)
    assert send.status_code == (303 if may_send else 403)
    if may_edit:
        campaign_url = draft.headers["location"]
        assert re.fullmatch(r"/sms/campaigns/\d+", campaign_url)
        cancel = client.post(
            f"{campaign_url}/cancel", data={"csrf_token": token}, follow_redirects=False
        )
        assert cancel.status_code == (303 if may_send else 403)
        scheduled = client.post(
            f"{campaign_url}/schedule",
            data={"csrf_token": token, "scheduled_at": "2099-01-01T10:00"},
            follow_redirects=False,
        )
        assert scheduled.status_code == (303 if may_send else 403)


# -- composer: numbers -----------------------------------------------------------------------


def test_send_to_numbers_shows_what_was_queued_and_the_rejected(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    login(client, "manager")
    numbers = "987654321\n987650000, 01 4261234\nhola\n987654321"
    form = composer_form(
        client, text="Su trámite está listo.", target="numbers", numbers=numbers, action="send"
    )
    result = client.post("/sms/new", data=form)
    assert result.status_code == 200, result.text
    page = html.unescape(result.text)
    assert 'id="sms-queued-count">2<' in page
    rejected = re.search(r'<table class="data" id="sms-rejected">(.*?)</table>', page, re.S)
    assert rejected, page
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    assert rows == [
        ("3", "01 4261234", "no es un celular (teléfono fijo)"),
        ("4", "hola", "no es un número de teléfono"),
        ("5", "987654321", "número repetido en el mismo envío"),
    ]
    assert "+51987654321" in page and "+51987650000" in page
    # "trámite" forces UCS-2: one part each, reserved.
    assert 'id="sms-queued-parts">2<' in page

    rows_ = settled(
        sqlite_settings,
        (col(Message.channel) == "sms") & col(Message.campaign_id).is_(None),
        expected=2,
    )
    states = {r.to_address: r.state for r in rows_}
    assert states == {"+51987654321": "delivered", "+51987650000": "undelivered"}
    overview = html.unescape(client.get("/sms").text)
    recent = re.search(r'id="sms-recent">(.*?)</table>', overview, re.S)
    assert recent
    assert "Entregado" in recent.group(1) and "No entregado" in recent.group(1)
    assert "user:" in recent.group(1)
    assert 'id="sms-balance"' in overview and ">999<" in overview  # one delivered, one released

    again = client.post("/sms/new", data=form, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/sms"
    assert "no se repitió el envío" in html.unescape(client.get("/sms").text)
    with session_scope(sqlite_settings) as session:
        count = len(
            list(session.execute(select(Message).where(col(Message.channel) == "sms")).scalars())
        )
    assert count == 2


def test_errors_are_shown_in_spanish_on_the_form_with_what_was_typed(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    login(client, "manager")
    cases = [
        ({"sender": "MAL REMITENTE!"}, "el remitente «MAL REMITENTE!» no es válido", "sender"),
        ({"text": "Hola {{ contact.first_name"}, "línea 1", "text"),
        (
            {"numbers": "01 4261234"},
            "ningún número puede recibir este SMS: «01 4261234» (número 1 de la lista): no es "
            "un celular (teléfono fijo)",
            "numbers",
        ),
        ({"action": "schedule", "scheduled_at": "2001-01-01T08:00"}, "ya pasó", "scheduled_at"),
        ({"action": "schedule", "scheduled_at": ""}, "indique la fecha y la hora", "scheduled_at"),
        ({"action": "draft"}, "un borrador necesita una lista o un segmento", "target"),
    ]
    for change, message, field in cases:
        fields = {
            "text": "Aviso: su pedido llegó",
            "target": "numbers",
            "numbers": "987654321",
            "action": "send",
            **change,
        }
        answer = client.post("/sms/new", data=composer_form(client, **fields))
        page = html.unescape(answer.text)
        assert answer.status_code == 422, (change, page)
        error = re.search(r'id="sms-error">([^<]*)<', page)
        assert error and message in error.group(1), (change, error and error.group(1))
        assert f">{fields['text']}</textarea>" in page  # what was typed is kept
        assert fields["numbers"] in page
        assert re.search(r'class="invalid" aria-invalid="true"', page), field
    with session_scope(sqlite_settings) as session:
        assert not list(session.execute(select(Message)).scalars())

    with session_scope(sqlite_settings) as session:  # spend all but one SMS
        credits.reserve(session, world.base.account_id, "sms", 999, ref="test")
    poor = client.post(
        "/sms/new",
        data=composer_form(
            client, text="Hola", target="numbers", numbers="987654321\n912345678", action="send"
        ),
    )
    page = html.unescape(poor.text)
    assert poor.status_code == 422
    assert "saldo de sms insuficiente: este envío necesita 2 y a la cuenta le quedan 1" in page


# -- composer: list, segment, schedule -------------------------------------------------------


def test_send_to_a_list_and_the_campaign_page_agrees_with_the_stats(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    login(client, "manager")
    form = composer_form(
        client,
        name="Recordatorio de pago",
        text="Hola {{ contact.first_name }}, su pago vence el 30/11. https://www.example.pe/pago",
        target="list",
        list_id=str(world.phone_list_id),
        action="send",
    )
    started = client.post("/sms/new", data=form, follow_redirects=False)
    assert started.status_code == 303, started.text
    url = started.headers["location"]
    campaign_id = int(url.rsplit("/", 1)[1])
    first = client.get(url)
    assert "Envío iniciado." in first.text
    settled(sqlite_settings, col(Message.campaign_id) == campaign_id, expected=len(PHONES))

    # A reply with a keyword, and one without.
    with session_scope(sqlite_settings) as session:
        # The keyword last: its acknowledgement becomes the number's latest SMS.
        for text in ("Gracias, ya pagué", "baja"):
            reply, _acks = sms.handle_inbound_sms(
                session,
                sqlite_settings,
                Inbound("+51912345678", "INFO", text, "capture", utcnow()),
            )
            assert reply.campaign_id == campaign_id
    with session_scope(sqlite_settings) as session:
        campaign = get_campaign(session, world.base.account_id, campaign_id)
        stats = sms.sms_campaign_stats(session, campaign)
    assert stats["delivered"] == 3 and stats["undelivered"] == 1 and stats["replies"] == 2

    page = html.unescape(client.get(url).text)
    for name in (
        "recipients",
        "delivered",
        "pending",
        "not_delivered",
        "undelivered",
        "expired",
        "failed",
        "parts_charged",
        "clicks",
        "unique_clicks",
        "replies",
        "keyword_replies",
    ):
        assert figure(page, name.replace("_", "-")) == str(stats[name]), name
    assert figure(page, "delivery-rate") == f"{stats['delivery_rate'] * 100:.1f} %"
    assert "Completada" in page
    replies = re.search(r'id="sms-replies">(.*?)</table>', page, re.S)
    assert replies
    assert "Gracias, ya pagué" in replies.group(1)
    assert "BAJA" in replies.group(1) and "Baja de SMS" in replies.group(1)
    live = client.get(f"{url}/stats").json()
    assert live["stats"] == json.loads(json.dumps(stats)) and live["live"] is False

    everything = html.unescape(client.get("/sms/replies").text)
    assert everything.index("BAJA") < everything.index("Gracias, ya pagué")  # newest first
    assert "Recordatorio de pago" in everything
    other = client.get("/sms/replies", params={"campaign_id": campaign_id + 1000})
    assert "Aún no hay respuestas." in html.unescape(other.text)
    overview = html.unescape(client.get("/sms").text)
    row = re.search(rf'<tr data-campaign="{campaign_id}">(.*?)</tr>', overview, re.S)
    assert row
    cells = re.findall(r'<td class="num">(\d+)</td>', row.group(1))
    assert cells == ["4", "3", "0", "1"]


def test_schedule_a_campaign_and_numbers_in_the_account_time_zone(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    login(client, "manager")
    form = composer_form(
        client,
        name="Corte programado",
        text="Mañana habrá corte de agua de 9 a 12.",
        target="list",
        list_id=str(world.phone_list_id),
        scheduled_at="2099-03-01T09:30",
        action="schedule",
    )
    answer = client.post("/sms/new", data=form)
    page = html.unescape(answer.text)
    assert "SMS programado para el 01/03/2099 a las 09:30 (America/Lima)." in page
    assert 'id="scheduled-at">01/03/2099 09:30 (America/Lima)' in page
    campaign_id = int(str(answer.url).rsplit("/", 1)[1])
    with session_scope(sqlite_settings) as session:
        campaign = get_campaign(session, world.base.account_id, campaign_id)
        assert campaign.state == "scheduled" and campaign.channel == "sms"
        assert campaign.scheduled_at and campaign.scheduled_at.hour == 14  # Lima is UTC-5
    back = client.post(
        f"/sms/campaigns/{campaign_id}/unschedule", data={"csrf_token": form["csrf_token"]}
    )
    assert "vuelve a borrador" in html.unescape(back.text)

    numbers = composer_form(
        client,
        text="Recordatorio: cita mañana.",
        target="numbers",
        numbers="987654321",
        scheduled_at="2099-03-01T09:30",
        action="schedule",
    )
    result = html.unescape(client.post("/sms/new", data=numbers).text)
    assert "SMS programados" in result and "01/03/2099 09:30 (America/Lima)" in result
    with session_scope(sqlite_settings) as session:
        [row] = session.execute(select(Message).where(col(Message.campaign_id).is_(None))).scalars()
        assert row.state == "deferred" and row.next_attempt_at is not None
        assert row.next_attempt_at.hour == 14
    overview = html.unescape(client.get("/sms").text)
    assert "Programado" in overview


def test_an_editor_saves_and_edits_a_draft_that_a_manager_sends(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    login(client, "editor")
    saved = client.post(
        "/sms/new",
        data=composer_form(
            client,
            name="Borrador",
            text="Primera versión",
            target="list",
            list_id=str(world.phone_list_id),
            action="draft",
        ),
        follow_redirects=False,
    )
    url = saved.headers["location"]
    page = client.get(url)
    assert "Borrador guardado." in page.text and 'id="action-edit"' in page.text
    assert 'id="action-send"' not in page.text  # an editor cannot send
    edit = client.get(f"{url}/edit")
    assert edit.status_code == 200 and ">Primera versión</textarea>" in edit.text
    token = csrf(client, f"{url}/edit")
    bad = client.post(f"{url}/edit", data={"csrf_token": token, "text": "", "sender": "INFO"})
    assert bad.status_code == 422 and "el SMS no tiene texto" in html.unescape(bad.text)
    changed = client.post(
        f"{url}/edit",
        data={"csrf_token": token, "text": "Segunda versión, ñandú", "sender": "MUNI"},
    )
    assert "Cambios guardados." in changed.text
    assert 'id="sms-sender">MUNI<' in changed.text
    with session_scope(sqlite_settings) as session:
        campaign = get_campaign(session, world.base.account_id, int(url.rsplit("/", 1)[1]))
        assert campaign.content == {"text": "Segunda versión, ñandú", "sender": "MUNI"}

    client.post("/logout", data={"csrf_token": token})
    login(client, "manager")
    sent = client.post(f"{url}/send", data={"csrf_token": csrf(client, url)})
    assert "Envío iniciado." in html.unescape(sent.text)
    settled(sqlite_settings, col(Message.campaign_id) == campaign.id, expected=len(PHONES))


def test_a_draft_to_a_segment_and_the_redirects_between_channels(
    client: TestClient, world: SmsWorld, sqlite_settings: Settings
) -> None:
    with session_scope(sqlite_settings) as session:
        segment = create_segment(session, world.base.account_id, "Todos", {"conditions": []})
        segment_id = segment.id
    login(client, "editor")
    saved = client.post(
        "/sms/new",
        data=composer_form(
            client,
            name="Aviso a todos",
            text="Aviso general",
            target="segment",
            segment_id=str(segment_id),
            list_id=str(world.phone_list_id),  # left over from the other choice: ignored
            action="draft",
        ),
        follow_redirects=False,
    )
    url = saved.headers["location"]
    campaign_id = int(url.rsplit("/", 1)[1])
    with session_scope(sqlite_settings) as session:
        campaign = get_campaign(session, world.base.account_id, campaign_id)
        assert (campaign.segment_id, campaign.list_id) == (segment_id, None)
    page = html.unescape(client.get(url).text)
    assert f'<a href="/segments/{segment_id}">Todos</a>' in page
    assert 'id="sms-reach">4 / 5' in page  # the e-mail-only contact has no mobile
    assert 'id="sms-stats"' not in page  # no figures before the send
    moved = client.get(f"/campaigns/{campaign_id}", follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == url
    email = client.get(f"/sms/campaigns/{world.base.campaign_id}", follow_redirects=False)
    assert email.headers["location"] == f"/campaigns/{world.base.campaign_id}"
    assert client.get(f"/sms/campaigns/{world.base.campaign_id}/stats").status_code == 404
    assert client.get("/sms/campaigns/999999").status_code == 404


# -- the counter ---------------------------------------------------------------------------


def test_count_route_normalises_and_estimates(client: TestClient, world: SmsWorld) -> None:
    login(client, "editor")
    token = csrf(client, "/sms/new")
    spanish = client.post(
        "/sms/count", data={"csrf_token": token, "text": "Canción: ¿Qué tal, señor Núñez?"}
    ).json()
    assert (spanish["encoding"], spanish["parts"], spanish["ucs2_chars"]) == ("ucs2", 1, ["ó", "ú"])
    assert spanish["normalised"] == "Cancion: ¿Qué tal, señor Nuñez?"
    assert spanish["after"]["encoding"] == "gsm7" and spanish["replaced"] == ["ó", "ú"]
    saving = client.post("/sms/count", data={"csrf_token": token, "text": "á" + "a" * 149}).json()
    assert (saving["parts"], saving["after"]["parts"]) == (3, 1)
    # A textarea sends CRLF; the SMS counts LF.
    lines = client.post("/sms/count", data={"csrf_token": token, "text": "a\r\nb"}).json()
    assert lines["characters"] == 3
    personal = client.post(
        "/sms/count",
        data={"csrf_token": token, "text": "Hola {{ contact.first_name }} https://example.pe/x"},
    ).json()
    assert isinstance(personal["estimate_parts"], int) and personal["template_error"] == ""
    broken = client.post("/sms/count", data={"csrf_token": token, "text": "{{ x"}).json()
    assert broken["estimate_parts"] is None and "línea 1" in broken["template_error"]
    assert client.post("/sms/count", data={"text": "x"}).status_code == 403  # no CSRF token
    reach = client.get("/sms/audience", params={"list_id": world.phone_list_id}).json()
    assert reach == {"matching": 4, "sendable": 4}


def test_composer_carries_the_python_tables(client: TestClient, world: SmsWorld) -> None:
    login(client, "editor")
    page = client.get("/sms/new").text
    carried = re.search(r'<script type="application/json" id="sms-tables">(.*?)</script>', page)
    assert carried
    assert json.loads(carried.group(1)) == counter_tables()
    assert '<script src="/static/sms-counter.js"' in page
    assert client.get("/static/sms-counter.js").status_code == 200


def _texts() -> list[str]:
    """The issue's examples, the edges of the part budgets, and random texts over an
    alphabet of GSM-7, its extension table, Spanish accents, typography and emoji."""
    fixed = [
        "",
        "a" * 160,
        "a" * 161,
        "a" * 159 + "€",
        "a" * 152 + "€" + "a" * 10,
        "Canción: ¿Qué tal, señor Núñez?",
        "á" * 70,
        "á" * 71,
        "😀" * 35,
        "a" * 66 + "😀" + "á",
        "\x1b",
        "line\nfeed\r\fform",
        "{[~]}|\\^€" * 20,
    ]
    alphabet = list("aZ09 @£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà\n")
    alphabet += list("^{}\\[~]|€\f") + list("áíóúÁÚçâ“”–…\u00a0\u200b") + ["😀", "𝄞", "中"]
    rng = random.Random(20261122)
    randoms = []
    for _ in range(400):
        pool = rng.sample(alphabet, rng.randint(1, 12))
        randoms.append("".join(rng.choice(pool) for _ in range(rng.randint(0, 420))))
    return fixed + randoms


def test_the_javascript_counter_agrees_with_python() -> None:
    node = shutil.which("node")
    if node is None:
        message = "node is not installed"
        if IN_CI:
            pytest.fail(f"{message} (required under CI=true)")
        pytest.skip(message)
    texts = _texts()
    script = (
        "const c = require(process.argv[1]);"
        "const t = c.tables(JSON.parse(process.argv[2]));"
        "let input = '';"
        "process.stdin.on('data', d => input += d);"
        "process.stdin.on('end', () => {"
        "  process.stdout.write(JSON.stringify(JSON.parse(input).map(x => c.analyse(x, t))));"
        "});"
    )
    answer = subprocess.run(
        [node, "-e", script, str(COUNTER_JS), json.dumps(counter_tables())],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for text, counted in zip(texts, json.loads(answer.stdout), strict=True):
        info = analyse(text)
        expected = {
            "encoding": info.encoding,
            "characters": info.characters,
            "units": info.units,
            "parts": info.parts,
            "per_part": info.per_part,
            "remaining": info.remaining,
            "ucs2_chars": list(info.ucs2_chars),
        }
        assert counted == expected, text
