"""Contact import from CSV: encoding and delimiter detected, columns mapped by header.

The file is read as a stream and written in chunks, so memory stays flat whatever its
size.  Every bad row is reported with its line number, column and reason; the good rows
are imported; running the same file again changes nothing.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from charset_normalizer import from_bytes
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from mailer.audience.models import Contact, ListMember
from mailer.cleaning.service import check_syntax
from mailer.core.clock import utcnow
from mailer.core.errors import ValidationFailed

CHUNK_ROWS = 1000
SNIFF_BYTES = 64 * 1024

# Header names, normalised (lower case, no accents, no spaces/punctuation), per field.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "correo", "correoelectronico", "mail", "emailaddress", "e_mail"),
    "first_name": ("firstname", "nombre", "nombres", "name", "givenname"),
    "last_name": ("lastname", "apellido", "apellidos", "surname", "familyname"),
    "phone": ("phone", "telefono", "celular", "movil", "mobile", "phonenumber", "whatsapp"),
    "company": ("company", "empresa", "razonsocial", "organizacion", "organization", "entidad"),
}


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row.  ``reason`` is an English template filled in with ``params``."""

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
    import_id: int | None = None  # the record kept by audience.service.import_contacts
    skipped: int = 0  # new addresses in ``update`` mode
    added_to_list: int = 0
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


def _normalise_header(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(c for c in decomposed if c.isalnum() or c == "_").replace("_", "")


def map_columns(headers: list[str]) -> dict[str, str]:
    """Header -> contact field; unknown headers become custom attributes."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for header in headers:
        key = _normalise_header(header)
        target = next(
            (
                f
                for f, aliases in HEADER_ALIASES.items()
                if key in {a.replace("_", "") for a in aliases}
            ),
            None,
        )
        if target is None or target in taken:
            slug = "_".join(
                unicodedata.normalize("NFKD", header.strip().lower())
                .encode("ascii", "ignore")
                .decode()
                .split()
            )
            target = f"attr:{slug or 'column'}"
        taken.add(target)
        mapping[header] = target
    return mapping


def detect_encoding(sample: bytes) -> str:
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        # A sample cut in the middle of a multi-byte character is still UTF-8.
        if exc.start >= len(sample) - 3:
            return "utf-8"
    best = from_bytes(sample).best()
    # Spreadsheets exported on Windows in Spanish are cp1252 far more often than anything
    # charset-normalizer may prefer for a short sample.
    if best is None or best.encoding in {"latin_1", "iso8859_15", "cp1250", "mac_roman"}:
        return "cp1252"
    return str(best.encoding)


def detect_delimiter(text_sample: str) -> str:
    try:
        return csv.Sniffer().sniff(text_sample, delimiters=",;\t|").delimiter
    except csv.Error:
        first = text_sample.splitlines()[0] if text_sample else ""
        return max(",;\t|", key=first.count)


def _iter_rows(stream: IO[bytes]) -> tuple[str, str, Iterator[tuple[int, list[str]]], list[str]]:
    sample = stream.read(SNIFF_BYTES)
    encoding = detect_encoding(sample)
    stream.seek(0)
    text = io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline="")
    delimiter = detect_delimiter(sample.decode(encoding, errors="replace"))
    reader = csv.reader(text, delimiter=delimiter)
    try:
        headers = next(reader)
    except StopIteration:
        raise ValidationFailed("the file is empty: it has no header row", field="file") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise UnreadableFrom(reader.line_num, str(exc)) from exc
            if any(v.strip() for v in values):
                yield reader.line_num, values

    return encoding, delimiter, rows(), headers


def import_csv(
    session: Session,
    account_id: int,
    source: Path | IO[bytes],
    *,
    list_id: int | None = None,
    mode: str = "add_or_update",
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import contacts; *mode* is ``add`` (new only), ``update`` (existing only) or both."""
    if mode not in {"add", "update", "add_or_update"}:
        raise ValidationFailed(
            "unknown import mode '{mode}': use add, update or add_or_update",
            field="mode",
            mode=mode,
        )
    if isinstance(source, Path):
        with source.open("rb") as stream:
            return import_csv(
                session, account_id, stream, list_id=list_id, mode=mode, progress=progress
            )
    encoding, delimiter, rows, headers = _iter_rows(source)
    mapping = map_columns(headers)
    if "email" not in mapping.values():
        raise ValidationFailed(
            "no e-mail column found: name one column 'email' or 'correo' (headers seen: {headers})",
            field="file",
            headers=", ".join(headers),
        )
    report = ImportReport(encoding=encoding, delimiter=delimiter, mapping=mapping)
    seen: set[str] = set()
    chunk: list[dict[str, Any]] = []
    try:
        for line, values in rows:
            report.rows += 1
            contact = _parse_row(line, headers, values, mapping, report)
            if contact is None:
                continue
            if contact["email"] in seen:
                report.duplicates_in_file += 1
                continue
            seen.add(contact["email"])
            chunk.append(contact)
            if len(chunk) >= CHUNK_ROWS:
                _write_chunk(session, account_id, chunk, list_id, mode, report)
                chunk.clear()
                if progress:
                    progress(report.rows)
    except UnreadableFrom as stop:
        # csv cannot resynchronise after this (typically a quote never closed): keep what
        # was read, and say where the file stopped being readable.
        report.errors.append(
            RowError(
                stop.line,
                "*",
                "",
                "the file cannot be read from here on: {error} (a quote never closed?)",
                {"error": stop.error},
            )
        )
    if chunk:
        _write_chunk(session, account_id, chunk, list_id, mode, report)
    if progress:
        progress(report.rows)
    return report


class UnreadableFrom(Exception):
    def __init__(self, line: int, error: str) -> None:
        super().__init__(error)
        self.line = line
        self.error = error


def _parse_row(
    line: int,
    headers: list[str],
    values: list[str],
    mapping: dict[str, str],
    report: ImportReport,
) -> dict[str, Any] | None:
    if len(values) != len(headers):
        report.errors.append(
            RowError(
                line,
                "*",
                "|".join(values)[:200],
                "the row has {found} columns, the header has {expected} "
                "(a separator or quote inside a value?)",
                {"found": len(values), "expected": len(headers)},
            )
        )
        return None
    contact: dict[str, Any] = {"attributes": {}}
    for header, value in zip(headers, values, strict=True):
        target = mapping[header]
        value = value.strip()
        if target.startswith("attr:"):
            if value:
                contact["attributes"][target[5:]] = value
        else:
            contact[target] = value
    email_header = next(h for h, t in mapping.items() if t == "email")
    verdict = check_syntax(contact.get("email", ""))
    if not verdict.ok:
        report.errors.append(RowError(line, email_header, contact.get("email", ""), verdict.reason))
        return None
    contact["email"] = verdict.normalized
    return contact


def _insert_ignore(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    session.execute(statement.on_conflict_do_nothing(), rows)


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
                col(Contact.first_name),
                col(Contact.last_name),
                col(Contact.phone),
                col(Contact.company),
                col(Contact.attributes),
            ).where(col(Contact.account_id) == account_id, col(Contact.email).in_(emails))
        )
    }
    now = utcnow()
    new_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for contact in chunk:
        current = existing.get(contact["email"])
        if current is None:
            if mode == "update":
                report.skipped += 1
                continue
            new_rows.append(
                {
                    "account_id": account_id,
                    "email": contact["email"],
                    "first_name": contact.get("first_name", ""),
                    "last_name": contact.get("last_name", ""),
                    "phone": contact.get("phone", ""),
                    "company": contact.get("company", ""),
                    "attributes": contact["attributes"],
                    "email_status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
            )
            continue
        if mode == "add":
            report.unchanged += 1
            continue
        changes: dict[str, Any] = {
            k: contact[k]
            for k in ("first_name", "last_name", "phone", "company")
            if k in contact and contact[k] and contact[k] != getattr(current, k)
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
        ids = (
            session.execute(
                select(col(Contact.id)).where(
                    col(Contact.account_id) == account_id, col(Contact.email).in_(emails)
                )
            )
            .scalars()
            .all()
        )
        already = set(
            session.execute(
                select(col(ListMember.contact_id)).where(
                    col(ListMember.list_id) == list_id,
                    col(ListMember.contact_id).in_(ids),
                )
            ).scalars()
        )
        members = [
            {"list_id": list_id, "contact_id": cid, "created_at": now}
            for cid in ids
            if cid not in already
        ]
        if members:
            session.execute(insert(ListMember), members)
            report.added_to_list += len(members)
    session.flush()
