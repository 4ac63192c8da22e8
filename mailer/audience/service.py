"""Lists and contacts: the functions the interfaces and the campaign planner call."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import ColumnElement, Select, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from mailer.audience.importer import (
    MODES,
    ImportReport,
    Progress,
    RowError,
    attribute_slug,
    check_mapping,
    coerce_attribute,
    import_file,
    map_columns,
)
from mailer.audience.models import (
    CHANNEL_STATUS,
    CONTACT_FIELDS,
    AttributeDefinition,
    AttributeType,
    ChannelStatus,
    Consent,
    Contact,
    ContactImport,
    ListMember,
    MailingList,
    Segment,
    Suppression,
)
from mailer.audience.segments import compile_rules, validate_rules
from mailer.audience.suppression import (
    SuppressionReason,
    check_channel,
    is_suppressed,
    not_suppressed,
    suppress,
    suppressed_among,
    unsuppress,
    value_hash,
)
from mailer.audience.tables import Row, open_table
from mailer.cleaning.phones import check_phone
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import Conflict, MailerError, NotFound, Term, ValidationFailed

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


def _contact_values(
    session: Session, account_id: int, fields: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fixed fields and typed attributes from user input, checked (phones normalised)."""
    known: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    types = attribute_types(session, account_id)
    for name, value in fields.items():
        if name in CONTACT_FIELDS and name != "email":
            known[name] = "" if value is None else str(value).strip()
        elif name == "attributes" and isinstance(value, Mapping):
            for key, item in value.items():
                attributes[str(key)] = _attribute_value(types, str(key), item)
        else:
            attributes[name] = _attribute_value(types, name, value)
    phone = known.get("phone", "")
    if phone:
        checked = check_phone(phone)
        if not checked.ok:
            raise ValidationFailed(
                "'{phone}' is not a valid phone number: {reason}",
                field="phone",
                phone=phone,
                reason=Term(checked.reason),
            )
        known["phone"] = checked.e164
        known["phone_kind"] = checked.kind.value
    elif "phone" in known:
        known["phone_kind"] = ""
    return known, attributes


def _attribute_value(types: Mapping[str, str], name: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    try:
        return coerce_attribute(types.get(name, AttributeType.TEXT), value)
    except ValueError as exc:
        raise ValidationFailed(
            "{name}: {problem}", field=name, name=name, problem=str(exc)
        ) from None


def add_contact(
    session: Session,
    account_id: int,
    email: str,
    *,
    list_id: int | None = None,
    consent: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Contact:
    """Create a contact (or find the existing one) and optionally add it to a list.

    A suppressed address is refused: it was unsubscribed, bounced, complained or erased."""
    verdict = check_syntax(email)
    if not verdict.ok:
        raise ValidationFailed(
            "'{email}': {reason}", field="email", email=email, reason=Term(verdict.reason)
        )
    contact = find_contact(session, account_id, verdict.normalized)
    if contact is None:
        if is_suppressed(session, account_id, "email", verdict.normalized):
            raise Conflict(
                "'{email}' is on the suppression list (unsubscribed, bounced, complained or "
                "erased): it cannot be added again",
                field="email",
                email=verdict.normalized,
            )
        known, attributes = _contact_values(session, account_id, fields)
        contact = Contact(
            account_id=account_id,
            email=verdict.normalized,
            email_domain=verdict.normalized.rpartition("@")[2],
            attributes={k: v for k, v in attributes.items() if v is not None},
            **known,
        )
        session.add(contact)
        session.flush()
    if list_id is not None:
        get_list(session, account_id, list_id)
        if session.get(ListMember, (list_id, contact.id)) is None:
            assert contact.id is not None
            session.add(ListMember(list_id=list_id, contact_id=contact.id))
            session.flush()
    if consent:
        record_consent(session, contact, **consent)
    return contact


def get_contact(session: Session, account_id: int, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None or contact.account_id != account_id:
        raise NotFound("contact {id} does not exist", id=contact_id)
    return contact


def update_contact(session: Session, account_id: int, contact_id: int, **fields: Any) -> Contact:
    """Change fields and attributes (an attribute set to None or '' is removed)."""
    contact = get_contact(session, account_id, contact_id)
    known, attributes = _contact_values(session, account_id, fields)
    for name, value in known.items():
        setattr(contact, name, value)
    if attributes:
        merged = {**contact.attributes, **attributes}
        contact.attributes = {k: v for k, v in merged.items() if v is not None}
    contact.updated_at = utcnow()
    session.add(contact)
    session.flush()
    return contact


def search_contacts(
    session: Session,
    account_id: int,
    *,
    query: str = "",
    list_id: int | None = None,
    segment_id: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Contact], int]:
    """Contacts of the account (optionally of a list or segment) matching a free text."""
    where = [
        col(Contact.account_id) == account_id,
        *target_filter(session, account_id, list_id=list_id, segment_id=segment_id),
    ]
    text = query.strip().lower()
    if text:
        like = f"%{text}%"
        where.append(
            or_(
                col(Contact.email).like(like),
                func.lower(col(Contact.first_name)).like(like),
                func.lower(col(Contact.last_name)).like(like),
                func.lower(col(Contact.company)).like(like),
                col(Contact.document).like(like),
                col(Contact.phone).like(like),
            )
        )
    total = int(
        session.execute(select(func.count()).select_from(Contact).where(*where)).scalar_one()
    )
    rows = session.execute(
        select(Contact).where(*where).order_by(col(Contact.id)).offset(offset).limit(limit)
    ).scalars()
    return list(rows), total


def set_channel_status(
    session: Session,
    contact: Contact,
    channel: str,
    status: ChannelStatus,
    *,
    source: str = "",
) -> bool:
    """Move a contact's channel status through its state machine; unsubscribes, bounces and
    complaints also go on the suppression list, a return to active takes the address off it.
    Returns False when the status was already that."""
    attribute = "email_status" if channel == "email" else "sms_status"
    current = ChannelStatus(getattr(contact, attribute))
    value = contact.email if channel == "email" else contact.phone
    if current != status:
        CHANNEL_STATUS.check(current, status)
        setattr(contact, attribute, status.value)
        contact.updated_at = utcnow()
        session.add(contact)
    reason = _SUPPRESSING.get(status)
    if reason and value:
        suppress(session, contact.account_id, channel, [value], reason, source)
    elif status == ChannelStatus.ACTIVE and value:
        unsuppress(session, contact.account_id, channel, value)
    session.flush()
    return current != status


_SUPPRESSING = {
    ChannelStatus.UNSUBSCRIBED: SuppressionReason.UNSUBSCRIBED,
    ChannelStatus.BOUNCED: SuppressionReason.BOUNCED,
    ChannelStatus.COMPLAINED: SuppressionReason.COMPLAINED,
}


def record_consent(
    session: Session,
    contact: Contact,
    *,
    channel: str = "email",
    granted: bool = True,
    source: str = "",
    ip: str = "",
    text: str = "",
    occurred_at: datetime | None = None,
) -> Consent:
    """Keep the proof of a consent given or withdrawn (Ley 29733, art. 13-14); a withdrawal
    unsubscribes the channel at once, a new consent re-activates an unsubscribed one."""
    check_channel(channel)
    assert contact.id is not None
    consent = Consent(
        account_id=contact.account_id,
        contact_id=contact.id,
        channel=channel,
        granted=granted,
        source=source[:200],
        ip=ip[:64],
        text=text[:4000],
        occurred_at=occurred_at or utcnow(),
    )
    session.add(consent)
    status = ChannelStatus(contact.email_status if channel == "email" else contact.sms_status)
    if not granted and status == ChannelStatus.ACTIVE:
        set_channel_status(session, contact, channel, ChannelStatus.UNSUBSCRIBED, source=source)
    elif granted and status == ChannelStatus.UNSUBSCRIBED:
        set_channel_status(session, contact, channel, ChannelStatus.ACTIVE, source=source)
    session.flush()
    return consent


def consents_of(session: Session, contact_id: int) -> list[Consent]:
    return list(
        session.execute(
            select(Consent).where(col(Consent.contact_id) == contact_id).order_by(col(Consent.id))
        ).scalars()
    )


def export_contact(session: Session, account_id: int, contact_id: int) -> dict[str, Any]:
    """Everything kept about one person (access request, Ley 29733 art. 19)."""
    from mailer.events.models import Event
    from mailer.messages.models import Message

    contact = get_contact(session, account_id, contact_id)
    lists = session.execute(
        select(col(MailingList.name))
        .join(ListMember, col(ListMember.list_id) == col(MailingList.id))
        .where(col(ListMember.contact_id) == contact_id)
    ).scalars()
    messages = session.execute(
        select(Message).where(col(Message.contact_id) == contact_id).order_by(col(Message.id))
    ).scalars()
    events = session.execute(
        select(Event).where(col(Event.contact_id) == contact_id).order_by(col(Event.id))
    ).scalars()
    suppressions = suppressed_among(session, account_id, "email", [contact.email])
    return {
        "contact": contact.model_dump(mode="json"),
        "lists": list(lists),
        "consents": [c.model_dump(mode="json") for c in consents_of(session, contact_id)],
        "messages": [
            {
                "id": m.id,
                "campaign_id": m.campaign_id,
                "channel": m.channel,
                "to": m.to_address,
                "state": m.state,
                "queued_at": m.queued_at.isoformat(),
                "sent_at": m.sent_at.isoformat() if m.sent_at else None,
            }
            for m in messages
        ],
        "events": [
            {"kind": e.kind, "occurred_at": e.occurred_at.isoformat(), "data": e.data}
            for e in events
        ],
        "suppressed": bool(suppressions),
        "exported_at": utcnow().isoformat(),
    }


def erase_contact(session: Session, account_id: int, contact_id: int, *, source: str = "") -> str:
    """Delete a person's data (deletion request, Ley 29733 art. 20) and keep only hashed
    suppression entries so the address and phone are never messaged again.

    The sending ledger keeps its rows (the campaign's figures stay true) without the
    address; events lose their link to the person.  Returns the hash of the address."""
    from mailer.events.models import Event
    from mailer.messages.models import Message

    contact = get_contact(session, account_id, contact_id)
    for channel, value in (("email", contact.email), ("sms", contact.phone)):
        if not value:
            continue
        digest = value_hash(channel, value)
        session.execute(
            delete(Suppression).where(
                col(Suppression.account_id) == account_id,
                col(Suppression.channel) == channel,
                col(Suppression.value_hash) == digest,
            )
        )
        suppress(
            session,
            account_id,
            channel,
            [value],
            SuppressionReason.ERASED,
            source,
            keep_value=False,
        )
    session.execute(
        update(Message)
        .where(col(Message.contact_id) == contact_id)
        .values(to_address="erased@invalid", to_name="", contact_id=None)
    )
    session.execute(
        update(Event).where(col(Event.contact_id) == contact_id).values(contact_id=None, data={})
    )
    session.execute(delete(Consent).where(col(Consent.contact_id) == contact_id))
    session.execute(delete(ListMember).where(col(ListMember.contact_id) == contact_id))
    digest = value_hash("email", contact.email)
    session.delete(contact)
    session.flush()
    return digest


def attribute_types(session: Session, account_id: int) -> dict[str, str]:
    return {
        a.name: a.type
        for a in session.execute(
            select(AttributeDefinition).where(col(AttributeDefinition.account_id) == account_id)
        ).scalars()
    }


def list_attributes(session: Session, account_id: int) -> list[AttributeDefinition]:
    return list(
        session.execute(
            select(AttributeDefinition)
            .where(col(AttributeDefinition.account_id) == account_id)
            .order_by(col(AttributeDefinition.name))
        ).scalars()
    )


def define_attribute(
    session: Session, account_id: int, name: str, type: str = "text", label: str = ""
) -> AttributeDefinition:
    """Declare (or retype) a custom attribute; values already stored are not rewritten."""
    slug = attribute_slug(name)
    if slug in CONTACT_FIELDS or not slug or slug == "column":
        raise ValidationFailed(
            "'{name}' cannot be a custom attribute name (it is empty or a contact field)",
            field="name",
            name=name,
        )
    if type not in set(AttributeType):
        raise ValidationFailed(
            "unknown attribute type '{type}': use text, number, date or boolean",
            field="type",
            type=type,
        )
    definition = session.execute(
        select(AttributeDefinition).where(
            col(AttributeDefinition.account_id) == account_id, col(AttributeDefinition.name) == slug
        )
    ).scalar_one_or_none()
    if definition is None:
        definition = AttributeDefinition(account_id=account_id, name=slug)
    definition.type = type
    definition.label = label[:200]
    session.add(definition)
    session.flush()
    return definition


def create_segment(
    session: Session, account_id: int, name: str, rules: Any, description: str = ""
) -> Segment:
    name = name.strip()
    if not name:
        raise ValidationFailed("the segment needs a name", field="name")
    exists_already = session.execute(
        select(col(Segment.id)).where(
            col(Segment.account_id) == account_id, col(Segment.name) == name
        )
    ).first()
    if exists_already:
        raise Conflict("a segment named '{name}' already exists", field="name", name=name)
    segment = Segment(
        account_id=account_id,
        name=name,
        description=description[:1000],
        rules=check_rules(session, account_id, rules),
    )
    session.add(segment)
    session.flush()
    return segment


def update_segment(
    session: Session,
    account_id: int,
    segment_id: int,
    *,
    name: str | None = None,
    rules: Any = None,
    description: str | None = None,
) -> Segment:
    segment = get_segment(session, account_id, segment_id)
    if name is not None and name.strip() and name.strip() != segment.name:
        clash = session.execute(
            select(col(Segment.id)).where(
                col(Segment.account_id) == account_id, col(Segment.name) == name.strip()
            )
        ).first()
        if clash:
            raise Conflict("a segment named '{name}' already exists", field="name", name=name)
        segment.name = name.strip()
    if rules is not None:
        segment.rules = check_rules(session, account_id, rules)
    if description is not None:
        segment.description = description[:1000]
    segment.updated_at = utcnow()
    session.add(segment)
    session.flush()
    return segment


def delete_segment(session: Session, account_id: int, segment_id: int) -> None:
    segment = get_segment(session, account_id, segment_id)
    try:
        with session.begin_nested():
            session.delete(segment)
            session.flush()
    except IntegrityError:
        raise Conflict(
            "the segment '{name}' is used by a campaign or a cleaning: keep it, or delete "
            "those first",
            field="segment_id",
            name=segment.name,
        ) from None


def get_segment(session: Session, account_id: int, segment_id: int) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None or segment.account_id != account_id:
        raise NotFound("segment {id} does not exist", id=segment_id)
    return segment


def list_segments(session: Session, account_id: int) -> list[Segment]:
    return list(
        session.execute(
            select(Segment).where(col(Segment.account_id) == account_id).order_by(col(Segment.name))
        ).scalars()
    )


def check_rules(session: Session, account_id: int, rules: Any) -> dict[str, Any]:
    list_ids = set(
        session.execute(
            select(col(MailingList.id)).where(col(MailingList.account_id) == account_id)
        ).scalars()
    )
    return validate_rules(rules, attribute_types(session, account_id), list_ids)


def count_matching(
    session: Session, account_id: int, rules: Any, channel: str = "email"
) -> dict[str, int]:
    """Live count for the segment builder: contacts matching, and how many of them can be
    sent to on the channel now (active, not suppressed, address not invalid)."""
    checked = check_rules(session, account_id, rules)
    return _reach(
        session, account_id, [compile_rules(checked, attribute_types(session, account_id))], channel
    )


def _reach(
    session: Session, account_id: int, where: list[ColumnElement[bool]], channel: str
) -> dict[str, int]:
    """Contacts matching *where*, and how many of them may receive *channel*, in one query."""
    sendable = case((and_(*sendable_filter(account_id, channel)), 1), else_=0)
    matching, reachable = session.execute(
        select(func.count(), func.coalesce(func.sum(sendable), 0))
        .select_from(Contact)
        .where(col(Contact.account_id) == account_id, *where)
    ).one()
    return {"matching": int(matching), "sendable": int(reachable)}


def import_contacts(
    session: Session,
    account_id: int,
    source: Path | IO[bytes],
    *,
    list_id: int | None = None,
    mode: str = "add_or_update",
    mapping: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    filename: str = "",
    actor: str = "",
    record: ContactImport | None = None,
) -> ImportReport:
    """Import a contact file and keep a record of it (figures and rejected rows)."""
    if list_id is not None:
        get_list(session, account_id, list_id)
    filename = (filename or (source.name if isinstance(source, Path) else ""))[:300]
    report = import_file(
        session,
        account_id,
        source,
        filename=filename,
        list_id=list_id,
        mode=mode,
        mapping=mapping,
        attribute_types=attribute_types(session, account_id),
        progress=progress,
    )
    record = record or ContactImport(account_id=account_id, created_by=actor)
    record.list_id = list_id
    record.filename = filename
    record.mode = mode
    record.status = "done"
    record.progress = 1.0
    record.stored_path = ""
    record.finished_at = utcnow()
    _store_figures(record, report)
    session.add(record)
    session.flush()
    report.import_id = record.id
    return report


def _store_figures(record: ContactImport, report: ImportReport) -> None:
    record.format = report.format
    record.encoding = report.encoding
    record.delimiter = report.delimiter
    record.mapping = dict(report.mapping)
    for name in (
        "rows",
        "created",
        "updated",
        "unchanged",
        "duplicates_in_file",
        "suppressed",
        "skipped",
        "added_to_list",
    ):
        setattr(record, name, getattr(report, name))
    record.rejected = [[e.line, e.column, e.value, e.reason, e.params] for e in report.errors]


def preview_file(path: Path, filename: str = "", sample: int = 5) -> dict[str, Any]:
    """Headers, the automatic mapping and the first rows, for the column-mapping step."""
    with open_table(path, filename or path.name) as table:
        rows: list[list[str]] = []
        for item in table.rows:
            if isinstance(item, Row):
                rows.append(item.values)
            if len(rows) >= sample:
                break
        return {
            "format": table.format,
            "encoding": table.encoding,
            "delimiter": table.delimiter,
            "headers": table.headers,
            "mapping": map_columns(table.headers),
            "rows": rows,
        }


def store_upload(folder: Path, filename: str, stream: IO[bytes]) -> Path:
    """Keep an uploaded contact file in *folder* until its import has run, under an
    unguessable name that keeps only a plain suffix of the user's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(re.split(r"[\\/]", filename)[-1]).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = ""
    path = folder / (secrets.token_hex(16) + suffix)
    with path.open("xb") as out:
        shutil.copyfileobj(stream, out)
    return path


def queue_import(
    session: Session,
    account_id: int,
    stored_path: Path,
    *,
    filename: str,
    list_id: int | None,
    mode: str = "add_or_update",
    mapping: Mapping[str, str] | None = None,
    actor: str = "",
) -> ContactImport:
    """Record an import to be run by a worker (:func:`run_import`); the caller enqueues it."""
    if list_id is not None:
        get_list(session, account_id, list_id)
    if mode not in MODES:
        raise ValidationFailed(
            "unknown import mode '{mode}': use add, update or add_or_update",
            field="mode",
            mode=mode,
        )
    with open_table(stored_path, filename) as table:
        columns = check_mapping(table.headers, mapping) if mapping else map_columns(table.headers)
        if "email" not in columns.values():
            raise ValidationFailed(
                "no e-mail column found: name one column 'email' or 'correo', or map one "
                "(headers seen: {headers})",
                field="mapping",
                headers=", ".join(table.headers),
            )
    record = ContactImport(
        account_id=account_id,
        list_id=list_id,
        filename=filename[:300],
        mode=mode,
        status="queued",
        stored_path=str(stored_path),
        mapping=dict(mapping or {}),
        created_by=actor,
    )
    session.add(record)
    session.flush()
    return record


def run_import(session: Session, import_id: int) -> ContactImport:
    """Run a queued import, committing after every chunk so its progress shows live (and a
    crash part-way is finished by running it again: the import is idempotent)."""
    record = session.get(ContactImport, import_id)
    if record is None:
        raise NotFound("import {id} does not exist", id=import_id)
    if record.status == "done":
        return record
    path = Path(record.stored_path)
    record.status = "running"
    session.add(record)
    session.commit()

    def progress(report: ImportReport, fraction: float) -> None:
        assert record is not None
        record.progress = round(fraction, 4)
        _store_figures(record, report)
        record.rejected = []  # the full list is written at the end
        session.add(record)
        session.commit()

    try:
        import_contacts(
            session,
            record.account_id,
            path,
            list_id=record.list_id,
            mode=record.mode,
            mapping=record.mapping or None,
            progress=progress,
            filename=record.filename,
            record=record,
        )
    except Exception as exc:
        # Recorded as failed (the page stops polling and says why); a MailerError is the
        # file's fault and final, anything else is raised again for the queue to retry.
        session.rollback()
        record = session.get(ContactImport, import_id)
        assert record is not None
        record.status = "failed"
        record.error = (exc.message if isinstance(exc, MailerError) else repr(exc))[:1000]
        record.finished_at = utcnow()
        session.add(record)
        session.commit()
        if not isinstance(exc, MailerError):
            raise
    session.commit()
    path.unlink(missing_ok=True)
    return record


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


def target_filter(
    session: Session,
    account_id: int,
    *,
    list_id: int | None = None,
    segment_id: int | None = None,
) -> list[ColumnElement[bool]]:
    """Conditions selecting a list's members and/or a segment's matches (evaluated now)."""
    where: list[ColumnElement[bool]] = []
    if list_id is not None:
        get_list(session, account_id, list_id)
        where.append(
            exists().where(
                col(ListMember.contact_id) == col(Contact.id), col(ListMember.list_id) == list_id
            )
        )
    if segment_id is not None:
        segment = get_segment(session, account_id, segment_id)
        where.append(compile_rules(segment.rules, attribute_types(session, account_id)))
    return where


def sendable_filter(account_id: int, channel: str = "email") -> list[ColumnElement[bool]]:
    """Who may receive the channel now: the one place that says it (status active, not
    suppressed, address not judged invalid by cleaning; for SMS a mobile number)."""
    if channel == "email":
        return [
            col(Contact.email_status) == ChannelStatus.ACTIVE,
            col(Contact.email_verdict) != "invalid",
            not_suppressed(account_id, "email"),
        ]
    return [
        col(Contact.sms_status) == ChannelStatus.ACTIVE,
        col(Contact.phone) != "",
        col(Contact.phone_kind).in_(["mobile", "fixed_line_or_mobile"]),
        not_suppressed(account_id, "sms"),
    ]


def email_audience(
    session: Session,
    account_id: int,
    *leading: Any,
    list_id: int | None = None,
    segment_id: int | None = None,
    channel: str = "email",
) -> Select[Any]:
    """SELECT ``*leading``, then id, address (the e-mail, or the phone for ``sms``) and
    name of the contacts of a list and/or segment that may receive *channel* now, in id
    order."""
    address = col(Contact.phone) if channel == "sms" else col(Contact.email)
    return (
        select(
            *leading,
            col(Contact.id),
            address,
            func.trim(col(Contact.first_name) + " " + col(Contact.last_name)),
        )
        .where(
            col(Contact.account_id) == account_id,
            *target_filter(session, account_id, list_id=list_id, segment_id=segment_id),
            *sendable_filter(account_id, channel),
        )
        .order_by(col(Contact.id))
    )


def audience_counts(
    session: Session,
    account_id: int,
    *,
    list_id: int | None = None,
    segment_id: int | None = None,
    channel: str = "email",
) -> dict[str, int]:
    """Contacts targeted, and how many of them can receive the channel now."""
    where = target_filter(session, account_id, list_id=list_id, segment_id=segment_id)
    return _reach(session, account_id, where, channel)


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
