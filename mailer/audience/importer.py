"""Contact import from CSV or XLSX: columns mapped by header (or as the user chose), typed
attributes checked, phones normalised, suppressed addresses kept out.

The file is read as a stream (:mod:`mailer.audience.tables`) and written in chunks, so
memory stays flat whatever its size; duplicates within the file are found with a compact
table of 64-bit hashes (16 bytes a row), not a set of strings.  Every bad row is reported
with its line number, column and reason; the good rows are imported; running the same file
again changes nothing.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    String,
    any_,
    cast,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from mailer.audience.models import CONTACT_FIELDS, AttributeType, Contact, ListMember
from mailer.audience.suppression import suppressed_among
from mailer.audience.tables import Row, RowProblem, open_table
from mailer.cleaning.phones import check_phone
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import ValidationFailed

CHUNK_ROWS = 2000
MODES = ("add", "update", "add_or_update")
SKIP = ""  # mapping target of a column that is not imported

# Header names, normalised (lower case, no accents, no spaces/punctuation), per field.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "correo", "correoelectronico", "mail", "emailaddress", "e_mail", "emails"),
    "first_name": ("firstname", "nombre", "nombres", "name", "givenname", "primernombre"),
    "last_name": ("lastname", "apellido", "apellidos", "surname", "familyname"),
    "phone": (
        "phone",
        "telefono",
        "celular",
        "movil",
        "mobile",
        "phonenumber",
        "whatsapp",
        "nrocelular",
        "numerocelular",
        "telefonomovil",
        "mobilephone",
    ),
    "company": (
        "company",
        "empresa",
        "razonsocial",
        "organizacion",
        "organization",
        "entidad",
        "proveedor",
    ),
    "position": ("position", "cargo", "puesto", "jobtitle", "title", "ocupacion"),
    "document": (
        "document",
        "documento",
        "ruc",
        "dni",
        "nrodocumento",
        "numerodocumento",
        "nrodoc",
        "ndocumento",
        "taxid",
        "rucdni",
    ),
}
_ALIAS_TO_FIELD = {
    alias.replace("_", ""): f for f, aliases in HEADER_ALIASES.items() for alias in aliases
}


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row (or value).  ``reason`` is an English template filled with ``params``."""

    line: int
    column: str
    value: str
    reason: str
    params: dict[str, Any] = field(default_factory=dict)

    def message(self, translate: Translate | None = None) -> str:
        if translate is not None:
            return translate(self.reason, self.params)
        return self.reason.format(**self.params) if self.params else self.reason


Translate = Callable[[str, dict[str, Any]], str]


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates_in_file: int = 0
    suppressed: int = 0  # new addresses on the suppression list, not imported
    import_id: int | None = None  # the record kept by audience.service.import_contacts
    skipped: int = 0  # new addresses in ``update`` mode
    added_to_list: int = 0
    format: str = "csv"
    encoding: str = ""
    delimiter: str = ""
    mapping: dict[str, str] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.created + self.updated + self.unchanged

    def errors_csv(
        self,
        translate: Translate | None = None,
        header: tuple[str, ...] = ("line", "column", "value", "reason"),
    ) -> str:
        """The downloadable report of rejected rows."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        for error in self.errors:
            writer.writerow([error.line, error.column, error.value, error.message(translate)])
        return out.getvalue()


def normalise_header(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(c for c in decomposed if c.isalnum())


def attribute_slug(header: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", header.strip().lower()).encode("ascii", "ignore")
    slug = "_".join("".join(c if c.isalnum() else " " for c in ascii_name.decode()).split())
    return slug[:64] or "column"


def map_columns(headers: list[str]) -> dict[str, str]:
    """Header -> contact field; unknown headers become custom attributes (``attr:<slug>``)."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for header in headers:
        target = _ALIAS_TO_FIELD.get(normalise_header(header))
        if target is None or target in taken:
            target = f"attr:{attribute_slug(header)}"
        taken.add(target)
        mapping[header] = target
    return mapping


def check_mapping(headers: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """A user's mapping, checked: every target a field, ``attr:<name>`` or '' (skip)."""
    checked: dict[str, str] = {}
    used: dict[str, str] = {}
    for header in headers:
        target = str(mapping.get(header, SKIP)).strip()
        if target.startswith("attr:"):
            target = "attr:" + attribute_slug(target[5:])
        elif target not in (*CONTACT_FIELDS, SKIP):
            raise ValidationFailed(
                "column '{header}': unknown target '{target}' (use a contact field, "
                "attr:NAME or nothing to skip it)",
                field="mapping",
                header=header,
                target=target,
            )
        if target and target in used:
            raise ValidationFailed(
                "columns '{first}' and '{second}' are both mapped to '{target}'",
                field="mapping",
                first=used[target],
                second=header,
                target=target,
            )
        if target:
            used[target] = header
        checked[header] = target
    return checked


class SeenTable:
    """Open-addressing set of 64-bit hashes in an ``array('Q')``: 8 bytes a slot, half full.

    A Python set of a million strings costs ~100 MB; this costs 16 MB.  Two different
    addresses with the same 64-bit hash (odds ~1e-8 in a million rows) would be taken for
    a duplicate: the import report would count one duplicate too many."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._used = 0

    def add(self, key: str) -> bool:
        """Add *key*; False if it was already there."""
        value = (hash(key) & 0xFFFF_FFFF_FFFF_FFFF) or 1
        slots, mask = self._slots, self._mask
        index = value & mask
        while True:
            current = slots[index]
            if current == 0:
                break
            if current == value:
                return False
            index = (index + 1) & mask
        slots[index] = value
        self._used += 1
        if self._used * 2 > mask:
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = len(self._slots) - 1
        slots, mask = self._slots, self._mask
        for value in old:
            if value:
                index = value & mask
                while slots[index]:
                    index = (index + 1) & mask
                slots[index] = value


Progress = Callable[["ImportReport", float], None]


def import_file(
    session: Session,
    account_id: int,
    source: Path | IO[bytes],
    *,
    filename: str = "",
    list_id: int | None = None,
    mode: str = "add_or_update",
    mapping: Mapping[str, str] | None = None,
    attribute_types: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import contacts; *mode* is ``add`` (new only), ``update`` (existing only) or both.

    *progress* is called after every chunk with the report so far and the fraction of the
    file read; it may commit the session (a re-run of the file is harmless)."""
    if mode not in MODES:
        raise ValidationFailed(
            "unknown import mode '{mode}': use add, update or add_or_update",
            field="mode",
            mode=mode,
        )
    with open_table(source, filename or (source.name if isinstance(source, Path) else "")) as table:
        columns = check_mapping(table.headers, mapping) if mapping else map_columns(table.headers)
        if "email" not in columns.values():
            raise ValidationFailed(
                "no e-mail column found: name one column 'email' or 'correo', or map one "
                "(headers seen: {headers})",
                field="file",
                headers=", ".join(table.headers),
            )
        report = ImportReport(
            format=table.format, encoding=table.encoding, delimiter=table.delimiter, mapping=columns
        )
        parser = _RowParser(table.headers, columns, dict(attribute_types or {}), report)
        seen = SeenTable()
        chunk: list[dict[str, Any]] = []
        statistics = _Statistics(session)
        for item in table.rows:
            if isinstance(item, RowProblem):
                report.rows += 1
                report.errors.append(
                    RowError(item.line, item.column, item.value, item.reason, dict(item.params))
                )
                continue
            report.rows += 1
            contact = parser.parse(item)
            if contact is None:
                continue
            if not seen.add(contact["email"]):
                report.duplicates_in_file += 1
                continue
            chunk.append(contact)
            if len(chunk) >= CHUNK_ROWS:
                _write_chunk(session, account_id, chunk, list_id, mode, report)
                chunk.clear()
                statistics.after_chunk()
                if progress:
                    progress(report, table.progress_fraction())
        if chunk:
            _write_chunk(session, account_id, chunk, list_id, mode, report)
    if progress:
        progress(report, 1.0)
    return report


class _RowParser:
    """Turns a row of text values into a contact dict, reporting what it cannot use."""

    def __init__(
        self,
        headers: list[str],
        mapping: dict[str, str],
        attribute_types: dict[str, str],
        report: ImportReport,
    ) -> None:
        self.targets = [(index, mapping[h], h) for index, h in enumerate(headers) if mapping[h]]
        self.email_header = next(h for h, t in mapping.items() if t == "email")
        self.attribute_types = attribute_types
        self.report = report

    def parse(self, row: Row) -> dict[str, Any] | None:
        contact: dict[str, Any] = {"attributes": {}}
        values = row.values
        for index, target, header in self.targets:
            value = values[index].strip() if index < len(values) else ""
            if target.startswith("attr:"):
                if value:
                    name = target[5:]
                    typed = self._typed(row.line, header, name, value)
                    if typed is not None:
                        contact["attributes"][name] = typed
            else:
                contact[target] = value
        raw_email = contact.get("email", "")
        verdict = check_syntax(raw_email)
        if not verdict.ok:
            self.report.errors.append(
                RowError(row.line, self.email_header, raw_email, verdict.reason or "empty address")
            )
            return None
        contact["email"] = verdict.normalized
        contact["email_domain"] = verdict.normalized.rpartition("@")[2]
        phone = contact.get("phone", "")
        if phone:
            checked = check_phone(phone)
            if checked.ok:
                contact["phone"] = checked.e164
                contact["phone_kind"] = checked.kind.value
            else:
                contact["phone"] = ""
                header = next(h for _, t, h in self.targets if t == "phone")
                self.report.errors.append(
                    RowError(
                        row.line,
                        header,
                        phone,
                        "not a valid phone number ({reason}): the contact was imported without it",
                        {"reason": checked.reason},
                    )
                )
        return contact

    def _typed(self, line: int, header: str, name: str, value: str) -> Any:
        kind = self.attribute_types.get(name, AttributeType.TEXT)
        try:
            return coerce_attribute(kind, value)
        except ValueError as exc:
            self.report.errors.append(
                RowError(
                    line,
                    header,
                    value,
                    "{problem}: the contact was imported without this value",
                    {"problem": str(exc)},
                )
            )
            return None


TRUE_WORDS = frozenset({"1", "si", "sí", "s", "x", "true", "verdadero", "yes", "y"})
FALSE_WORDS = frozenset({"0", "no", "n", "false", "falso", ""})


def coerce_attribute(kind: str, value: Any) -> Any:
    """A typed attribute value from text (or JSON), or ValueError saying what is wrong."""
    if kind == AttributeType.NUMBER:
        if isinstance(value, bool):
            raise ValueError(f"'{value}' is not a number")
        if isinstance(value, int | float):
            return value
        return _number(str(value))
    if kind == AttributeType.DATE:
        return _date(str(value))
    if kind == AttributeType.BOOLEAN:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"'{value}' is not yes/no (use sí, no, true, false, 1 or 0)")
    return str(value)


def _number(text: str) -> int | float:
    cleaned = text.strip().replace(" ", "").replace("S/", "").replace("$", "")
    if "," in cleaned and "." in cleaned:
        # The last separator is the decimal one: 1.234,50 or 1,234.50.
        if cleaned.rfind(",") > cleaned.rfind("."):
            cleaned = cleaned.replace(".", "").replace(",", ".")
        else:
            cleaned = cleaned.replace(",", "")
    elif cleaned.count(",") == 1:
        cleaned = cleaned.replace(",", ".")
    try:
        number = float(cleaned)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"'{text}' is not a number")
    return int(number) if number.is_integer() and "." not in cleaned else number


def _date(text: str) -> str:
    text = text.strip()
    try:
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        pass
    for layout in ("%d/%m/%Y", "%d-%m-%Y", "%d/%m/%y", "%d.%m.%Y"):
        try:
            return datetime.strptime(text, layout).date().isoformat()
        except ValueError:
            continue
    raise ValueError(f"'{text}' is not a date (use DD/MM/AAAA or AAAA-MM-DD)")


def _insert_ignore(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """Core INSERT … ON CONFLICT DO NOTHING as one executemany (the ORM's bulk path costs
    several times more per row)."""
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(table.__table__)
    session.connection().execute(statement.on_conflict_do_nothing(), rows)


UPDATABLE = ("first_name", "last_name", "phone", "phone_kind", "company", "position", "document")


class _Statistics:
    """Keeps PostgreSQL's planner informed while one transaction fills the contacts table.

    Without statistics (a new install, or a list many times larger than the table) the
    planner takes the growing table for a few pages and scans it for every chunk's lookup,
    so a large import slowed down quadratically.  ANALYZE in the importing transaction sees
    its own rows; it runs after 1, 2, 4, 8... chunks (a few times per import).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.enabled = session.get_bind().dialect.name == "postgresql"
        self.chunks = 0
        self.next_at = 1

    def after_chunk(self) -> None:
        self.chunks += 1
        if self.enabled and self.chunks >= self.next_at:
            self.session.execute(text("ANALYZE contacts, list_members"))
            self.next_at *= 2


def _among(session: Session, column: Any, values: list[Any], kind: Any) -> ColumnElement[bool]:
    """``column IN (...)`` for a chunk.  On PostgreSQL one array parameter (``= ANY(:v)``):
    with thousands of separate parameters, and no table statistics yet in the middle of a
    large import, the planner scanned every contact of the account and compared each with
    the whole list, which grew quadratically (minutes for 200,000 rows); with the array it
    probes the index."""
    if session.get_bind().dialect.name == "postgresql":
        return col(column) == any_(cast(values, ARRAY(kind)))
    return col(column).in_(values)


def _email_among(session: Session, emails: list[str]) -> ColumnElement[bool]:
    return _among(session, Contact.email, emails, String)


def _write_chunk(
    session: Session,
    account_id: int,
    chunk: list[dict[str, Any]],
    list_id: int | None,
    mode: str,
    report: ImportReport,
) -> None:
    emails = [c["email"] for c in chunk]
    existing = {
        row.email: row
        for row in session.execute(
            select(
                col(Contact.id),
                col(Contact.email),
                *(getattr(Contact, name) for name in UPDATABLE),
                col(Contact.attributes),
            ).where(col(Contact.account_id) == account_id, _email_among(session, emails))
        )
    }
    new_addresses = [e for e in emails if e not in existing]
    suppressed = (
        suppressed_among(session, account_id, "email", new_addresses)
        if new_addresses and mode != "update"
        else set()
    )
    now = utcnow()
    new_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for contact in chunk:
        current = existing.get(contact["email"])
        if current is None:
            if mode == "update":
                report.skipped += 1
            elif contact["email"] in suppressed:
                report.suppressed += 1
            else:
                new_rows.append(
                    {
                        "account_id": account_id,
                        "email": contact["email"],
                        "email_domain": contact["email_domain"],
                        **{name: contact.get(name, "") for name in UPDATABLE},
                        "attributes": contact["attributes"],
                        "email_status": "active",
                        "sms_status": "active",
                        "email_verdict": "",
                        "email_reasons": "",
                        "email_suggestion": "",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            continue
        if mode == "add":
            report.unchanged += 1
            continue
        changes: dict[str, Any] = {
            name: contact[name]
            for name in UPDATABLE
            if contact.get(name) and contact[name] != getattr(current, name)
        }
        merged = {**(current.attributes or {}), **contact["attributes"]}
        if merged != (current.attributes or {}):
            changes["attributes"] = merged
        if changes:
            updates.append({"id": current.id, "updated_at": now, **changes})
            report.updated += 1
        else:
            report.unchanged += 1
    if new_rows:
        _insert_ignore(session, Contact, new_rows)
        report.created += len(new_rows)
    if updates:
        # ORM bulk UPDATE by primary key: one executemany per set of changed columns.
        session.execute(update(Contact), updates)
    if list_id is not None:
        _add_members(session, account_id, list_id, emails, suppressed, now, report)
    session.flush()


def _add_members(
    session: Session,
    account_id: int,
    list_id: int,
    emails: list[str],
    suppressed: set[str],
    now: datetime,
    report: ImportReport,
) -> None:
    wanted = [e for e in emails if e not in suppressed]
    ids = (
        session.execute(
            select(col(Contact.id)).where(
                col(Contact.account_id) == account_id, _email_among(session, wanted)
            )
        )
        .scalars()
        .all()
    )
    already = set(
        session.execute(
            select(col(ListMember.contact_id)).where(
                col(ListMember.list_id) == list_id,
                _among(session, ListMember.contact_id, list(ids), Integer),
            )
        ).scalars()
    )
    members = [
        {"list_id": list_id, "contact_id": cid, "created_at": now}
        for cid in ids
        if cid not in already
    ]
    if members:
        session.connection().execute(insert(ListMember.__table__), members)  # type: ignore[attr-defined]
        report.added_to_list += len(members)
