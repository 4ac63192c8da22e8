"""The portal in a real browser: log in, send the demo campaign through the capture relay,
look at a captured message, import a CSV, edit templates and log out; and a list manager's
flow: a dirty Excel file mapped and imported with live progress, then a segment built with
its live count.

Every step leaves a full-page screenshot in ``tests/e2e/screenshots/`` (git-ignored) for a
visual review.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Error,
    Page,
    Response,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import CHROMIUM_ARGS, Portal

pytestmark = pytest.mark.browser

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 812}
CAMPAIGN = "Comunicado de bienvenida (demo)"
DEMO_LIST = "Proveedores (demo)"
DEMO_CONTACTS = 40
SEND_TIMEOUT = 60.0
CSV = b"email,nombre\nnuevo@example.pe,Nuevo\nmalo-sin-arroba,Malo\n"


@pytest.fixture(scope="module")
def browser(chromium_path: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


class Session:
    """One browser context on the portal, with the page errors it met and its screenshots."""

    def __init__(self, context: BrowserContext, portal: Portal, folder: Path) -> None:
        self.context = context
        self.portal = portal
        self.folder = folder
        self.page = context.new_page()
        self.script_errors: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.script_errors.append(f"{self.page.url}: {exc}"))
        self.page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{self.page.url}: {message.text}")

    def goto(self, path: str) -> None:
        self.page.goto(self.portal.url(path))

    def shot(self, name: str, page: Page | None = None) -> Path:
        """A full-page PNG.  Chromium does not paint sandboxed (cross-origin) iframes that
        are outside the viewport, so a page with iframes is shot in a viewport as tall as
        the page."""
        page = page or self.page
        path = self.folder / f"{name}.png"
        size = page.viewport_size
        if size is None or page.locator("iframe").count() == 0:
            page.screenshot(path=str(path), full_page=True)
            return path
        height = int(page.evaluate("document.documentElement.scrollHeight"))
        page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
        try:
            page.wait_for_timeout(300)  # the frames that came into view paint
            page.screenshot(path=str(path), full_page=True)
        finally:
            page.set_viewport_size(size)
        return path


@pytest.fixture
def session(browser: Browser, portal: Portal, screenshots: Path) -> Iterator[Session]:
    context = browser.new_context(viewport=DESKTOP, locale="es-PE", timezone_id="America/Lima")
    context.set_default_timeout(15_000)
    try:
        yield Session(context, portal, screenshots)
    finally:
        context.close()


def test_portal_flow(session: Session, browser: Browser) -> None:
    login_fails_with_a_wrong_password(session)
    log_in_and_see_the_dashboard(session, browser)
    send_the_demo_campaign(session)
    inspect_the_captured_mail(session)
    import_a_csv_with_a_bad_row(session)
    edit_templates(session)
    log_out(session)
    # The console also reports the expected 401 and 422 answers, so it is only printed
    # (shown when the test fails); uncaught script errors fail the test.
    print("console errors:", *session.console_errors, sep="\n  ")
    assert not session.script_errors, "\n".join(session.script_errors)


def login_fails_with_a_wrong_password(session: Session) -> None:
    page = session.page
    session.goto("/login")
    expect(page).to_have_title(re.compile("Ingresar"))
    page.get_by_label("Correo electrónico").fill(session.portal.email)
    page.get_by_label("Contraseña").fill("no-es-la-clave")
    with page.expect_response(
        lambda r: r.url.endswith("/login") and r.request.method == "POST"
    ) as answer:
        page.get_by_role("button", name="Ingresar").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_have_text("Correo o contraseña incorrectos.")
    expect(page.get_by_label("Correo electrónico")).to_have_value(session.portal.email)
    session.shot("01-login-error")


def log_in_and_see_the_dashboard(session: Session, browser: Browser) -> None:
    page = session.page
    page.get_by_label("Contraseña").fill(session.portal.password)
    page.get_by_role("button", name="Ingresar").click()
    expect(page).to_have_url(session.portal.url("/"))
    row = page.locator("#campaigns tbody tr", has_text=CAMPAIGN)
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("Borrador")
    expect(page.locator("header.topbar")).to_contain_text(session.portal.email)
    session.shot("02-dashboard")

    phone = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="es-PE",
        storage_state=session.context.storage_state(),
    )
    try:
        mobile = phone.new_page()
        mobile.goto(session.portal.url("/"))
        expect(mobile.locator("#campaigns")).to_contain_text(CAMPAIGN)
        session.shot("03-dashboard-phone", mobile)
    finally:
        phone.close()


def send_the_demo_campaign(session: Session) -> None:
    page = session.page
    page.locator("#campaigns").get_by_role("link", name=CAMPAIGN).click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+$"))
    expect(page.locator("#campaign-state")).to_have_text("Borrador")
    expect(page.locator("#count-sent")).to_have_text("0")
    session.shot("04-campaign-draft")

    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    with page.expect_navigation():
        page.locator("#action-send").click()
    assert dialogs, "sending asks for a confirmation first"
    expect(page.get_by_role("status")).to_have_text("Envío iniciado.")

    deadline = time.monotonic() + SEND_TIMEOUT
    state = page.locator("#campaign-state")
    while True:
        try:
            # While sending, the page refreshes itself every 3 s.
            expect(state).to_have_text("Completada", timeout=5_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        with contextlib.suppress(Error):  # a race with the page's own refresh
            page.reload()
    expect(page.locator("#count-sent")).to_have_text(str(DEMO_CONTACTS))
    expect(page.locator(".facts")).to_contain_text("Fin del envío")
    page.wait_for_load_state("load")
    session.shot("05-campaign-completed")


def inspect_the_captured_mail(session: Session) -> None:
    page = session.page
    page.get_by_role("navigation").get_by_role("link", name="Correo capturado").click()
    expect(page).to_have_url(session.portal.url("/captured"))
    expect(page.locator("#captured tbody tr")).to_have_count(DEMO_CONTACTS)
    expect(page.locator(".page-head")).to_contain_text(f"{DEMO_CONTACTS} mensajes")
    session.shot("06-captured-list")

    page.locator("#captured tbody tr").first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"/captured/\d+$"))
    frame = page.frame_locator("iframe.preview-frame")
    expect(frame.locator("body")).not_to_be_empty()
    expect(frame.locator("a").first).to_be_visible()
    box = page.locator("iframe.preview-frame").bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 400
    page.locator("summary", has_text="Cabeceras").click()
    headers = page.locator("details", has=page.locator("summary", has_text="Cabeceras"))
    dkim = headers.locator("tr", has=page.locator("th", has_text=re.compile("^DKIM-Signature$")))
    expect(dkim.first).to_be_visible()
    expect(dkim.first.locator("td")).to_contain_text("d=demo.example.pe")
    expect(headers.locator("th", has_text=re.compile("^List-Unsubscribe$"))).to_be_visible()
    session.shot("07-captured-message")


def import_a_csv_with_a_bad_row(session: Session) -> None:
    page = session.page
    page.get_by_role("navigation").get_by_role("link", name="Listas").click()
    expect(page).to_have_url(session.portal.url("/lists"))
    page.get_by_role("link", name=DEMO_LIST).click()
    expect(page).to_have_url(re.compile(r"/lists/\d+$"))
    expect(page.locator(".page-head")).to_contain_text(f"{DEMO_CONTACTS} contactos")
    session.shot("08-list-detail")

    form = page.locator("#import-form")
    form.locator("input[type=file]").set_input_files(
        {"name": "proveedores-nuevos.csv", "mimeType": "text/csv", "buffer": CSV}
    )
    form.get_by_role("button", name="Continuar").click()
    expect(page).to_have_url(re.compile(r"/lists/\d+/import$"))
    expect(page.get_by_label("Importar «email» como")).to_have_value("email")
    expect(page.get_by_label("Importar «nombre» como")).to_have_value("first_name")
    page.get_by_role("button", name="Importar", exact=True).click()
    expect(page).to_have_url(re.compile(r"/imports/\d+$"))
    expect(page.locator("#import-report")).to_be_visible(timeout=30_000)

    def stat(label: str) -> str:
        caption = page.locator("span", has_text=re.compile(f"^{label}$"))
        return page.locator(".stat", has=caption).locator(".num").inner_text()

    assert stat("Filas") == "2"
    assert stat("Creados") == "1"
    assert stat("Errores") == "1"
    errors = page.locator("#import-errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.first.locator("td").first).to_have_text("3")
    expect(errors.first).to_contain_text("malo-sin-arroba")
    session.shot("09-import-report")


def edit_templates(session: Session) -> None:
    page = session.page
    page.get_by_role("navigation").get_by_role("link", name="Plantillas").click()
    expect(page).to_have_url(session.portal.url("/templates"))
    tiles = page.locator(".grid .tile")
    expect(tiles.first).to_be_visible()
    for index in range(tiles.count()):  # the lazy thumbnails, so the screenshot shows them
        tiles.nth(index).scroll_into_view_if_needed()
        image = tiles.nth(index).locator("img")
        expect(image).to_have_attribute("src", re.compile(r"thumbnail\.png"))
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0",
            arg=image.element_handle(),
            timeout=30_000,
        )
    session.shot("10-templates")

    # A template from the library becomes the account's own, in the editor.
    page.locator("#library .tile button").first.click()
    expect(page).to_have_url(re.compile(r"/templates/\d+$"))
    expect(page.locator(".flash")).to_contain_text("desde la biblioteca")
    expect(page.locator("textarea[name=html]")).not_to_be_empty()
    previews = page.locator("iframe.device-preview")
    expect(previews).to_have_count(3)
    for index, width in enumerate((375, 768, 1200)):
        expect(previews.nth(index)).to_have_attribute("data-width", str(width))
        expect(
            page.frame_locator("iframe.device-preview").nth(index).locator("body")
        ).not_to_be_empty()
    expect(page.locator("#findings")).to_be_visible()
    session.shot("11-template-editor")

    # Seen as a real contact of the demo list.
    list_id = page.evaluate(
        "fetch('/lists').then(r => r.text()).then(t => t.match(/\\/lists\\/(\\d+)/)[1])"
    )
    listing = page.request.get(session.portal.url(f"/lists/{list_id}")).text()
    address = re.search(r"<td>([^<@\s]+@example\.pe)</td>", listing)
    assert address, "no contact address on the list page"
    page.locator("#preview-contact input[name=contact]").fill(address.group(1))
    page.locator("#preview-contact button").click()
    expect(previews.first).to_have_attribute("src", re.compile(r"contact="))
    expect(page.frame_locator("iframe.device-preview").first.locator("body")).not_to_be_empty()

    # A test message through the real delivery path, then it is in the captured mail.
    page.locator("#test-form input[name=addresses]").fill("revisora@example.pe")
    page.locator("#send-test").click()
    expect(page.locator(".flash")).to_contain_text("revisora@example.pe: enviada")
    session.shot("12-template-test-sent")

    # The previews follow what is typed, before anything is saved.
    page.locator("textarea[name=html]").fill(
        "<p>Vista en vivo para {{ contact.first_name }}</p>"
        '<p><a href="{{ unsubscribe_url }}">Darse de baja</a></p>'
    )
    live = page.frame_locator("iframe.device-preview").nth(2).locator("body")
    expect(live).to_contain_text("Vista en vivo para María", timeout=10_000)
    session.shot("12b-template-live-preview")

    # Save a change, then restore the first version.
    page.locator("input[name=subject]").fill("Asunto cambiado en la prueba")
    page.get_by_role("button", name="Guardar").click()
    expect(page.locator(".flash")).to_contain_text("Plantilla guardada")
    expect(page.locator("#versions tr")).to_have_count(2)
    page.locator("#versions button").first.click()
    expect(page.locator(".flash")).to_contain_text("Versión 1 restaurada")
    expect(page.locator("#versions tr")).to_have_count(3)
    expect(page.locator("input[name=subject]")).not_to_have_value("Asunto cambiado en la prueba")
    session.shot("13-template-versions")

    session.goto("/captured")
    expect(page.locator("#captured")).to_contain_text("[PRUEBA]")

    session.goto("/templates/new")
    expect(page.locator("iframe.device-preview")).to_have_count(0)
    page.get_by_label("Nombre").fill("Plantilla rota (e2e)")
    page.get_by_label("Asunto").fill("Prueba")
    page.locator("textarea[name=html]").fill("<p>Hola</p>\n{% if x %}unclosed")
    with page.expect_response(
        lambda r: r.url.endswith("/templates/new") and r.request.method == "POST"
    ) as answer:
        page.get_by_role("button", name="Guardar").click()
    assert answer.value.status == 422
    error = page.locator("#template-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile(r"(línea|line)\s*2\b"))
    # The form keeps what was typed.
    expect(page.locator("textarea[name=html]")).to_have_value("<p>Hola</p>\n{% if x %}unclosed")
    session.shot("14-template-error")


def log_out(session: Session) -> None:
    page = session.page
    page.get_by_role("button", name="Salir").click()
    expect(page).to_have_url(session.portal.url("/login"))
    session.goto("/")
    expect(page).to_have_url(session.portal.url("/login"))
    expect(page.locator("header.topbar")).to_have_count(0)


# -- a list manager's flow: a dirty Excel file, mapped, imported live; a segment built ------

BIG_IMPORT_ROWS = 12_000  # enough for the progress bar to be seen moving
MANAGER_LIST = "Directorio de entidades (e2e)"  # its own list: the demo list stays as it is


def dirty_workbook(rows: int) -> bytes:
    """An office export: blank rows above the headers, headers nobody standardised, a RUC
    sometimes typed as a number, a column without data."""
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Directorio")
    sheet.append([])
    sheet.append([])
    sheet.append(["N°", "E-mail", "Apellidos y nombres", "Entidad", "RUC", "Observación"])
    for i in range(rows):
        entity = f"Municipalidad Provincial {i % 40}" if i % 2 else f"Gobierno Regional {i % 25}"
        ruc: int | str = 20131380951 + i if i % 3 else str(20131380951 + i)
        sheet.append(
            [i + 1, f"mesa{i:05d}@entidad{i % 60}.gob.pe", f"Apellido{i} Nombre", entity, ruc, None]
        )
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def log_in(session: Session) -> None:
    page = session.page
    session.goto("/login")
    page.get_by_label("Correo electrónico").fill(session.portal.email)
    page.get_by_label("Contraseña").fill(session.portal.password)
    page.get_by_role("button", name="Ingresar").click()
    expect(page).to_have_url(session.portal.url("/"))


def fits_a_phone(session: Session, name: str) -> None:
    """The current page at 375 px: nothing wider than the screen (tables scroll inside
    their box), then back to the desktop size."""
    page = session.page
    page.set_viewport_size(PHONE)
    try:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{page.url} is {width} px wide on a phone"
        session.shot(name)
    finally:
        page.set_viewport_size(DESKTOP)


def test_list_manager_flow(session: Session) -> None:
    log_in(session)
    import_a_dirty_excel_file(session)
    build_a_segment_with_a_live_count(session)
    print("console errors:", *session.console_errors, sep="\n  ")
    assert not session.script_errors, "\n".join(session.script_errors)


def import_a_dirty_excel_file(session: Session) -> None:
    page = session.page
    page.get_by_role("navigation").get_by_role("link", name="Listas").click()
    page.get_by_label("Nombre").fill(MANAGER_LIST)
    page.get_by_role("button", name="Crear lista").click()
    expect(page).to_have_url(re.compile(r"/lists/\d+$"))
    expect(page.locator(".flash")).to_contain_text(MANAGER_LIST)
    form = page.locator("#import-form")
    form.locator("input[type=file]").set_input_files(
        {
            "name": "directorio-entidades.xlsx",
            "mimeType": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "buffer": dirty_workbook(BIG_IMPORT_ROWS),
        }
    )
    form.get_by_role("button", name="Continuar").click()
    expect(page).to_have_url(re.compile(r"/lists/\d+/import$"))
    expect(page.locator("#file-facts")).to_contain_text("libro de Excel (.xlsx)")
    expect(page.locator("#sample-rows tbody tr")).to_have_count(5)
    # The automatic mapping found the address, the entity and the RUC ...
    expect(page.get_by_label("Importar «E-mail» como")).to_have_value("email")
    expect(page.get_by_label("Importar «Entidad» como")).to_have_value("company")
    expect(page.get_by_label("Importar «RUC» como")).to_have_value("document")
    names = page.get_by_label("Importar «Apellidos y nombres» como")
    expect(names).to_have_value("attr:apellidos_y_nombres")
    # ... and the list manager fixes the rest.
    names.select_option(label="Apellido")
    page.get_by_label("Importar «N°» como").select_option(label="No importar")
    session.shot("20-import-mapping")
    fits_a_phone(session, "20b-import-mapping-phone")

    progress: list[dict[str, Any]] = []

    def note(response: Response) -> None:
        if re.search(r"/imports/\d+/progress$", response.url) and response.ok:
            progress.append(response.json())

    page.on("response", note)
    page.get_by_role("button", name="Importar", exact=True).click()
    expect(page).to_have_url(re.compile(r"/imports/\d+$"))
    bar = page.locator("#import-progress")
    expect(bar).to_be_visible()
    session.shot("21-import-progress")
    expect(page.locator("#import-report")).to_be_visible(timeout=120_000)
    page.remove_listener("response", note)
    # The bar was polled up to the end, never going back.
    assert progress and progress[-1]["finished"] and progress[-1]["fraction"] == 1.0
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions), fractions

    def stat(key: str) -> str:
        return page.locator(f"[data-stat={key}] .num").inner_text()

    assert stat("rows") == str(BIG_IMPORT_ROWS)
    assert stat("created") == str(BIG_IMPORT_ROWS)
    assert stat("added_to_list") == str(BIG_IMPORT_ROWS)
    assert stat("errors") == "0"
    page.locator("summary", has_text="Columnas importadas").click()
    expect(page.locator("details")).to_contain_text("Apellidos y nombres")
    session.shot("22-import-report")
    fits_a_phone(session, "22b-import-report-phone")


def build_a_segment_with_a_live_count(session: Session) -> None:
    page = session.page
    page.get_by_role("navigation").get_by_role("link", name="Segmentos").click()
    expect(page).to_have_url(session.portal.url("/segments"))
    page.get_by_role("link", name="Nuevo segmento").click()
    expect(page).to_have_url(session.portal.url("/segments/new"))
    count = page.locator("#segment-count")
    expect(count).to_contain_text("contactos coinciden")
    everyone = count.inner_text()
    page.get_by_label("Nombre").fill("Municipalidades provinciales (e2e)")

    page.get_by_role("button", name="Agregar condición").click()
    row = page.locator("#rule-rows li").first
    expect(row.get_by_label("Campo")).to_have_value("company")
    expect(row.get_by_label("Operador")).to_have_value("contains")
    # An empty value is a condition not finished yet: said in the count, on its row.
    expect(count).to_have_text("Condición 1: indique un valor para comparar")
    expect(row).to_have_class(re.compile("invalid"))
    row.get_by_label("Valor").fill("Municipalidad Provincial")
    half = BIG_IMPORT_ROWS // 2
    expect(count).to_have_text(f"{half:,} contactos coinciden · {half:,} pueden recibir correo")
    assert count.inner_text() != everyone
    session.shot("23-segment-builder")

    # A second condition on a status field: its value is a list of statuses.
    page.get_by_role("button", name="Agregar condición").click()
    second = page.locator("#rule-rows li").nth(1)
    second.get_by_label("Campo").select_option(label="Estado (correo)")
    expect(second.get_by_label("Operador")).to_have_value("eq")
    expect(second.get_by_label("Valor")).to_have_value("active")
    expect(count).to_have_text(f"{half:,} contactos coinciden · {half:,} pueden recibir correo")
    second.get_by_label("Valor").select_option(label="De baja")
    expect(count).to_have_text("0 contactos coinciden · 0 pueden recibir correo")
    second.get_by_role("button", name="Quitar condición").click()
    expect(page.locator("#rule-rows li")).to_have_count(1)
    expect(count).to_have_text(f"{half:,} contactos coinciden · {half:,} pueden recibir correo")

    page.get_by_role("button", name="Guardar segmento").click()
    expect(page).to_have_url(re.compile(r"/segments/\d+$"))
    expect(page.locator(".flash")).to_contain_text("guardado")
    expect(page.locator("#rule-rows li").first.get_by_label("Valor")).to_have_value(
        "Municipalidad Provincial"
    )
    expect(count).to_have_text(f"{half:,} contactos coinciden · {half:,} pueden recibir correo")
    session.shot("24-segment-saved")
    fits_a_phone(session, "25-segment-phone")

    page.get_by_role("navigation").get_by_role("link", name="Segmentos").click()
    listing = page.locator("#segments tbody tr", has_text="Municipalidades provinciales (e2e)")
    expect(listing).to_contain_text("Empresa contiene Municipalidad Provincial")
    expect(listing.locator("td.num").first).to_have_text(str(half))
    session.shot("26-segments")


def test_integrator_credentials_flow(session: Session) -> None:
    """An administrator gives an application its API key in the portal: shown once, usable
    against the API at once, refused as soon as it is revoked."""
    page = session.page
    log_in(session)
    page.get_by_role("link", name="Integraciones").click()
    expect(page).to_have_url(session.portal.url("/integrations"))
    form = page.locator("form").filter(
        has=page.get_by_role("heading", name="Crear una clave de API")
    )
    form.get_by_label("Aplicación (nombre)").fill("ERP de compras")
    form.get_by_label("Rol").select_option("manager")
    form.get_by_role("button", name="Crear clave").click()
    expect(page.get_by_role("heading", name="Clave de API creada")).to_be_visible()
    secret = page.locator("#secret").inner_text().strip()
    assert secret.startswith("mk_")
    session.shot("integrations-key-created")
    fits_a_phone(session, "integrations-key-created-phone")

    def me() -> int:
        request = urllib.request.Request(
            session.portal.url("/api/v1/me"), headers={"Authorization": f"Bearer {secret}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return int(refused.code)

    assert me() == 200
    session.goto("/integrations")
    assert secret not in page.content()  # shown once
    row = page.get_by_role("row").filter(has_text="ERP de compras")
    row.get_by_role("button", name="Revocar").click()
    expect(page.get_by_text("Se revocó la clave «ERP de compras»")).to_be_visible()
    session.shot("integrations-key-revoked")
    assert me() == 401
    assert not session.script_errors, "\n".join(session.script_errors)
