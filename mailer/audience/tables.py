"""Contact files as tables: CSV and XLSX read as a stream of rows, and written back.

``open_table`` tells the format by its content (the name only shapes messages), reads the
header and returns a ``Table`` whose ``rows`` are read lazily: memory stays flat whatever
the size of the file.  The stream holds a ``Row`` for every good row and a ``RowProblem``
for every bad one, in file order, so an import can keep the good rows and report the bad
ones; a problem that stops the reading (a quote never closed, a damaged workbook) is
``fatal`` and ends the stream.  A file that is not a table at all (a legacy ``.xls``, a PDF,
an empty file) is refused up front with ``ValidationFailed`` saying how to fix it.

``write_table`` writes a table as CSV (UTF-8 with a BOM, so Excel shows accents right) or
as XLSX, streamed, chosen by the suffix of the path.

What a row's ``line`` means:

* CSV: the physical line on which the row *starts*, counted as a text editor counts them
  (the first line is 1; ``\\n``, ``\\r\\n`` and ``\\r`` each end a line, blank lines and
  the line breaks inside quoted values included).  It is the ``reader.line_num`` of the
  ``csv`` module just before the row was read, plus one.  A spreadsheet shows a quoted
  multi-line value as one row, so after such a value its row numbers are lower.
* XLSX: the worksheet row number, as Excel shows it.

Mapping headers to contact fields, checking addresses and writing to the database live in
``mailer.audience.importer``; nothing here knows what a contact is.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import logging
import math
import re
import secrets
import shutil
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from charset_normalizer import from_bytes
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.cell.cell import ERROR_CODES  # type: ignore[import-untyped]
from openpyxl.utils import get_column_letter  # type: ignore[import-untyped]

from mailer.core.errors import Term, ValidationFailed

log = logging.getLogger(__name__)

SNIFF_BYTES: Final = 64 * 1024  # read to tell the format, the encoding and the delimiter
DELIMITERS: Final = ",;\t|"
MAX_LINE_CHARS: Final = 1 << 20  # a longer physical line is skipped, never held in memory
XLSX_BATCH_ROWS: Final = 512  # rows taken from openpyxl at a time (see _openpyxl_warnings)
XLSX_MAX_ROWS: Final = 1_048_576
XLSX_MAX_COLUMNS: Final = 16_384
EXCERPT_CHARS: Final = 200

# Reasons given in RowProblem.reason: English templates, translated by the interfaces.
WRONG_COLUMN_COUNT: Final = (
    "the row has {found} columns, the header has {expected} (a separator or quote inside a value?)"
)
WRONG_COLUMN_COUNT_MULTILINE: Final = (
    "the row from line {line} to line {last_line} has {found} columns, the header has "
    "{expected} (a quote never closed?)"
)
QUOTE_NEVER_CLOSED: Final = (
    "a quote opened in this row is never closed, so the file cannot be read from line "
    "{line} to its end (line {last_line}): close or remove that quote and import the rest again"
)
VALUE_TOO_LONG: Final = (
    "a value is longer than {limit} characters (lines {line} to {last_line}): the row was "
    "skipped (a quote never closed?)"
)
LINE_TOO_LONG: Final = (
    "line {long_line} is longer than {limit} characters: the row was skipped "
    "(is this really a CSV file?)"
)
NUL_IN_VALUE: Final = (
    "the value contains NUL characters (a damaged file, or one saved as UTF-16 without a BOM?)"
)
ROW_UNREADABLE: Final = "the row cannot be read: {error}"
VALUE_WITHOUT_HEADER: Final = (
    "the row has a value in column {column}, right of the last column with a header "
    "({last}): give that column a header or clear it"
)
WORKBOOK_DAMAGED_FROM: Final = (
    "the workbook cannot be read from row {line} on: {error} (open it in Excel and save it again)"
)

# Messages of ValidationFailed: the file as a whole cannot be read.
EMPTY_FILE: Final = "the file is empty: it has no header row"
LEGACY_XLS: Final = (
    "the file is an Excel 97-2003 workbook (.xls) or a password-protected one, which cannot "
    "be read: open it in Excel and save it as .xlsx or as CSV UTF-8, without a password"
)
NOT_A_TABLE: Final = (
    "the file is {what}, not a table: export the contacts as CSV or as an Excel .xlsx workbook"
)
NOT_A_WORKBOOK: Final = (
    "the file is {what}, not an Excel workbook: open it and save it as .xlsx or as CSV UTF-8"
)
WORKBOOK_UNREADABLE: Final = (
    "the Excel workbook cannot be opened ({error}): open it in Excel and save it again as "
    ".xlsx, or export it as CSV UTF-8"
)
WORKBOOK_EMPTY: Final = "the workbook has no data: none of its sheets has a header row"
HEADER_UNREADABLE: Final = (
    "the header row (line {line}) cannot be read: {error}; check that the file is a CSV export"
)
HEADER_QUOTE_NEVER_CLOSED: Final = (
    "a quote in the header row (line {line}) is never closed: close or remove it"
)

_MAGIC_NOT_A_TABLE: Final = (
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "an image"),
    (b"\xff\xd8\xff", "an image"),
    (b"GIF8", "an image"),
    (b"\x1f\x8b", "a compressed (gzip) file"),
    (b"Rar!", "a compressed (RAR) archive"),
    (b"7z\xbc\xaf\x27\x1c", "a compressed (7z) archive"),
    (b"{\\rtf", "a Word (RTF) document"),
)
_OLE2: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP: Final = b"PK\x03\x04"
_EMPTY_ZIP: Final = b"PK\x05\x06"
_CP1252_FALLBACK: Final = "mailer-tables-cp1252-fallback"


def _decode_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Bytes that are not UTF-8 in a file read as UTF-8 are read as cp1252: files glued
    together from several exports mix both, and cp1252 is the Windows default here."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return bytes(bad).decode("cp1252", errors="replace"), error.end


codecs.register_error(_CP1252_FALLBACK, _decode_as_cp1252)


@dataclass(frozen=True, slots=True)
class Row:
    """A good row: exactly one stripped text value per header."""

    line: int
    values: list[str]


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row that cannot be used, or (``fatal``) the point where reading stopped.

    ``column`` is a header, or ``"*"`` for the whole row; ``value`` a raw excerpt;
    ``reason`` an English template filled in with ``params`` (see ``message``).
    """

    line: int
    column: str
    value: str
    reason: str
    params: dict[str, Any]
    fatal: bool = False

    def message(self) -> str:
        return self.reason.format(**self.params) if self.params else self.reason


TableItem = Row | RowProblem


class _Progress:
    """How far the reading is, and the resources to release when it ends (last in, first
    released)."""

    def __init__(self, total: int, position: Callable[[], int] | None = None) -> None:
        self.total = total  # in the unit of position(), 0 when unknown
        self._position = position
        self.rows_read = 0  # the position when no callable gives it
        self.finished = False
        self.closers: list[Callable[[], None]] = []

    def position(self) -> int:
        return self._position() if self._position is not None else self.rows_read

    def release(self) -> None:
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            close()


@dataclass(slots=True)
class Table:
    """A table being read.  Iterate ``rows`` (or the table) once; ``close`` it, or use it as
    a context manager, when stopping early (reading to the end closes it too)."""

    format: str  # "csv" | "xlsx"
    headers: list[str]
    encoding: str  # csv only
    delimiter: str  # csv only
    sheet: str  # xlsx only
    rows: Iterator[TableItem]
    size_hint: int  # bytes of the source, 0 when unknown
    _progress: _Progress = field(repr=False, compare=False)

    def position(self) -> int:
        """CSV: bytes read from the source so far (the decoder reads ahead by a few KB);
        XLSX: worksheet rows read so far.  ``progress_fraction`` puts it over its total."""
        return self._progress.position()

    def progress_fraction(self) -> float:
        """From 0 to 1: CSV bytes over ``size_hint``; XLSX rows over the row count the sheet
        declares.  0 while the total is unknown, 1 once the stream has ended."""
        if self._progress.finished:
            return 1.0
        total = self._progress.total
        return min(1.0, self._progress.position() / total) if total > 0 else 0.0

    def close(self) -> None:
        close_rows = getattr(self.rows, "close", None)
        if callable(close_rows):
            close_rows()  # a suspended generator runs its cleanup
        self._progress.release()

    def __iter__(self) -> Iterator[TableItem]:
        return self.rows

    def __enter__(self) -> Table:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- opening ------------------------------------------------------------------------------


def open_table(source: Path | IO[bytes], filename: str = "") -> Table:
    """The table in *source* (a path, or a binary stream left open for the caller).

    The format is told by the content, so a CSV named ``.xlsx`` is still read; *filename*
    (by default the path's) only makes the message about a damaged file clearer.  Raises
    ``ValidationFailed`` when the file is not a table that can be read.
    """
    if isinstance(source, Path):
        stream: IO[bytes] = source.open("rb")
        try:
            table = _open_stream(stream, filename or source.name, owned=True)
        except BaseException:
            stream.close()
            raise
        return table
    return _open_stream(source, filename or str(getattr(source, "name", "")), owned=False)


def _open_stream(stream: IO[bytes], filename: str, *, owned: bool) -> Table:
    start = stream.tell() if stream.seekable() else 0
    size = _remaining_bytes(stream, start)
    head = _read_up_to(stream, SNIFF_BYTES)
    if not head:
        raise ValidationFailed(EMPTY_FILE, field="file")
    if head.startswith(_OLE2):
        raise ValidationFailed(LEGACY_XLS, field="file")
    if head.startswith((_ZIP, _EMPTY_ZIP)):
        workbook_file = _seekable_copy(stream, head, start)
        try:
            table = _open_xlsx(workbook_file, size)
        except BaseException:
            if workbook_file is not stream:
                workbook_file.close()
            raise
        if workbook_file is not stream:
            table._progress.closers.insert(0, workbook_file.close)
    else:
        _refuse_if_not_text(head)
        table = _open_csv(stream, head, size, filename)
    if owned:
        table._progress.closers.insert(0, stream.close)
    return table


def _remaining_bytes(stream: IO[bytes], start: int) -> int:
    if not stream.seekable():
        return 0
    end = stream.seek(0, io.SEEK_END)
    stream.seek(start)
    return max(0, end - start)


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    wanted = size
    while wanted > 0:
        part = stream.read(wanted)
        if not part:
            break
        parts.append(part)
        wanted -= len(part)
    return b"".join(parts)


def _seekable_copy(stream: IO[bytes], head: bytes, start: int) -> IO[bytes]:
    """*stream* rewound to *start*, or a temporary copy when it cannot seek (zip needs to)."""
    if stream.seekable():
        stream.seek(start)
        return stream
    copy = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the table
    copy.write(head)
    shutil.copyfileobj(stream, copy)
    copy.seek(0)
    return copy


def _refuse_if_not_text(head: bytes) -> None:
    """Refuse the formats that can be told by their first bytes."""
    for magic, what in _MAGIC_NOT_A_TABLE:
        if head.startswith(magic):
            raise ValidationFailed(NOT_A_TABLE, field="file", what=Term(what))
    start = head[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(b"<"):
        if b"urn:schemas-microsoft-com:office:spreadsheet" in head[:4096]:
            what = "an Excel 2003 XML spreadsheet"
        elif b"<html" in start or b"<table" in start or start.startswith(b"<!doctype html"):
            what = "a web page (HTML) with an Excel name, as some systems export"
        else:
            what = "an XML document"
        raise ValidationFailed(NOT_A_WORKBOOK, field="file", what=Term(what))


# --- CSV ----------------------------------------------------------------------------------


def detect_encoding(sample: bytes, *, complete: bool = False) -> str:
    """The encoding of *sample*, the start of a file (*complete* when it is all of it)."""
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    half = len(sample) // 2
    if half >= 8:  # UTF-16 without a BOM: mostly ASCII, so every other byte is NUL
        odd_nul, even_nul = sample[1::2].count(0), sample[0::2].count(0)
        if odd_nul > half * 0.4 and even_nul < half * 0.05:
            return "utf-16-le"
        if even_nul > half * 0.4 and odd_nul < half * 0.05:
            return "utf-16-be"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        # A sample cut in the middle of a multi-byte character is still UTF-8.
        if not complete and exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data":
            return "utf-8"
    if _reads_as_western_cp1252(sample):
        return "cp1252"
    best = from_bytes(sample).best()
    # Spreadsheets exported on Windows in Spanish are cp1252 far more often than anything
    # charset-normalizer may prefer for a short sample; cp1252 is latin-1's printable superset.
    if best is None or best.encoding in {"latin_1", "iso8859_15", "cp1250", "mac_roman", "ascii"}:
        return "cp1252"
    return str(best.encoding)


_NON_ASCII_RUN = re.compile("[^\x00-\x7f]+")


def _reads_as_western_cp1252(sample: bytes) -> bool:
    """Whether *sample* is cp1252 text in a Western language.  There, accented letters sit
    inside words of ASCII letters ("Núñez", "Peña"); Cyrillic or Greek text read as cp1252
    gives whole words without an ASCII letter.  charset-normalizer guesses wrong on short
    Spanish samples (a few accents in a sea of ASCII), which this settles first; the price
    is Turkish (cp1254), whose six own letters would come out wrong."""
    try:
        text = sample.decode("cp1252")
    except UnicodeDecodeError:
        return False
    runs = foreign_words = 0
    for run in _NON_ASCII_RUN.finditer(text):
        runs += 1
        before = text[run.start() - 1 : run.start()]
        after = text[run.end() : run.end() + 1]
        if (
            len(run.group()) >= 2
            and run.group().isalpha()
            and not (before.isascii() and before.isalpha())
            and not (after.isascii() and after.isalpha())
        ):
            foreign_words += 1
    return runs > 0 and foreign_words * 5 <= runs


def detect_delimiter(text_sample: str) -> str:
    """The candidate (``, ; TAB |``) that splits the header into most records of the same
    width; the header decides, so separators inside values do not mislead it."""
    best: tuple[int, int, int] | None = None
    chosen = ","
    for rank, delimiter in enumerate(DELIMITERS):
        widths: list[int] = []
        reader = csv.reader(io.StringIO(text_sample, newline=""), delimiter=delimiter)
        with suppress(csv.Error):
            for record in itertools.islice(reader, 200):
                if any(value.strip() for value in record):
                    widths.append(len(record))
        if not widths or widths[0] < 2:
            continue
        score = (sum(1 for width in widths if width == widths[0]), widths[0], -rank)
        if best is None or score > best:
            best, chosen = score, delimiter
    return chosen


class _CountedBytes(io.RawIOBase):
    """The sniffed head, then the rest of the source, counting the bytes handed out."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._head:
            count = min(len(target), len(self._head))
            target[:count] = self._head[:count]
            self._head = self._head[count:]
        else:
            data = self._rest.read(len(target))
            count = len(data)
            target[:count] = data
        self.consumed += count
        return count


class _LineTooLong(Exception):
    pass


class _Lines:
    """The physical lines handed to ``csv.reader``, counted (what ``reader.line_num``
    counts), with note taken of NUL characters and of the end of the file."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self.count = 0
        self.exhausted = False
        self.saw_nul = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(MAX_LINE_CHARS)
        if not line:
            self.exhausted = True
            raise StopIteration
        self.count += 1
        if len(line) == MAX_LINE_CHARS and line[-1] not in "\r\n":
            while (rest := self._text.readline(MAX_LINE_CHARS)) and rest[-1] not in "\r\n":
                pass
            raise _LineTooLong
        if "\x00" in line:
            self.saw_nul = True
        return line


_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ufffd]")


def _open_csv(stream: IO[bytes], head: bytes, size: int, filename: str) -> Table:
    encoding = detect_encoding(head, complete=len(head) < SNIFF_BYTES)
    sample = head.decode(encoding, errors="replace")
    if len(_NOT_TEXT.findall(sample)) > len(sample) // 10:
        if Path(filename).suffix.lower() in {".xlsx", ".xlsm", ".xls"}:
            what = "a damaged Excel file (its name says Excel, its content is not a workbook)"
        else:
            what = "binary data"
        raise ValidationFailed(NOT_A_TABLE, field="file", what=Term(what))
    if len(head) == SNIFF_BYTES:  # the last line may be cut
        sample = sample[: max(sample.rfind("\n"), sample.rfind("\r")) + 1] or sample
    delimiter = detect_delimiter(sample)
    source = _CountedBytes(head, stream)
    errors = _CP1252_FALLBACK if encoding in {"utf-8", "utf-8-sig"} else "replace"
    text = io.TextIOWrapper(
        io.BufferedReader(source, SNIFF_BYTES), encoding=encoding, errors=errors, newline=""
    )
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        headers = _csv_headers(lines, reader)
    except BaseException:
        text.close()  # the wrapper only: the stream is the caller's (or open_table's)
        raise
    progress = _Progress(size, lambda: source.consumed)
    # Closing the wrapper closes _CountedBytes only: the caller's stream stays open.
    progress.closers.append(text.close)
    rows = _csv_rows(lines, reader, headers, delimiter, progress)
    return Table("csv", headers, encoding, delimiter, "", rows, size, progress)


def _csv_headers(lines: _Lines, reader: Iterator[list[str]]) -> list[str]:
    while True:
        line = lines.count + 1
        try:
            record = next(reader)
        except StopIteration:
            raise ValidationFailed(EMPTY_FILE, field="file") from None
        except _LineTooLong:
            raise ValidationFailed(
                HEADER_UNREADABLE, field="file", line=line, error=Term("the line is too long")
            ) from None
        except csv.Error as exc:
            raise ValidationFailed(
                HEADER_UNREADABLE, field="file", line=line, error=Term(str(exc))
            ) from exc
        if lines.exhausted:
            raise ValidationFailed(HEADER_QUOTE_NEVER_CLOSED, field="file", line=line)
        cells = [value.replace("\x00", "").strip() for value in record]
        if any(cells):
            return name_headers(cells)


def _csv_rows(
    lines: _Lines,
    reader: Iterator[list[str]],
    headers: list[str],
    delimiter: str,
    progress: _Progress,
) -> Generator[TableItem, None, None]:
    width = len(headers)
    try:
        while True:
            line = lines.count + 1
            lines.saw_nul = False
            try:
                record = next(reader)
            except StopIteration:
                break
            except _LineTooLong:
                yield RowProblem(
                    line,
                    "*",
                    "",
                    LINE_TOO_LONG,
                    {"long_line": lines.count, "limit": MAX_LINE_CHARS},
                )
                continue
            except csv.Error as exc:
                if lines.count < line:  # nothing was consumed: going on would loop
                    yield RowProblem(line, "*", "", ROW_UNREADABLE, {"error": str(exc)}, True)
                    break
                yield _csv_error_problem(exc, line, lines.count)
                continue
            if lines.exhausted:
                # csv.reader ends a record at the end of the file only inside quotes.
                params = {"line": line, "last_line": lines.count}
                excerpt = _excerpt(delimiter.join(record))
                yield RowProblem(line, "*", excerpt, QUOTE_NEVER_CLOSED, params, fatal=True)
                break
            values = [value.strip() for value in record]
            if not any(values):
                continue
            if len(values) != width:
                yield _wrong_width(line, lines.count, values, width, delimiter)
            elif lines.saw_nul and any("\x00" in value for value in values):
                column = next(i for i, value in enumerate(values) if "\x00" in value)
                yield RowProblem(line, headers[column], _excerpt(values[column]), NUL_IN_VALUE, {})
            else:
                yield Row(line, values)
        progress.finished = True
    finally:
        progress.release()


def _csv_error_problem(error: csv.Error, line: int, last_line: int) -> RowProblem:
    if "field larger than field limit" in str(error):
        params = {"limit": csv.field_size_limit(), "line": line, "last_line": last_line}
        return RowProblem(line, "*", "", VALUE_TOO_LONG, params)
    return RowProblem(line, "*", "", ROW_UNREADABLE, {"error": str(error)})


def _wrong_width(
    line: int, last_line: int, values: list[str], width: int, delimiter: str
) -> RowProblem:
    params: dict[str, Any] = {"found": len(values), "expected": width}
    reason = WRONG_COLUMN_COUNT
    if last_line > line:
        reason = WRONG_COLUMN_COUNT_MULTILINE
        params |= {"line": line, "last_line": last_line}
    return RowProblem(line, "*", _excerpt(delimiter.join(values)), reason, params)


def _excerpt(text: str) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def name_headers(cells: list[str]) -> list[str]:
    """Header cells as column names: blanks named ``columna_N`` (N from 1), repeated names
    made unique with ``_2``, ``_3``… (never taking a name another column has)."""
    named = [cell or f"columna_{index}" for index, cell in enumerate(cells, start=1)]
    taken: set[str] = set()
    originals = set(named)
    headers: list[str] = []
    for name in named:
        unique = name
        suffix = 2
        while unique in taken:
            unique = f"{name}_{suffix}"
            suffix += 1
            if unique in originals:
                unique = name  # keep counting past a name another column has
        taken.add(unique)
        headers.append(unique)
    return headers


# --- XLSX ---------------------------------------------------------------------------------

# warnings.catch_warnings changes process-wide state: sections that use it must not overlap.
_WARNINGS_LOCK = threading.Lock()


@contextmanager
def _openpyxl_warnings() -> Iterator[None]:
    """openpyxl warns about parts of a workbook it drops (styles, extensions) and about
    dates out of range: those are logged.  Any other warning is raised again as it came."""
    caught: list[warnings.WarningMessage] = []
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                caught = list(recorded)
    finally:
        for warning in caught:
            if issubclass(warning.category, UserWarning) and "openpyxl" in warning.filename:
                log.info("workbook: %s", warning.message)
            else:
                warnings.warn_explicit(
                    warning.message,
                    warning.category,
                    warning.filename,
                    warning.lineno,
                    source=warning.source,
                )


def _open_xlsx(workbook_file: IO[bytes], size: int) -> Table:
    _refuse_if_not_workbook(workbook_file)
    try:
        with _openpyxl_warnings():
            workbook = load_workbook(workbook_file, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds of errors on damaged files
        raise ValidationFailed(
            WORKBOOK_UNREADABLE, field="file", error=Term(_error_text(exc))
        ) from exc
    try:
        found = _first_sheet_with_header(workbook)
    except BaseException:
        workbook.close()
        raise
    if found is None:
        workbook.close()
        raise ValidationFailed(WORKBOOK_EMPTY, field="file")
    title, declared_rows, header_line, headers, sheet_rows = found
    progress = _Progress(declared_rows)
    progress.rows_read = header_line
    rows = _xlsx_rows(sheet_rows, headers, progress)
    progress.closers += [workbook.close, sheet_rows.close]
    return Table("xlsx", headers, "", "", title, rows, size, progress)


def _refuse_if_not_workbook(workbook_file: IO[bytes]) -> None:
    start = workbook_file.tell()
    try:
        with zipfile.ZipFile(workbook_file) as archive:
            names = set(archive.namelist())
            mimetype = archive.read("mimetype")[:100] if "mimetype" in names else b""
    except Exception as exc:  # zipfile raises BadZipFile, NotImplementedError, EOFError…
        raise ValidationFailed(
            NOT_A_WORKBOOK, field="file", what=Term("a damaged zip or .xlsx file")
        ) from exc
    finally:
        workbook_file.seek(start)
    if "xl/workbook.bin" in names:
        raise ValidationFailed(
            NOT_A_WORKBOOK, field="file", what=Term("an Excel binary workbook (.xlsb)")
        )
    if any(name.startswith("xl/") for name in names):
        return
    if mimetype.startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
        what = "an OpenDocument spreadsheet (.ods)"
    elif any(name.startswith("word/") for name in names):
        what = "a Word document"
    elif any(name.startswith("ppt/") for name in names):
        what = "a PowerPoint presentation"
    else:
        what = "a zip archive"
    raise ValidationFailed(NOT_A_WORKBOOK, field="file", what=Term(what))


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class _SheetDamaged(Exception):
    def __init__(self, line: int, error: Exception) -> None:
        super().__init__(str(error))
        self.line = line
        self.error = error


def _sheet_rows(worksheet: Any) -> Generator[tuple[int, list[str]], None, None]:
    """(worksheet row number, cell texts) for every row, blank ones included.  openpyxl is
    driven in batches so that its warnings are caught without running the caller's code
    under changed warning filters; raises _SheetDamaged where the XML stops making sense."""
    rows = worksheet.iter_rows(values_only=True)
    number = 0
    try:
        while True:
            batch: list[list[str]] = []
            failure: Exception | None = None
            with _openpyxl_warnings():
                try:
                    for cells in itertools.islice(rows, XLSX_BATCH_ROWS):
                        batch.append([cell_text(value) for value in cells])
                except Exception as exc:  # damaged XML, a number that is not one, zlib…
                    failure = exc
            for texts in batch:
                number += 1
                yield number, texts
            if failure is not None:
                raise _SheetDamaged(number + 1, failure)
            if len(batch) < XLSX_BATCH_ROWS:
                return
    finally:
        rows.close()


def _first_sheet_with_header(
    workbook: Any,
) -> tuple[str, int, int, list[str], Generator[tuple[int, list[str]], None, None]] | None:
    """The first visible worksheet with a non-empty row (hidden ones if no visible one has
    any): its title, declared row count, header line, headers and the rows after them."""
    sheets = sorted(workbook.worksheets, key=lambda sheet: sheet.sheet_state != "visible")
    for worksheet in sheets:
        declared_rows = worksheet.max_row or 0
        # The <dimension> a file declares may be wrong (some writers put "A1"); openpyxl
        # would cut the sheet to it, so it only serves as the progress estimate.
        worksheet.reset_dimensions()
        sheet_rows = _sheet_rows(worksheet)
        try:
            for line, texts in sheet_rows:
                width = _width(texts)
                if width:
                    headers = name_headers(texts[:width])
                    return worksheet.title, declared_rows, line, headers, sheet_rows
        except _SheetDamaged as damaged:
            raise ValidationFailed(
                WORKBOOK_UNREADABLE, field="file", error=Term(_error_text(damaged.error))
            ) from damaged
        sheet_rows.close()
    return None


def _width(texts: list[str]) -> int:
    """The number of cells up to the last non-empty one."""
    width = len(texts)
    while width and not texts[width - 1]:
        width -= 1
    return width


def _xlsx_rows(
    sheet_rows: Iterator[tuple[int, list[str]]],
    headers: list[str],
    progress: _Progress,
) -> Generator[TableItem, None, None]:
    width = len(headers)
    try:
        try:
            for line, texts in sheet_rows:
                progress.rows_read = line
                if not any(texts):
                    continue
                if len(texts) > width:
                    extra = next((i for i in range(width, len(texts)) if texts[i]), None)
                    if extra is not None:
                        params = {
                            "column": get_column_letter(extra + 1),
                            "last": get_column_letter(width),
                        }
                        excerpt = _excerpt(" | ".join(texts[: _width(texts)]))
                        yield RowProblem(line, "*", excerpt, VALUE_WITHOUT_HEADER, params)
                        continue
                    del texts[width:]
                elif len(texts) < width:
                    texts.extend([""] * (width - len(texts)))
                yield Row(line, texts)
        except _SheetDamaged as damaged:
            params = {"line": damaged.line, "error": _error_text(damaged.error)}
            yield RowProblem(damaged.line, "*", "", WORKBOOK_DAMAGED_FROM, params, fatal=True)
        progress.finished = True
    finally:
        progress.release()


def cell_text(value: object) -> str:
    """A cell's value as a list manager reads it: numbers without ``.0`` or exponents (a
    phone stored as a number stays its digits), dates as ISO dates, ``true``/``false``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    return str(value).strip()


def number_text(value: float) -> str:
    """*value* with the 15 significant digits Excel shows, in plain notation:
    ``987654321.0`` → ``987654321``, ``1e20`` → ``100000000000000000000``,
    ``0.1 + 0.2`` → ``0.3``."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    return format(Decimal(format(value, ".15g")), "f")


def _duration_text(value: dt.timedelta) -> str:
    seconds = round(value.total_seconds())
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    return f"{sign}{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- writing ------------------------------------------------------------------------------

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def write_table(path: Path, headers: list[str], rows: Iterable[list[Any]]) -> None:
    """Write a table to *path*: ``.csv`` (UTF-8 with BOM, comma) or ``.xlsx`` (one sheet,
    streamed).  The file appears whole or not at all."""
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".xlsx"}:
        raise ValidationFailed(
            "cannot write a '{suffix}' file: name the output .csv or .xlsx",
            field="output",
            suffix=suffix,
        )
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        if suffix == ".csv":
            _write_csv(partial, headers, rows)
        else:
            _write_xlsx(partial, headers, rows)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_csv(path: Path, headers: list[str], rows: Iterable[list[Any]]) -> None:
    # Values are written as they are: a CSV has no types, and prefixing "=" would alter data.
    with path.open("x", encoding="utf-8-sig", errors="replace", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(headers)
        for row in rows:
            writer.writerow(
                [value if isinstance(value, str) else cell_text(value) for value in row]
            )


def _write_xlsx(path: Path, headers: list[str], rows: Iterable[list[Any]]) -> None:
    if len(headers) > XLSX_MAX_COLUMNS:
        raise ValidationFailed(
            "the table has {count} columns, more than an .xlsx sheet holds ({limit}): "
            "write a .csv instead",
            field="output",
            count=len(headers),
            limit=XLSX_MAX_COLUMNS,
        )
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Sheet1")
    try:
        sheet.append([_xlsx_value(sheet, header) for header in headers])
        for count, row in enumerate(rows, start=2):
            if count > XLSX_MAX_ROWS or len(row) > XLSX_MAX_COLUMNS:
                raise ValidationFailed(
                    "the table is larger than an .xlsx sheet holds ({rows} rows, {columns} "
                    "columns): write a .csv instead",
                    field="output",
                    rows=XLSX_MAX_ROWS,
                    columns=XLSX_MAX_COLUMNS,
                )
            sheet.append([_xlsx_value(sheet, value) for value in row])
    except BaseException:
        _abandon(sheet)
        raise
    with path.open("xb") as out:
        workbook.save(out)


def _abandon(sheet: Any) -> None:
    """Finish openpyxl's half-written sheet, whose writers would fail noisily when collected,
    and remove its temporary file now rather than when the process exits."""
    with suppress(Exception):
        sheet.close()
        writer = getattr(sheet, "_writer", None)
        if writer is not None:
            writer.cleanup()


def _xlsx_value(sheet: Any, value: Any) -> Any:
    if value is None or isinstance(value, bool | int | dt.date | dt.time | dt.timedelta):
        if isinstance(value, dt.datetime | dt.time) and value.tzinfo is not None:
            return value.isoformat()  # Excel has no time zones
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return value if value.is_finite() else str(value)
    text = _XML_ILLEGAL.sub("", value if isinstance(value, str) else str(value))
    if text.startswith("=") or text in ERROR_CODES:
        # Text, not a formula or an error: a contact named "=HYPERLINK(…)" stays a name.
        cell = WriteOnlyCell(sheet, value=text)
        cell.data_type = "s"
        return cell
    return text
