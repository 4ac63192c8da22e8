"""Contacts, typed attributes, consent, suppression, segments and personal-data requests on
both database backends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import openpyxl
import pytest
from sqlalchemy import select

from mailer.accounts.service import create_account
from mailer.audience import service
from mailer.audience.importer import SeenTable
from mailer.audience.models import ChannelStatus, Contact, Suppression
from mailer.audience.suppression import is_suppressed, suppress, value_hash
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import Conflict, ValidationFailed
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message
from mailer.storage.db import session_scope


@pytest.fixture
def world(settings: Settings) -> tuple[int, int, int]:
    """An account with two lists; returns (account, list A, list B)."""
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        first = service.create_list(session, account.id, "Proveedores")
        second = service.create_list(session, account.id, "Ciudadanos")
        assert first.id and second.id
        return account.id, first.id, second.id


def xlsx(path: Path, rows: list[list[object]]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


def test_xlsx_with_mapping_typed_attributes_and_bad_values(
    tmp_path: Path, world: tuple[int, int, int]
) -> None:
    account_id, list_id, _ = world
    with session_scope() as session:
        service.define_attribute(session, account_id, "monto", "number")
        service.define_attribute(session, account_id, "vence", "date")
        service.define_attribute(session, account_id, "activo", "boolean")
    path = xlsx(
        tmp_path / "proveedores.xlsx",
        [
            ["Correo", "Razón Social", "Celular", "Monto", "Vence", "Activo", "Notas internas"],
            ["ana@empresa.pe", "ACME S.A.C.", 987654321, "1.234,50", "31/12/2026", "sí", "x"],
            ["luis@empresa.pe", "Beta E.I.R.L.", "01 4123456", 800, "2026-06-30", "no", "y"],
            ["rosa@empresa.pe", "Gamma", "12", "mucho", "ayer", "quizá", "z"],
            ["sin-arroba", "Delta", "", "", "", "", ""],
        ],
    )
    mapping = {
        "Correo": "email",
        "Razón Social": "company",
        "Celular": "phone",
        "Monto": "attr:monto",
        "Vence": "attr:vence",
        "Activo": "attr:activo",
        "Notas internas": "",  # not imported
    }
    with session_scope() as session:
        report = service.import_contacts(
            session, account_id, path, list_id=list_id, mapping=mapping
        )
    assert report.format == "xlsx"
    assert (report.rows, report.created) == (4, 3)
    problems = {(e.line, e.column) for e in report.errors}
    assert problems == {(4, "Celular"), (4, "Monto"), (4, "Vence"), (4, "Activo"), (5, "Correo")}
    with session_scope() as session:
        contacts = {
            c.email: c
            for c in session.execute(select(Contact)).scalars()
            if c.account_id == account_id
        }
    ana, luis, rosa = (contacts[f"{n}@empresa.pe"] for n in ("ana", "luis", "rosa"))
    assert ana.attributes == {"monto": 1234.5, "vence": "2026-12-31", "activo": True}
    assert (ana.phone, ana.phone_kind, ana.company) == ("+51987654321", "mobile", "ACME S.A.C.")
    assert luis.attributes == {"monto": 800, "vence": "2026-06-30", "activo": False}
    assert luis.phone_kind == "fixed_line" and luis.phone == "+5114123456"
    assert rosa.attributes == {} and rosa.phone == ""  # bad values dropped, contact kept
    # A re-run of the same file changes nothing.
    with session_scope() as session:
        again = service.import_contacts(session, account_id, path, list_id=list_id, mapping=mapping)
    assert (again.created, again.updated, again.unchanged, again.added_to_list) == (0, 0, 3, 0)


def test_a_mapping_with_an_unknown_target_is_refused_clearly(
    tmp_path: Path, world: tuple[int, int, int]
) -> None:
    account_id, list_id, _ = world
    path = tmp_path / "a.csv"
    path.write_text("mail,x\nana@empresa.pe,1\n", encoding="utf-8")
    with session_scope() as session, pytest.raises(ValidationFailed, match="unknown target"):
        service.import_contacts(
            session, account_id, path, list_id=list_id, mapping={"mail": "email", "x": "salary"}
        )
    with session_scope() as session, pytest.raises(ValidationFailed, match="both mapped"):
        service.import_contacts(
            session, account_id, path, list_id=list_id, mapping={"mail": "email", "x": "email"}
        )


def test_suppressed_addresses_are_not_imported_nor_added(
    tmp_path: Path, world: tuple[int, int, int]
) -> None:
    account_id, list_id, _ = world
    with session_scope() as session:
        suppress(session, account_id, "email", ["Baja@Empresa.pe"], "unsubscribed", "test")
    path = tmp_path / "c.csv"
    path.write_text("email\nbaja@empresa.pe\nalta@empresa.pe\n", encoding="utf-8")
    with session_scope() as session:
        report = service.import_contacts(session, account_id, path, list_id=list_id)
        assert (report.created, report.suppressed, report.added_to_list) == (1, 1, 1)
        with pytest.raises(Conflict, match="suppression list"):
            service.add_contact(session, account_id, "BAJA@empresa.pe")


def test_consent_withdrawal_unsubscribes_and_suppresses_at_once(
    world: tuple[int, int, int],
) -> None:
    account_id, list_id, _ = world
    with session_scope() as session:
        contact = service.add_contact(
            session,
            account_id,
            "ana@empresa.pe",
            list_id=list_id,
            consent={
                "channel": "email",
                "source": "formulario",
                "ip": "190.1.2.3",
                "text": "Acepto",
            },
        )
        assert contact.id
        contact_id = contact.id
        service.record_consent(session, contact, channel="email", granted=False, source="llamada")
        assert contact.email_status == ChannelStatus.UNSUBSCRIBED
        assert is_suppressed(session, account_id, "email", "ana@empresa.pe")
        counts = service.audience_counts(session, account_id, list_id=list_id)
        assert counts == {"matching": 1, "sendable": 0}
        service.record_consent(session, contact, channel="email", granted=True, source="web")
        assert contact.email_status == ChannelStatus.ACTIVE
        assert not is_suppressed(session, account_id, "email", "ana@empresa.pe")
        history = service.consents_of(session, contact_id)
    assert [(c.granted, c.source) for c in history] == [
        (True, "formulario"),
        (False, "llamada"),
        (True, "web"),
    ]
    assert history[0].ip == "190.1.2.3" and history[0].text == "Acepto"


def test_export_and_erasure_leave_only_a_hash(world: tuple[int, int, int], tmp_path: Path) -> None:
    account_id, list_id, _ = world
    with session_scope() as session:
        contact = service.add_contact(
            session,
            account_id,
            "ana@empresa.pe",
            list_id=list_id,
            first_name="Ana",
            phone="987654321",
        )
        assert contact.id
        contact_id = contact.id
        service.record_consent(session, contact, source="formulario")
        session.add(
            Message(
                account_id=account_id,
                contact_id=contact_id,
                to_address=contact.email,
                to_name="Ana",
                state="sent",
            )
        )
        session.add(
            Event(
                account_id=account_id,
                kind=EventKind.OPENED,
                contact_id=contact_id,
                data={"ua": "x"},
            )
        )
    with session_scope() as session:
        data = service.export_contact(session, account_id, contact_id)
    assert data["contact"]["email"] == "ana@empresa.pe"
    assert data["lists"] == ["Proveedores"]
    assert len(data["consents"]) == 1 and len(data["messages"]) == 1 and len(data["events"]) == 1
    with session_scope() as session:
        digest = service.erase_contact(session, account_id, contact_id, source="test")
    with session_scope() as session:
        assert session.get(Contact, contact_id) is None
        entries = list(session.execute(select(Suppression)).scalars())
        assert {(e.channel, e.value, e.reason) for e in entries} == {
            ("email", "", "erased"),
            ("sms", "", "erased"),
        }
        assert digest == value_hash("email", "ana@empresa.pe")
        message = session.execute(select(Message)).scalar_one()
        assert message.to_address == "erased@invalid" and message.contact_id is None
        assert session.execute(select(Event)).scalar_one().data == {}
    # The address cannot come back, by import or by hand.
    path = tmp_path / "again.csv"
    path.write_text("email,nombre\nana@empresa.pe,Ana\n", encoding="utf-8")
    with session_scope() as session:
        report = service.import_contacts(session, account_id, path, list_id=list_id)
        assert (report.created, report.suppressed) == (0, 1)
        with pytest.raises(Conflict):
            service.add_contact(session, account_id, "ana@empresa.pe")


def test_segments_over_fields_attributes_lists_status_and_engagement(
    world: tuple[int, int, int],
) -> None:
    account_id, suppliers, citizens = world
    with session_scope() as session:
        service.define_attribute(session, account_id, "monto", "number")
        service.define_attribute(session, account_id, "vence", "date")
        people = {
            "ana": service.add_contact(
                session,
                account_id,
                "ana@acme.pe",
                list_id=suppliers,
                company="ACME S.A.C.",
                attributes={"monto": 1500, "vence": "2026-01-31", "ciudad": "Lima"},
            ),
            "luis": service.add_contact(
                session,
                account_id,
                "luis@beta.pe",
                list_id=suppliers,
                company="Beta 100% E.I.R.L.",
                attributes={"monto": 300, "vence": "2027-01-31", "ciudad": "Cusco"},
            ),
            "rosa": service.add_contact(
                session,
                account_id,
                "rosa@gmail.com",
                list_id=citizens,
                attributes={"ciudad": "lima"},
            ),
            "baja": service.add_contact(session, account_id, "baja@acme.pe", list_id=suppliers),
        }
        service.set_channel_status(session, people["baja"], "email", ChannelStatus.UNSUBSCRIBED)
        session.add(
            Event(
                account_id=account_id,
                kind=EventKind.OPENED,
                contact_id=people["ana"].id,
                occurred_at=utcnow() - timedelta(days=3),
            )
        )
        # Rosa's "open" was Apple's proxy fetching the pixel, and a scanner followed a
        # link: neither is engagement.
        for kind in (EventKind.OPENED, EventKind.CLICKED):
            session.add(
                Event(
                    account_id=account_id,
                    kind=kind,
                    contact_id=people["rosa"].id,
                    occurred_at=utcnow() - timedelta(days=1),
                    machine=True,
                )
            )
        session.add(
            Event(
                account_id=account_id,
                kind=EventKind.OPENED,
                contact_id=people["luis"].id,
                occurred_at=utcnow() - timedelta(days=60),
            )
        )

        def who(*conditions: dict[str, object], match: str = "all") -> set[str]:
            rules = {"match": match, "conditions": list(conditions)}
            checked = service.check_rules(session, account_id, rules)
            segment = service.create_segment(session, account_id, f"s{len(created)}", checked)
            created.append(segment)
            contacts, _total = service.search_contacts(
                session, account_id, segment_id=segment.id, limit=100
            )
            return {c.email.split("@")[0] for c in contacts}

        created: list[object] = []
        assert who({"field": "company", "op": "contains", "value": "acme"}) == {"ana"}
        assert who({"field": "company", "op": "contains", "value": "100%"}) == {"luis"}
        assert who({"field": "attr:monto", "op": "gt", "value": "1000"}) == {"ana"}
        assert who({"field": "attr:vence", "op": "before", "value": "2026-06-01"}) == {"ana"}
        assert who({"field": "attr:ciudad", "op": "eq", "value": "LIMA"}) == {"ana", "rosa"}
        assert who({"field": "list", "op": "in", "value": citizens}) == {"rosa"}
        assert who({"field": "list", "op": "not_in", "value": [citizens]}) == {
            "ana",
            "luis",
            "baja",
        }
        assert who({"field": "email_status", "op": "eq", "value": "unsubscribed"}) == {"baja"}
        assert who({"field": "engagement", "op": "opened_within", "value": 30}) == {"ana"}
        assert who({"field": "engagement", "op": "never_opened"}) == {"rosa", "baja"}
        assert who({"field": "engagement", "op": "clicked_within", "value": 30}) == set()
        assert who(
            {"field": "email_domain", "op": "eq", "value": "gmail.com"},
            {
                "match": "all",
                "conditions": [
                    {"field": "attr:monto", "op": "gte", "value": 1500},
                    {"field": "engagement", "op": "opened_within", "value": 7},
                ],
            },
            match="any",
        ) == {"rosa", "ana"}
        # Live count: the unsubscribed contact matches but cannot be mailed.
        counts = service.count_matching(
            session, account_id, {"conditions": [{"field": "list", "op": "in", "value": suppliers}]}
        )
        assert counts == {"matching": 3, "sendable": 2}


@pytest.mark.parametrize(
    ("rules", "where", "message"),
    [
        (
            {"conditions": [{"field": "salario", "op": "eq", "value": 1}]},
            "rules.conditions[0]",
            "unknown field",
        ),
        (
            {"conditions": [{"field": "company", "op": "gt", "value": 1}]},
            "rules.conditions[0]",
            "does not apply",
        ),
        (
            {"conditions": [{"field": "attr:monto", "op": "gt", "value": "mucho"}]},
            "rules.conditions[0]",
            "not a number",
        ),
        (
            {"conditions": [{"field": "list", "op": "in", "value": 999}]},
            "rules.conditions[0]",
            "does not exist",
        ),
        (
            {"conditions": [{}, {"match": "any", "conditions": [{"field": "x"}]}]},
            "rules.conditions[0]",
            "unknown field",
        ),
        ({"match": "some"}, "rules", "match must be"),
    ],
)
def test_bad_rules_say_which_condition_and_why(
    world: tuple[int, int, int], rules: dict[str, object], where: str, message: str
) -> None:
    account_id, _, _ = world
    with session_scope() as session:
        service.define_attribute(session, account_id, "monto", "number")
        with pytest.raises(ValidationFailed, match=message) as caught:
            service.create_segment(session, account_id, "Mal", rules)
    assert caught.value.field == where


def test_seen_table_finds_duplicates_and_grows() -> None:
    seen = SeenTable(capacity=8)
    addresses = [f"persona{i}@example.pe" for i in range(50_000)]
    assert all(seen.add(a) for a in addresses)
    assert not any(seen.add(a) for a in addresses[::97])
    assert seen.add("otra@example.pe")


def test_phones_are_suppressed_in_the_form_contacts_store_them(
    world: tuple[int, int, int],
) -> None:
    account_id, _, _ = world
    with session_scope() as session:
        suppress(session, account_id, "sms", ["987 654 321"], "unsubscribed", "test")
        assert is_suppressed(session, account_id, "sms", "+51987654321")
        assert is_suppressed(session, account_id, "sms", "0051-987-654-321")
        assert not is_suppressed(session, account_id, "sms", "+51987654322")
