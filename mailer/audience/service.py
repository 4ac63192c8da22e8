"""Lists and contacts: the functions the interfaces and the campaign planner call."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from mailer.audience.importer import ImportReport, import_csv
from mailer.audience.models import ChannelStatus, Contact, ListMember, MailingList
from mailer.cleaning.service import check_syntax
from mailer.core.errors import Conflict, NotFound, ValidationFailed

__all__ = [
    "ImportReport",
    "add_contact",
    "create_list",
    "get_list",
    "get_list_by_name",
    "import_contacts",
    "list_contacts",
    "list_lists",
    "list_size",
    "sendable_contact_ids_query",
]


def create_list(session: Session, account_id: int, name: str, description: str = "") -> MailingList:
    name = name.strip()
    if not name:
        raise ValidationFailed("the list needs a name", field="name")
    if get_list_by_name(session, account_id, name) is not None:
        raise Conflict(f"a list named {name!r} already exists", field="name")
    mailing_list = MailingList(account_id=account_id, name=name, description=description)
    session.add(mailing_list)
    session.flush()
    return mailing_list


def get_list(session: Session, account_id: int, list_id: int) -> MailingList:
    mailing_list = session.get(MailingList, list_id)
    if mailing_list is None or mailing_list.account_id != account_id:
        raise NotFound(f"list {list_id} does not exist")
    return mailing_list


def get_list_by_name(session: Session, account_id: int, name: str) -> MailingList | None:
    return session.exec(
        select(MailingList).where(MailingList.account_id == account_id, MailingList.name == name)
    ).first()


def list_size(session: Session, list_id: int) -> int:
    return int(session.exec(select(func.count()).where(ListMember.list_id == list_id)).one())


def list_lists(session: Session, account_id: int) -> list[tuple[MailingList, int]]:
    """Every list of the account with its member count."""
    counts = (
        select(ListMember.list_id, func.count().label("members"))
        .group_by(col(ListMember.list_id))
        .subquery()
    )
    rows = session.exec(
        select(MailingList, func.coalesce(counts.c.members, 0))
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
            select(Contact)
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
        raise ValidationFailed(f"{email!r}: {verdict.reason}", field="email")
    contact = session.exec(
        select(Contact).where(Contact.account_id == account_id, Contact.email == verdict.normalized)
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
) -> ImportReport:
    if list_id is not None:
        get_list(session, account_id, list_id)
    return import_csv(session, account_id, source, list_id=list_id, mode=mode, progress=progress)


def sendable_contact_ids_query(account_id: int, list_id: int) -> Any:
    """SELECT of the contacts of a list that may receive e-mail now (channel active)."""
    return (
        select(Contact.id, Contact.email, Contact.first_name, Contact.last_name)
        .join(ListMember, col(ListMember.contact_id) == Contact.id)
        .where(
            ListMember.list_id == list_id,
            Contact.account_id == account_id,
            Contact.email_status == ChannelStatus.ACTIVE,
        )
    )
