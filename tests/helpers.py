"""Test helpers: a ready account with a sending domain, a list, a template and a campaign,
and a recording capture relay."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dkim

from mailer.accounts.service import create_account, create_api_key, create_user
from mailer.audience.service import create_list, import_contacts
from mailer.campaigns.service import create_campaign, get_campaign
from mailer.content.store import create_template
from mailer.core.config import Settings
from mailer.delivery.capture import CaptureRelay
from mailer.delivery.domains import add_domain, load_domain
from mailer.storage.db import session_scope

DOMAIN = "envios.example.pe"

TEMPLATE_HTML = """<!doctype html><html><head><style>
p { color: #333333; font-family: Arial, sans-serif; }
@media only screen and (max-width: 620px) { p { font-size: 18px !important; } }
</style></head><body>
<p>Hola {{ contact.first_name | default("proveedor", true) }} de {{ contact.company }},</p>
<p>Su código es <strong>{{ contact.codigo }}</strong>.</p>
<p><a href="https://www.example.pe/portal?c={{ contact.codigo }}">Ingresar</a></p>
<p><a href="{{ unsubscribe_url }}">Darse de baja</a></p>
</body></html>"""


@dataclass
class Recorder:
    """Sink of a capture relay: every (mail_from, rcpt_tos, data) it accepted."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self.lock:
            self.messages.append((mail_from, rcpt_tos, data))


@dataclass(frozen=True)
class World:
    account_id: int
    list_id: int
    template_id: int
    campaign_id: int
    api_key: str
    admin_email: str
    admin_password: str


def contacts_csv(path: Path, count: int, *, extra_rows: str = "") -> Path:
    lines = ["email,nombre,empresa,codigo"]
    lines += [
        f"persona{i:05d}@example.pe,Nombre{i},Empresa {i} S.A.C.,C{i:05d}" for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n" + extra_rows, encoding="utf-8")
    return path


def build_world(settings: Settings, tmp_path: Path, recipients: int) -> World:
    try:
        load_domain(settings.sending_domains_dir, DOMAIN)
    except Exception:
        add_domain(settings.sending_domains_dir, DOMAIN)
    with session_scope(settings) as session:
        account = create_account(session, "Entidad de prueba")
        assert account.id
        create_user(session, account.id, "admin@example.pe", "admin password 123", "admin")
        _key, api_key = create_api_key(session, account.id, "Pruebas", "manager")
        lst = create_list(session, account.id, "Proveedores")
        assert lst.id
        import_contacts(
            session,
            account.id,
            contacts_csv(tmp_path / "contacts.csv", recipients),
            list_id=lst.id,
        )
        template = create_template(
            session,
            account.id,
            name="Aviso",
            subject="Aviso para {{ contact.first_name }} ñandú",
            html=TEMPLATE_HTML,
        )
        assert template.id
        campaign = create_campaign(
            session,
            account.id,
            name="Campaña de prueba",
            template_id=template.id,
            list_id=lst.id,
            from_email=f"boletin@{DOMAIN}",
            from_name="Entidad Pública",
        )
        assert campaign.id
        return World(
            account.id,
            lst.id,
            template.id,
            campaign.id,
            api_key,
            "admin@example.pe",
            "admin password 123",
        )


def start_recording_relay() -> tuple[CaptureRelay, Recorder]:
    recorder = Recorder()
    relay = CaptureRelay("127.0.0.1", 0, sink=recorder)
    relay.start()
    return relay, recorder


def wait_for_state(settings: Settings, world: World, states: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            state = get_campaign(session, world.account_id, world.campaign_id).state
        if state in states:
            return state
        time.sleep(0.2)
    raise AssertionError(f"campaign still {state!r} after {timeout}s")


def dkim_verifies(settings: Settings, data: bytes) -> bool:
    sending = load_domain(settings.sending_domains_dir, DOMAIN)
    records = {name: value for name, kind, value in sending.records() if kind == "TXT"}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    return bool(dkim.verify(data, dnsfunc=dnsfunc))
