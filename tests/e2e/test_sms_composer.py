"""The SMS composer in a real browser: the live counter follows every keystroke (encoding,
characters, parts, room left in the part, the characters that force UCS-2), the accent
replacement shows its saving, a personalised text is flagged as an estimate, and a send to
numbers lists the rejected ones and is delivered through the capture gateway of
``mailer demo --serve``.

Screenshots go to ``tests/e2e/screenshots/sms/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    Error,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import CHROMIUM_ARGS, SCREENSHOTS, Portal

pytestmark = pytest.mark.browser

DESKTOP: ViewportSize = {"width": 1280, "height": 1000}
SPANISH = "Canción: ¿Qué tal, señor Núñez?"
DELIVERY_TIMEOUT = 30.0


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


@pytest.fixture(scope="module")
def shots() -> Path:
    """This module's screenshots, apart from the portal test's (which empties its own)."""
    folder = SCREENSHOTS / "sms"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


@pytest.fixture
def page(browser: Browser, portal: Portal) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, locale="es-PE", timezone_id="America/Lima")
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(portal.url("/login"))
        page.get_by_label("Correo electrónico").fill(portal.email)
        page.get_by_label("Contraseña").fill(portal.password)
        page.get_by_role("button", name="Ingresar").click()
        expect(page).to_have_url(portal.url("/"))
        yield page
    finally:
        context.close()


def counter_shows(page: Page, encoding: str, characters: int, parts: int, left: int) -> None:
    expect(page.locator("#sms-encoding")).to_have_text(encoding)
    expect(page.locator("#sms-characters")).to_have_text(str(characters))
    expect(page.locator("#sms-parts")).to_have_text(str(parts))
    expect(page.locator("#sms-remaining")).to_have_text(str(left))


def test_live_counter_and_accent_replacement(page: Page, portal: Portal, shots: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.get_by_role("navigation").get_by_role("link", name="SMS").click()
    expect(page).to_have_url(portal.url("/sms"))
    page.locator("#compose-sms").click()
    expect(page).to_have_url(portal.url("/sms/new"))
    text = page.locator("#sms-text")

    text.fill("a" * 160)
    counter_shows(page, "GSM-7", 160, 1, 0)
    expect(page.locator("#sms-ucs2")).to_be_hidden()
    text.press("End")
    text.press_sequentially("a")  # one keystroke more
    counter_shows(page, "GSM-7", 161, 2, 153 * 2 - 161)
    expect(page.locator("#sms-per-part")).to_have_text("153")
    text.press("Backspace")
    counter_shows(page, "GSM-7", 160, 1, 0)
    text.press_sequentially("€")  # an extension character: two septets
    counter_shows(page, "GSM-7", 161, 2, 153 * 2 - 162)
    page.screenshot(path=str(shots / "01-gsm7-two-parts.png"), full_page=True)

    text.fill("")
    text.press_sequentially(SPANISH)
    counter_shows(page, "UCS-2 (Unicode)", len(SPANISH), 1, 70 - len(SPANISH))
    panel = page.locator("#sms-ucs2")
    expect(panel).to_be_visible()
    expect(page.locator("#sms-ucs2-chars code")).to_have_text(["ó", "ú"])
    expect(page.locator("#sms-highlight mark")).to_have_text(["ó", "ú"])
    page.screenshot(path=str(shots / "02-ucs2-highlighted.png"), full_page=True)

    page.get_by_role("button", name="Reemplazar caracteres especiales").click()
    expect(text).to_have_value("Cancion: ¿Qué tal, señor Nuñez?")  # é ñ ¿ are GSM-7
    counter_shows(page, "GSM-7", len(SPANISH), 1, 160 - len(SPANISH))
    expect(panel).to_be_hidden()
    saving = page.locator("#sms-saving")
    expect(saving).to_contain_text("Reemplazados: ó ú.")
    expect(saving).to_contain_text("Sigue en 1 parte(s)")
    page.screenshot(path=str(shots / "03-replaced.png"), full_page=True)

    text.fill("Aviso: " + "á" * 3 + "a" * 190)  # 200 UTF-16 units: 67 + 67 + 66
    counter_shows(page, "UCS-2 (Unicode)", 200, 3, 1)
    page.get_by_role("button", name="Reemplazar caracteres especiales").click()
    expect(saving).to_contain_text("Ahorro: de 3 a 2 partes.")
    counter_shows(page, "GSM-7", 200, 2, 153 * 2 - 200)

    text.fill("Hola {{ contact.first_name }}, su cita es mañana.")
    expect(page.locator("#sms-personal")).to_be_visible()
    expect(page.locator("#sms-personal")).to_contain_text("estimación")
    expect(page.locator("#sms-estimate")).to_contain_text("1 parte(s)")
    text.fill("Hola {{ contact.first_name ")
    expect(page.locator("#sms-template-error")).to_contain_text("línea 1")
    page.screenshot(path=str(shots / "04-personalised.png"), full_page=True)
    assert not errors, errors


def test_send_to_numbers_from_the_composer(page: Page, portal: Portal, shots: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(portal.url("/sms/new"))
    page.locator("#sms-text").fill("Su trámite N.º 118 está listo.")
    page.get_by_label("Números", exact=True).check()
    expect(page.locator("#sms-list")).to_be_hidden()
    expect(page.locator("#action-draft")).to_be_hidden()
    page.locator("#sms-numbers").fill("987654321\n01 4261234")
    expect(page.locator("#sms-cost")).to_contain_text("1 parte(s) × 2 destinatario(s) = 2 SMS")
    page.screenshot(path=str(shots / "05-numbers.png"), full_page=True)
    page.get_by_role("button", name="Enviar ahora").click()
    expect(page.locator("#sms-queued-count")).to_have_text("1")
    expect(page.locator("#sms-rejected")).to_contain_text("no es un celular (teléfono fijo)")
    page.screenshot(path=str(shots / "06-queued.png"), full_page=True)

    page.goto(portal.url("/sms"))
    row = page.locator("#sms-recent tbody tr", has_text="+51987654321")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        try:
            expect(row).to_contain_text("Entregado", timeout=2_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        with contextlib.suppress(Error):
            page.reload()
    expect(row).to_contain_text(re.compile(r"user:\d+"))
    page.screenshot(path=str(shots / "07-delivered.png"), full_page=True)
    assert not errors, errors


def test_a_draft_campaign_to_a_list_then_sent_from_its_page(
    page: Page, portal: Portal, shots: Path
) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(portal.url("/sms/new"))
    page.get_by_label("Nombre de la campaña").fill("Aviso por SMS (demo)")
    page.locator("#sms-text").fill("Hola {{ contact.first_name }}: el portal cierra el 30/11.")
    demo_list = page.locator("#sms-list option", has_text="Proveedores (demo)")
    page.locator("#sms-list").select_option(demo_list.get_attribute("value") or "")
    # The demo's contacts have no mobile numbers: nobody in the list can receive SMS.
    expect(page.locator("#sms-cost")).to_contain_text("× 0 destinatario(s)")
    page.get_by_role("button", name="Guardar borrador").click()
    expect(page).to_have_url(re.compile(r"/sms/campaigns/\d+$"))
    expect(page.get_by_role("status")).to_contain_text("Borrador guardado.")
    expect(page.locator("#campaign-state")).to_have_text("Borrador")
    expect(page.locator("#sms-reach")).to_contain_text("0 / ")
    page.screenshot(path=str(shots / "08-campaign-draft.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#action-send").click()
    expect(page.get_by_role("status")).to_have_text("Envío iniciado.")
    expect(page.locator("#campaign-state")).to_have_text("Completada")
    expect(page.locator("#stat-recipients")).to_have_text("0")
    page.screenshot(path=str(shots / "09-campaign-sent.png"), full_page=True)
    page.goto(portal.url("/sms"))
    expect(page.locator("#sms-campaigns")).to_contain_text("Aviso por SMS (demo)")
    assert not errors, errors
