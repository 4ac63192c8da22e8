"""Demo data for a first look: an account, an admin, a sending domain, contacts, templates
and a draft campaign.  Idempotent: running it again changes nothing already there."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailer.accounts.service import create_account, create_api_key, create_user, first_account
from mailer.audience.service import add_contact, create_list, get_list_by_name, list_size
from mailer.campaigns.service import create_campaign, list_campaigns
from mailer.content.store import create_from_library, list_templates, load_library
from mailer.core.config import Settings
from mailer.core.errors import NotFound
from mailer.delivery.domains import add_domain, load_domain
from mailer.storage.db import session_scope
from mailer.storage.migrate import upgrade

DEMO_ADMIN = "admin@demo.example.pe"
DEMO_DOMAIN = "demo.example.pe"
DEMO_LIST = "Proveedores (demo)"
DEMO_CONTACTS = 40

FIRST_NAMES = [
    "María",
    "José",
    "Rosa",
    "Luis",
    "Carmen",
    "Jorge",
    "Ana",
    "Carlos",
    "Lucía",
    "Miguel",
    "Julia",
    "César",
    "Elena",
    "Víctor",
    "Patricia",
    "Raúl",
    "Sofía",
    "Iván",
]
LAST_NAMES = [
    "Quispe",
    "Flores",
    "Huamán",
    "Mamani",
    "Rojas",
    "Sánchez",
    "García",
    "Chávez",
    "Ramírez",
    "Torres",
    "Vargas",
    "Castillo",
    "Mendoza",
    "Ñahui",
    "Gutiérrez",
]
COMPANIES = [
    "Servicios Andinos S.A.C.",
    "Constructora Pachacútec E.I.R.L.",
    "Distribuidora del Sur S.A.",
    "Tecnologías Amazónicas S.A.C.",
    "Consultores Asociados del Perú S.R.L.",
    "Agroexportadora Chavín S.A.",
]


@dataclass(frozen=True, slots=True)
class DemoResult:
    password: str | None
    api_key: str | None
    api_key_name: str
    list_name: str
    contacts: int
    campaign_id: int | None


def setup_demo(settings: Settings, *, password: str) -> DemoResult:
    upgrade(settings)
    try:
        load_domain(settings.sending_domains_dir, DEMO_DOMAIN)
    except NotFound:
        add_domain(settings.sending_domains_dir, DEMO_DOMAIN)
    new_password: str | None = None
    api_key: str | None = None
    rng = random.Random(29733)
    with session_scope(settings) as session:
        account = first_account(session)
        if account is None:
            account = create_account(session, "Entidad Demo")
            assert account.id is not None
            create_user(session, account.id, DEMO_ADMIN, password, "admin", name="Administración")
            new_password = password
            _key, api_key = create_api_key(session, account.id, "Demo ERP", "manager")
        assert account.id is not None
        account_id = account.id
        lst = get_list_by_name(session, account_id, DEMO_LIST) or create_list(
            session, account_id, DEMO_LIST, "Contactos de ejemplo para probar el envío"
        )
        assert lst.id is not None
        for i in range(DEMO_CONTACTS):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = f"{first[0]}{last}".lower().translate(str.maketrans("áéíóúñ", "aeioun"))
            add_contact(
                session,
                account_id,
                f"{local}{i:02d}@example.pe",
                list_id=lst.id,
                first_name=first,
                last_name=last,
                company=rng.choice(COMPANIES),
                ruc=f"20{rng.randrange(10**8, 10**9)}",
            )
        if not list_templates(session, account_id):
            for item in load_library(settings.templates_dir):
                create_from_library(session, account_id, item)
        templates = list_templates(session, account_id)
        campaign_id = None
        existing = list_campaigns(session, account_id)
        if existing:
            campaign_id = existing[-1].id
        elif templates:
            chosen = next((t for t in templates if t.library_key == "comunicado"), templates[0])
            campaign = create_campaign(
                session,
                account_id,
                name="Comunicado de bienvenida (demo)",
                template_id=chosen.id or 0,
                list_id=lst.id,
                from_email=f"boletin@{DEMO_DOMAIN}",
                from_name="Entidad Demo",
                # The demo addresses are at example.pe, which has no mail servers: the
                # demo campaign goes to the capture relay without cleaning.
                freshness_days=-1,
                created_by="demo",
            )
            campaign_id = campaign.id
        contacts = list_size(session, lst.id)
    return DemoResult(new_password, api_key, "Demo ERP", DEMO_LIST, contacts, campaign_id)
