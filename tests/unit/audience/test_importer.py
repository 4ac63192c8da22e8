from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from mailer.accounts.service import create_account
from mailer.audience.models import Contact
from mailer.audience.service import create_list, import_contacts, list_size
from mailer.core.config import Settings
from mailer.core.errors import ValidationFailed
from mailer.storage.db import session_scope


@pytest.fixture
def account_and_list(settings: Settings) -> tuple[int, int]:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        lst = create_list(session, account.id, "Proveedores")
        assert lst.id
        return account.id, lst.id


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_bad_rows_reported_by_line_good_rows_imported(
    tmp_path: Path, account_and_list: tuple[int, int]
) -> None:
    account_id, list_id = account_and_list
    csv_file = write(
        tmp_path,
        "contacts.csv",
        "email,nombre,empresa,ruc\n"
        "ana@example.pe,Ana,ACME,20100000001\n"
        "not-an-email,Bad,ACME,1\n"
        'luis@example.pe,Luis,"Servicios, S.A.C.",20100000002\n'
        "broken@example.pe,Only two\n"
        "\n"
        "ANA@example.pe,Ana again,ACME,20100000001\n"
        "rosa@example.pe,Rosa,,\n",
    )
    with session_scope() as session:
        report = import_contacts(session, account_id, csv_file, list_id=list_id)
    assert (report.rows, report.created, report.duplicates_in_file) == (6, 3, 1)
    assert [(e.line, e.column) for e in report.errors] == [(3, "email"), (5, "*")]
    assert "columns" in report.errors[1].reason
    assert report.mapping == {
        "email": "email",
        "nombre": "first_name",
        "empresa": "company",
        "ruc": "document",
    }
    with session_scope() as session:
        assert list_size(session, list_id) == 3
        luis = session.exec(select(Contact).where(Contact.email == "luis@example.pe")).one()
        assert luis.company == "Servicios, S.A.C." and luis.document == "20100000002"
    # The same file again changes nothing.
    with session_scope() as session:
        again = import_contacts(session, account_id, csv_file, list_id=list_id)
    assert (again.created, again.updated, again.unchanged, again.added_to_list) == (0, 0, 3, 0)


def test_windows_1252_semicolons_and_bom(tmp_path: Path, account_and_list: tuple[int, int]) -> None:
    account_id, list_id = account_and_list
    cp1252 = write(
        tmp_path,
        "excel.csv",
        "Correo Electrónico;Nombres;Apellidos;Teléfono\r\n"
        "jose@example.pe;José;Núñez;987654321\r\n"
        "maria@example.pe;María;Peña;\r\n",
        encoding="cp1252",
    )
    bom = write(tmp_path, "bom.csv", "\ufeffemail,first_name\nzoe@example.pe,Zoë\n")
    with session_scope() as session:
        first = import_contacts(session, account_id, cp1252, list_id=list_id)
        second = import_contacts(session, account_id, bom, list_id=list_id)
    assert first.encoding == "cp1252" and first.delimiter == ";" and first.created == 2
    assert second.encoding == "utf-8-sig" and second.created == 1
    with session_scope() as session:
        jose = session.exec(select(Contact).where(Contact.email == "jose@example.pe")).one()
        assert (jose.first_name, jose.last_name, jose.phone) == ("José", "Núñez", "+51987654321")
        assert jose.phone_kind == "mobile" and jose.email_domain == "example.pe"
        zoe = session.exec(select(Contact).where(Contact.email == "zoe@example.pe")).one()
        assert zoe.first_name == "Zoë"


def test_update_modes(tmp_path: Path, account_and_list: tuple[int, int]) -> None:
    account_id, list_id = account_and_list
    base = write(tmp_path, "a.csv", "email,nombre\nana@example.pe,Ana\n")
    changed = write(tmp_path, "b.csv", "email,nombre\nana@example.pe,Ana María\nnew@example.pe,N\n")
    with session_scope() as session:
        import_contacts(session, account_id, base, list_id=list_id)
        add_only = import_contacts(session, account_id, changed, mode="add")
        assert (add_only.created, add_only.unchanged) == (1, 1)
        update_only = import_contacts(session, account_id, changed, mode="update")
        assert (update_only.updated, update_only.unchanged) == (1, 1)
        ana = session.exec(select(Contact).where(Contact.email == "ana@example.pe")).one()
        assert ana.first_name == "Ana María"


def test_file_without_email_column_is_refused_clearly(
    tmp_path: Path, account_and_list: tuple[int, int]
) -> None:
    account_id, list_id = account_and_list
    path = write(tmp_path, "x.csv", "name,phone\nAna,1\n")
    with session_scope() as session, pytest.raises(ValidationFailed, match="no e-mail column"):
        import_contacts(session, account_id, path, list_id=list_id)
    empty = write(tmp_path, "empty.csv", "")
    with session_scope() as session, pytest.raises(ValidationFailed, match="empty"):
        import_contacts(session, account_id, empty, list_id=list_id)
