"""The audience pages of the portal over HTTP: import with column mapping and live progress
(the queued task really run by a dramatiq worker), contacts, segments and their live count,
cleaning with typo fixes, exports, erasure and the suppression list; roles, CSRF and
accounts kept apart."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook, load_workbook

from mailer.accounts.service import create_account, create_user
from mailer.asgi import create_app
from mailer.audience import service
from mailer.audience.models import Contact
from mailer.audience.suppression import list_suppressions
from mailer.core.config import Settings
from mailer.core.errors import Conflict
from mailer.storage.db import session_scope
from mailer.workers import start_worker
from tests.helpers import World, build_world
from tests.integration.web.test_portal_routes import PASSWORD, csrf, login

OTHER_ADMIN = "otra@example.pe"
# Pages whose behaviour does not depend on the database run on SQLite only.
sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    """On SQLite and PostgreSQL: an account with 3 contacts, its users, another account."""
    world = build_world(settings, tmp_path, 3)
    with session_scope() as session:
        for role in ("viewer", "editor", "manager"):
            create_user(session, world.account_id, f"{role}@example.pe", PASSWORD, role)
        other = create_account(session, "Otra entidad")
        assert other.id
        create_user(session, other.id, OTHER_ADMIN, PASSWORD, "admin")
    return world


@pytest.fixture
def client(settings: Settings, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def run_tasks(settings: Settings) -> Iterator[Callable[[], None]]:
    """Call it to have a dramatiq worker process the queued imports and cleanings (the
    worker starts at the first call, so a test sees the queued state before)."""
    broker = dramatiq.get_broker()
    workers: list[dramatiq.Worker] = []

    def drain() -> None:
        if not workers:
            workers.append(start_worker(broker, 2))
        broker.join("audience", timeout=60_000, fail_fast=True)  # type: ignore[attr-defined]
        workers[0].join()

    try:
        yield drain
    finally:
        for worker in workers:
            worker.stop()


def mapping_of(page: str) -> dict[str, str]:
    """Header -> preselected target, as the mapping step shows it."""
    chosen = {}
    for chunk in page.split('<tr data-header="')[1:]:
        header = html.unescape(chunk.split('"', 1)[0])
        selected = re.search(r'<option value="([^"]*)" selected>', chunk)
        assert selected, f"nothing preselected for {header}"
        chosen[header] = html.unescape(selected.group(1))
    return chosen


def upload(
    client: TestClient, list_id: int, name: str, data: bytes, token: str
) -> tuple[str, dict[str, str]]:
    page = client.post(
        f"/lists/{list_id}/import",
        data={"csrf_token": token},
        files={"file": (name, data, "application/octet-stream")},
    )
    assert page.status_code == 200, page.text
    stored = re.search(r'name="upload" value="([^"]+)"', page.text)
    assert stored
    return page.text, {"upload": stored.group(1), "filename": name, "csrf_token": token}


def confirm(
    client: TestClient, list_id: int, form: dict[str, str], targets: list[str], mode: str
) -> Any:
    return client.post(
        f"/lists/{list_id}/import/confirm",
        data={**form, "mode": mode, "column": targets},
        follow_redirects=False,
    )


CP1252_CSV = (
    "Correo;Nombres;Razón social;Teléfono;Monto\n"
    "ana@example.pe;Ana Ñahui;Ferretería Ñandú S.A.C.;987654321;1500\n"
    "luis@example.pe;Luis;Constructora Sur;999;200\n"
    "sin-arroba;Malo;X;;1\n"
    "ANA@example.pe;Ana;Duplicada;;5\n"
).encode("cp1252")


def test_import_a_cp1252_csv_with_mapping_and_live_progress(
    client: TestClient, world: World, run_tasks: Callable[[], None]
) -> None:
    login(client, "editor@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    page, form = upload(client, world.list_id, "proveedores.csv", CP1252_CSV, token)
    assert "cp1252" in page and "Ferretería Ñandú S.A.C." in page  # read as Windows-1252
    assert mapping_of(page) == {
        "Correo": "email",
        "Nombres": "first_name",
        "Razón social": "company",
        "Teléfono": "phone",
        "Monto": "attr:monto",
    }
    # The phone column is left out by changing its select.
    moved = confirm(
        client, world.list_id, form, ["email", "first_name", "company", "", "attr:monto"], "add"
    )
    assert moved.status_code == 303
    url = moved.headers["location"]
    assert re.fullmatch(r"/imports/\d+", url)
    waiting = client.get(url)
    assert f'data-poll="{url}/progress"' in waiting.text and "<progress" in waiting.text
    assert client.get(f"{url}/progress").json()["finished"] is False

    run_tasks()
    progress = client.get(f"{url}/progress").json()
    assert progress["status"] == "done" and progress["finished"] and progress["fraction"] == 1.0
    assert progress["figures"] == {
        "rows": 4,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "duplicates_in_file": 1,
        "suppressed": 0,
        "skipped": 0,
        "added_to_list": 2,
        "errors": 1,
    }
    report = client.get(url)
    assert 'id="import-report"' in report.text and "<progress" not in report.text
    assert 'data-stat="created"><span class="num">2<' in report.text
    assert "Falta la @ en la dirección." in report.text
    download = client.get(f"{url}/errors.csv")
    lines = download.content.decode("utf-8-sig").splitlines()
    assert lines[0] == "línea,columna,valor,motivo" and lines[1].startswith("4,Correo,sin-arroba")
    with session_scope() as session:
        ana = service.find_contact(session, world.account_id, "ana@example.pe")
        assert ana is not None
        assert (ana.first_name, ana.company, ana.phone) == (
            "Ana Ñahui",
            "Ferretería Ñandú S.A.C.",
            "",
        )
        assert ana.attributes == {"monto": "1500"}


def dirty_workbook() -> bytes:
    """An export as offices make them: blank rows on top, headers nobody standardised."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append([])
    sheet.append([])
    sheet.append(["N°", "E-mail", "Apellidos y nombres", "Entidad", "RUC", "Cargo"])
    sheet.append(
        [1, "rosa@muni.gob.pe", "Quispe Rosa", "Municipalidad de Lima", "20131380951", "Jefa"]
    )
    sheet.append(
        [2, "jorge@muni.gob.pe", "Rojas Jorge", "Municipalidad de Lima", 20131380951, None]
    )
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_import_an_xlsx_after_changing_the_mapping(
    client: TestClient, world: World, run_tasks: Callable[[], None]
) -> None:
    login(client, "editor@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    page, form = upload(client, world.list_id, "entidades.xlsx", dirty_workbook(), token)
    assert "libro de Excel (.xlsx)" in page
    automatic = mapping_of(page)
    assert automatic == {
        "N°": "attr:n",
        "E-mail": "email",
        "Apellidos y nombres": "attr:apellidos_y_nombres",
        "Entidad": "company",
        "RUC": "document",
        "Cargo": "position",
    }
    assert "Quispe Rosa" in page  # the first rows are shown
    targets = ["", "email", "last_name", "company", "document", "position"]
    moved = confirm(client, world.list_id, form, targets, "add_or_update")
    assert moved.status_code == 303
    run_tasks()
    figures = client.get(moved.headers["location"] + "/progress").json()["figures"]
    assert (figures["rows"], figures["created"], figures["errors"]) == (2, 2, 0)
    with session_scope() as session:
        rosa = service.find_contact(session, world.account_id, "rosa@muni.gob.pe")
        assert rosa is not None
        assert (rosa.last_name, rosa.company, rosa.document, rosa.attributes) == (
            "Quispe Rosa",
            "Municipalidad de Lima",
            "20131380951",
            {},
        )


def test_a_mapping_without_email_or_with_a_clash_is_refused_in_spanish(
    client: TestClient, world: World
) -> None:
    login(client, "editor@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    _page, form = upload(client, world.list_id, "proveedores.csv", CP1252_CSV, token)
    no_email = confirm(client, world.list_id, form, ["", "first_name", "company", "", ""], "add")
    assert no_email.status_code == 422
    assert "no se encontró una columna de correo" in no_email.text
    assert mapping_of(no_email.text)["Correo"] == ""  # the user's choices are kept
    clash = confirm(client, world.list_id, form, ["email", "company", "company", "", ""], "add")
    assert clash.status_code == 422 and "están asignadas las dos a «company»" in clash.text
    gone = confirm(client, world.list_id, {**form, "upload": "0" * 32}, ["email"] * 5, "add")
    assert gone.status_code == 404 and "súbalo de nuevo" in gone.text
    pdf = client.post(
        f"/lists/{world.list_id}/import",
        data={"csrf_token": token},
        files={"file": ("lista.csv", b"%PDF-1.4 ...", "text/csv")},
    )
    assert "no una tabla" in pdf.text and "un documento PDF" in pdf.text  # flashed on the list


def add_contacts(world: World, rows: list[dict[str, Any]]) -> None:
    with session_scope() as session:
        for row in rows:
            service.add_contact(session, world.account_id, list_id=world.list_id, **row)


def test_segment_builder_counts_live_and_saves(client: TestClient, world: World) -> None:
    with session_scope() as session:
        service.define_attribute(session, world.account_id, "monto", "number")
    add_contacts(
        world,
        [
            {"email": "a@muni.gob.pe", "company": "Municipalidad", "attributes": {"monto": 5000}},
            {"email": "b@muni.gob.pe", "company": "Municipalidad", "attributes": {"monto": 50}},
        ],
    )
    with session_scope() as session:
        contact = service.find_contact(session, world.account_id, "b@muni.gob.pe")
        assert contact is not None
        service.record_consent(session, contact, granted=False, source="carta")
    login(client, "viewer@example.pe")
    token = csrf(client, "/segments")

    def count(rules: Any) -> Any:
        return client.post(
            "/segments/count", data={"csrf_token": token, "rules": json.dumps(rules)}
        )

    everyone = count({"match": "all", "conditions": []}).json()
    assert everyone["matching"] == 5 and everyone["sendable"] == 4
    municipal = {
        "match": "all",
        "conditions": [{"field": "company", "op": "contains", "value": "muni"}],
    }
    answer = count(municipal).json()
    assert answer == {
        "matching": 2,
        "sendable": 1,
        "text": "2 contactos coinciden · 1 puede recibir correo",
    }
    big = {
        **municipal,
        "conditions": [
            *municipal["conditions"],
            {"field": "attr:monto", "op": "gt", "value": "1000"},
        ],
    }
    assert count(big).json()["text"] == "1 contacto coincide · 1 puede recibir correo"
    wrong = count(
        {
            "match": "all",
            "conditions": [
                municipal["conditions"][0],
                {"field": "attr:monto", "op": "gt", "value": "mucho"},
            ],
        }
    )
    assert wrong.status_code == 422
    assert wrong.json() == {"error": "Condición 2: «mucho» no es un número", "condition": 1}
    assert client.post("/segments/count", data={"rules": "{}"}).status_code == 403  # no CSRF
    # Viewers count, but do not save.
    assert client.get("/segments/new").status_code == 403
    assert client.post("/segments/new", data={"csrf_token": token, "name": "x"}).status_code == 403

    client.post("/logout", data={"csrf_token": token})
    login(client, "editor@example.pe")
    token = csrf(client, "/segments/new")
    builder = client.get("/segments/new").text
    schema = json.loads(
        html.unescape(re.search(r'id="segment-schema">(.*?)</script>', builder, re.S).group(1))
    )  # type: ignore[union-attr]
    assert {"value": "attr:monto", "label": "Atributo: monto (Número)", "kind": "number"} in schema[
        "fields"
    ]
    assert ["gt", "es mayor que"] in schema["ops"]["number"]
    saved = client.post(
        "/segments/new",
        data={"csrf_token": token, "name": "Municipios grandes", "rules": json.dumps(big)},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    listing = client.get("/segments").text
    assert "Municipios grandes" in listing
    assert "Empresa contiene muni y monto es mayor que 1000.0" in listing
    bad = client.post("/segments/new", data={"csrf_token": token, "name": "Otro", "rules": "{nope"})
    assert bad.status_code == 422 and "no son un JSON válido" in bad.text


def test_cleaning_suggests_typo_fixes_and_applies_them(
    client: TestClient, world: World, run_tasks: Callable[[], None]
) -> None:
    add_contacts(
        world,
        [
            {"email": "ana@gmial.com", "first_name": "Ana"},
            {"email": "luis@gmial.com"},
            {"email": "rosa@gmail.com"},
        ],
    )
    login(client, "manager@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    started = client.post(
        "/cleanings",
        data={"csrf_token": token, "list_id": str(world.list_id)},
        follow_redirects=False,
    )
    assert started.status_code == 303
    url = started.headers["location"]
    assert f'data-poll="{url}/progress"' in client.get(url).text
    run_tasks()
    assert client.get(f"{url}/progress").json()["finished"] is True
    report = client.get(url).text
    assert 'value="gmial.com gmail.com"' in report
    assert "<code>gmial.com</code> → <code>gmail.com</code> · 2 contactos" in report
    assert "Posible error de escritura" in report and "Desconocido" in report  # DNS is closed
    applied = client.post(f"{url}/fixes", data={"csrf_token": token, "fix": "gmial.com gmail.com"})
    assert "2 direcciones corregidas" in applied.text
    assert "Aplicada" in applied.text and 'value="gmial.com gmail.com"' not in applied.text
    with session_scope() as session:
        assert service.find_contact(session, world.account_id, "ana@gmail.com") is not None
        assert service.find_contact(session, world.account_id, "ana@gmial.com") is None
    # A fix the report did not offer is ignored.
    other = client.post(f"{url}/fixes", data={"csrf_token": token, "fix": "example.pe evil.pe"})
    assert "Seleccione al menos una corrección" in other.text

    export = client.get(f"/lists/{world.list_id}/export.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert {r["correo"] for r in rows} >= {"ana@gmail.com", "luis@gmail.com", "rosa@gmail.com"}
    assert rows[0].keys() >= {"resultado", "motivos", "sugerencia", "codigo"}
    workbook = client.get(f"/lists/{world.list_id}/export.xlsx")
    sheet = load_workbook(io.BytesIO(workbook.content), read_only=True).active
    assert sheet is not None
    header = next(sheet.iter_rows(values_only=True))
    assert header[0] == "correo" and "resultado" in header


def test_erasure_keeps_only_a_hash_that_blocks_reimport(
    client: TestClient, world: World, run_tasks: Callable[[], None]
) -> None:
    with session_scope() as session:
        contact = service.find_contact(session, world.account_id, "persona00001@example.pe")
        assert contact is not None
        contact_id = contact.id
    login(client, "editor@example.pe")
    assert client.get(f"/contacts/{contact_id}/erase").status_code == 403
    token = csrf(client, f"/contacts/{contact_id}")
    assert (
        client.post(
            f"/contacts/{contact_id}/erase", data={"csrf_token": token, "confirm": "yes"}
        ).status_code
        == 403
    )
    assert client.get(f"/contacts/{contact_id}/export.json").status_code == 403
    client.post("/logout", data={"csrf_token": token})

    login(client, "manager@example.pe")
    token = csrf(client, f"/contacts/{contact_id}")
    export = client.get(f"/contacts/{contact_id}/export.json")
    assert export.json()["contact"]["email"] == "persona00001@example.pe"
    page = client.get(f"/contacts/{contact_id}/erase").text
    assert "Ley N.º 29733" in page and "huella irreversible (hash)" in page
    unconfirmed = client.post(f"/contacts/{contact_id}/erase", data={"csrf_token": token})
    assert "Marque la casilla" in unconfirmed.text
    erased = client.post(
        f"/contacts/{contact_id}/erase", data={"csrf_token": token, "confirm": "yes"}
    )
    assert "Datos personales eliminados" in erased.text
    assert client.get(f"/contacts/{contact_id}").status_code == 404
    listing = client.get("/suppressions").text
    assert "(eliminado)" in listing and "persona00001" not in listing
    with session_scope() as session:
        (entry,) = list_suppressions(session, world.account_id)
        assert entry.value == "" and entry.reason == "erased"
        with pytest.raises(Conflict):
            service.add_contact(session, world.account_id, "persona00001@example.pe")

    # Importing the address again through the portal does not bring it back.
    _page, form = upload(
        client, world.list_id, "otra-vez.csv", b"email\npersona00001@example.pe\n", token
    )
    moved = confirm(client, world.list_id, form, ["email"], "add_or_update")
    run_tasks()
    figures = client.get(moved.headers["location"] + "/progress").json()["figures"]
    assert (figures["created"], figures["suppressed"]) == (0, 1)


@sqlite_only
def test_contacts_search_detail_consent_and_edit(client: TestClient, world: World) -> None:
    login(client, "editor@example.pe")
    found = client.get("/contacts", params={"q": "persona00002", "list": str(world.list_id)})
    assert "1 contacto<" in found.text and "persona00002@example.pe" in found.text
    contact_id = int(re.search(r'href="/contacts/(\d+)"', found.text).group(1))  # type: ignore[union-attr]
    assert "persona00000" in client.get("/contacts", params={"list": "", "segment": ""}).text
    detail = client.get(f"/contacts/{contact_id}").text
    assert "codigo" in detail and "C00002" in detail and "Proveedores" in detail
    assert "Exportar datos (JSON)" not in detail  # an editor does not export
    token = csrf(client, f"/contacts/{contact_id}")
    withdrawn = client.post(
        f"/contacts/{contact_id}/consents",
        data={"csrf_token": token, "channel": "email", "granted": "0", "source": "llamada"},
    )
    assert "el canal queda dado de baja" in withdrawn.text
    assert "Retirado" in withdrawn.text and "llamada" in withdrawn.text
    bad_phone = client.post(
        f"/contacts/{contact_id}",
        data={"csrf_token": token, "phone": "123", "attr_name": "codigo", "attr_value": "C2"},
    )
    assert "no es un número de teléfono válido" in bad_phone.text
    saved = client.post(
        f"/contacts/{contact_id}",
        data={
            "csrf_token": token,
            "first_name": "Nombre2",
            "phone": "987 654 321",
            "attr_name": "codigo",
            "attr_value": "",
            "new_attr_name": "Distrito",
            "new_attr_value": "Miraflores",
        },
    )
    assert "Contacto actualizado." in saved.text
    with session_scope() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        assert contact.email_status == "unsubscribed"
        assert (contact.phone, contact.attributes) == ("+51987654321", {"distrito": "Miraflores"})


@sqlite_only
def test_suppression_list_add_search_and_remove(client: TestClient, world: World) -> None:
    login(client, "editor@example.pe")
    token = csrf(client, "/suppressions")
    added = client.post(
        "/suppressions",
        data={"csrf_token": token, "channel": "email", "values": "Baja@Example.pe\nno-es-correo\n"},
    )
    assert "1 entrada agregada" in added.text and "no-es-correo" in added.text
    assert "baja@example.pe" in client.get("/suppressions", params={"q": "baja"}).text
    assert "baja@example.pe" not in client.get("/suppressions", params={"channel": "sms"}).text
    remove = {"csrf_token": token, "channel": "email", "value": "baja@example.pe"}
    assert client.post("/suppressions/remove", data=remove).status_code == 403  # editor
    client.post("/logout", data={"csrf_token": token})
    login(client, "manager@example.pe")
    token = csrf(client, "/suppressions")
    removed = client.post("/suppressions/remove", data={**remove, "csrf_token": token})
    assert "ya no está en la lista de supresión" in removed.text


@sqlite_only
@pytest.mark.parametrize("role", ["viewer", "editor", "manager"])
def test_pages_enforce_roles_and_csrf(client: TestClient, world: World, role: str) -> None:
    with session_scope() as session:
        segment = service.create_segment(session, world.account_id, "Todos", {"conditions": []})
        contact = service.find_contact(session, world.account_id, "persona00000@example.pe")
        assert contact is not None
        contact_id, segment_id = contact.id, segment.id
    login(client, f"{role}@example.pe")
    for path in (
        "/contacts",
        f"/contacts/{contact_id}",
        "/segments",
        f"/segments/{segment_id}",
        "/suppressions",
    ):
        assert client.get(path).status_code == 200, path
    may_edit, may_send = role != "viewer", role == "manager"
    assert (client.get("/segments/new").status_code == 200) is may_edit
    for path in (
        f"/lists/{world.list_id}/export.csv",
        f"/segments/{segment_id}/export.xlsx",
        f"/contacts/{contact_id}/export.json",
        f"/contacts/{contact_id}/erase",
    ):
        assert (client.get(path).status_code == 200) is may_send, path
    token = csrf(client, "/contacts")
    posts = [
        ("/suppressions", {"values": "x@example.pe"}),
        (f"/contacts/{contact_id}/consents", {"source": "x"}),
        (f"/segments/{segment_id}", {"name": "Todos", "rules": "{}"}),
        ("/cleanings", {"list_id": str(world.list_id)}),
    ]
    for path, data in posts:
        assert client.post(path, data=data, follow_redirects=False).status_code == 403, path
        answer = client.post(path, data={**data, "csrf_token": token}, follow_redirects=False)
        assert (answer.status_code == 303) is may_edit, path
    upload_form = client.post(
        f"/lists/{world.list_id}/import",
        data={"csrf_token": token},
        files={"file": ("a.csv", b"email\na@b.pe\n", "text/csv")},
    )
    assert (upload_form.status_code == 200) is may_edit


def test_other_accounts_objects_are_not_found(
    client: TestClient, world: World, run_tasks: Callable[[], None]
) -> None:
    login(client, "manager@example.pe")
    token = csrf(client, f"/lists/{world.list_id}")
    _page, form = upload(client, world.list_id, "a.csv", b"email\nnueva@example.pe\n", token)
    import_url = confirm(client, world.list_id, form, ["email"], "add").headers["location"]
    cleaning_url = client.post(
        "/cleanings",
        data={"csrf_token": token, "list_id": str(world.list_id)},
        follow_redirects=False,
    ).headers["location"]
    run_tasks()
    with session_scope() as session:
        segment = service.create_segment(session, world.account_id, "Mío", {"conditions": []})
        contact = service.find_contact(session, world.account_id, "nueva@example.pe")
        assert contact is not None
        contact_id, segment_id = contact.id, segment.id
    client.post("/logout", data={"csrf_token": token})

    login(client, OTHER_ADMIN)
    token = csrf(client, "/contacts")
    assert "nueva@example.pe" not in client.get("/contacts", params={"q": "nueva"}).text
    for path in (
        import_url,
        f"{import_url}/progress",
        f"{import_url}/errors.csv",
        cleaning_url,
        f"{cleaning_url}/progress",
        f"/contacts/{contact_id}",
        f"/contacts/{contact_id}/export.json",
        f"/segments/{segment_id}",
        f"/segments/{segment_id}/export.csv",
        f"/lists/{world.list_id}/export.xlsx",
    ):
        assert client.get(path).status_code == 404, path
    for path, data in (
        (f"/contacts/{contact_id}/erase", {"confirm": "yes"}),
        (f"/contacts/{contact_id}/consents", {"source": "x"}),
        (f"/segments/{segment_id}/delete", {}),
        (f"{cleaning_url}/fixes", {"fix": "a b"}),
        ("/cleanings", {"list_id": str(world.list_id)}),
        (f"/lists/{world.list_id}/import/confirm", {**form, "column": "email"}),
    ):
        assert client.post(path, data={**data, "csrf_token": token}).status_code == 404, path
    assert (
        client.post(
            "/segments/count",
            data={
                "csrf_token": token,
                "rules": json.dumps(
                    {"conditions": [{"field": "list", "op": "in", "value": world.list_id}]}
                ),
            },
        ).json()["error"]
        == f"Condición 1: la lista {world.list_id} no existe"
    )
    with session_scope() as session:
        assert (
            service.get_contact(session, world.account_id, contact_id).email == "nueva@example.pe"
        )
