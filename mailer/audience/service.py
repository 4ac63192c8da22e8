"""Lists and contacts: the functions the interfaces and the campaign planner call."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from sqlalchemy import Select, func, select
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from mailer.audience.importer import ImportReport, RowError, import_csv
from mailer.audience.models import ChannelStatus, Contact, ContactImport, ListMember, MailingList
from mailer.cleaning.service import check_syntax
from mailer.core.errors import Conflict, NotFound, Term, ValidationFailed

__all__ = [
    "ImportReport",
    "add_contact",
    "create_list",
    "email_audience",
    "get_list",
    "get_list_by_name",
    "import_contacts",
    "list_contacts",
    "list_lists",
    "list_size",
]


def create_list(session: Session, account_id: int, name: str, description: str = "") -> MailingList:
    name = name.strip()
    if not name:
        raise ValidationFailed("the list needs a name", field="name")
    if get_list_by_name(session, account_id, name) is not None:
        raise Conflict("a list named '{name}' already exists", field="name", name=name)
    mailing_list = MailingList(account_id=account_id, name=name, description=description)
    session.add(mailing_list)
    session.flush()
    return mailing_list


def get_list(session: Session, account_id: int, list_id: int) -> MailingList:
    mailing_list = session.get(MailingList, list_id)
    if mailing_list is None or mailing_list.account_id != account_id:
        raise NotFound("list {id} does not exist", id=list_id)
    return mailing_list


def get_list_by_name(session: Session, account_id: int, name: str) -> MailingList | None:
    return session.exec(
        sm_select(MailingList).where(MailingList.account_id == account_id, MailingList.name == name)
    ).first()


def list_size(session: Session, list_id: int) -> int:
    return int(session.exec(sm_select(func.count()).where(ListMember.list_id == list_id)).one())


def list_lists(session: Session, account_id: int) -> list[tuple[MailingList, int]]:
    """Every list of the account with its member count."""
    counts = (
        select(col(ListMember.list_id), func.count().label("members"))
        .group_by(col(ListMember.list_id))
        .subquery()
    )
    rows = session.exec(
        sm_select(MailingList, func.coalesce(counts.c.members, 0))
        .outerjoin(counts, counts.c.list_id == MailingList.id)
        .where(MailingList.account_id == account_id)
        .order_by(col(MailingList.id))
    ).all()
    return [(mailing_list, int(members)) for mailing_list, members in rows]


def list_contacts(
    session: Session, account_id: int, list_id: int, *, offset: int = 0, limit: int = 100
) -> list[Contact]:
    get_list(session, account_id, list_id)
    return list(
        session.exec(
            sm_select(Contact)
            .join(ListMember, col(ListMember.contact_id) == Contact.id)
            .where(ListMember.list_id == list_id)
            .order_by(col(Contact.id))
            .offset(offset)
            .limit(limit)
        )
    )


def add_contact(
    session: Session, account_id: int, email: str, *, list_id: int | None = None, **fields: Any
) -> Contact:
    verdict = check_syntax(email)
    if not verdict.ok:
        raise ValidationFailed(
            "'{email}': {reason}", field="email", email=email, reason=Term(verdict.reason)
        )
    contact = session.exec(
        sm_select(Contact).where(
            Contact.account_id == account_id, Contact.email == verdict.normalized
        )
    ).first()
    if contact is None:
        known = {"first_name", "last_name", "phone", "company"}
        contact = Contact(
            account_id=account_id,
            email=verdict.normalized,
            attributes={k: v for k, v in fields.items() if k not in known},
            **{k: v for k, v in fields.items() if k in known},
        )
        session.add(contact)
        session.flush()
    if list_id is not None:
        get_list(session, account_id, list_id)
        if session.get(ListMember, (list_id, contact.id)) is None:
            assert contact.id is not None
            session.add(ListMember(list_id=list_id, contact_id=contact.id))
            session.flush()
    return contact


def import_contacts(
    session: Session,
    account_id: int,
    source: Path | IO[bytes],
    *,
    list_id: int | None = None,
    mode: str = "add_or_update",
    progress: Any = None,
    filename: str = "",
    actor: str = "",
) -> ImportReport:
    """Import a contact file and keep a record of it (figures and rejected rows)."""
    if list_id is not None:
        get_list(session, account_id, list_id)
    report = import_csv(session, account_id, source, list_id=list_id, mode=mode, progress=progress)
    record = ContactImport(
        account_id=account_id,
        list_id=list_id,
        filename=(filename or (source.name if isinstance(source, Path) else ""))[:300],
        mode=mode,
        encoding=report.encoding,
        delimiter=report.delimiter,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        duplicates_in_file=report.duplicates_in_file,
        added_to_list=report.added_to_list,
        rejected=[[e.line, e.column, e.value, e.reason, e.params] for e in report.errors],
        created_by=actor,
    )
    session.add(record)
    session.flush()
    report.import_id = record.id
    return report


def get_import(session: Session, account_id: int, import_id: int) -> ContactImport:
    record = session.get(ContactImport, import_id)
    if record is None or record.account_id != account_id:
        raise NotFound("import {id} does not exist", id=import_id)
    return record


def rejected_rows(record: ContactImport) -> list[RowError]:
    return [
        RowError(line, column, value, reason, params)
        for line, column, value, reason, params in record.rejected
    ]


def email_audience(account_id: int, list_id: int, *leading: Any) -> Select[Any]:
    """SELECT ``*leading``, then id, address and name of the list's contacts that may receive
    e-mail now, in id order.  The one place that says who may be mailed (channel active;
    suppression and consent join here as they arrive)."""
    return (
        select(
            *leading,
            col(Contact.id),
            col(Contact.email),
            func.trim(col(Contact.first_name) + " " + col(Contact.last_name)),
        )
        .join(ListMember, col(ListMember.contact_id) == Contact.id)
        .where(
            col(ListMember.list_id) == list_id,
            col(Contact.account_id) == account_id,
            col(Contact.email_status) == ChannelStatus.ACTIVE,
        )
        .order_by(col(Contact.id))
    )


def attribute_names(session: Session, account_id: int, *, sample: int = 500) -> set[str]:
    """The custom attributes the account's contacts have (from a sample of recent ones)."""
    rows = session.exec(
        sm_select(Contact.attributes)
        .where(Contact.account_id == account_id)
        .order_by(col(Contact.id).desc())
        .limit(sample)
    )
    return {key for attributes in rows for key in (attributes or {})}


def find_contact(session: Session, account_id: int, email: str) -> Contact | None:
    return session.exec(
        sm_select(Contact).where(
            Contact.account_id == account_id, Contact.email == email.strip().lower()
        )
    ).first()
