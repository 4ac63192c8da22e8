"""Reading and writing contact files: CSV in the encodings and dialects that exports come in,
XLSX workbooks made here with openpyxl (some then edited to look like Excel's own), and
property tests that no input makes a row vanish or an unexpected exception escape."""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
import zipfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook, load_workbook  # type: ignore[import-untyped]

from mailer.audience import tables
from mailer.audience.tables import (
    LINE_TOO_LONG,
    NUL_IN_VALUE,
    QUOTE_NEVER_CLOSED,
    VALUE_TOO_LONG,
    VALUE_WITHOUT_HEADER,
    WORKBOOK_DAMAGED_FROM,
    WRONG_COLUMN_COUNT,
    WRONG_COLUMN_COUNT_MULTILINE,
    Row,
    RowProblem,
    Table,
    TableItem,
    name_headers,
    number_text,
    open_table,
    write_table,
)
from mailer.core.errors import ValidationFailed


def property_settings(max_examples: int) -> settings:
    # No example database: it would be a directory in the working tree.
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def read(data: bytes, filename: str = "") -> tuple[Table, list[TableItem]]:
    table = open_table(io.BytesIO(data), filename)
    with table:
        return table, list(table.rows)


def good(items: list[TableItem]) -> list[tuple[int, list[str]]]:
    return [(item.line, item.values) for item in items if isinstance(item, Row)]


def problems(items: list[TableItem]) -> list[RowProblem]:
    return [item for item in items if isinstance(item, RowProblem)]


def refused(data: bytes, filename: str = "") -> str:
    with pytest.raises(ValidationFailed) as caught:
        open_table(io.BytesIO(data), filename)
    assert caught.value.field == "file"
    return caught.value.message


class OneWayStream(io.RawIOBase):
    """An upload that can be read once, front to back (no seek, no tell)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# --- CSV: encodings and delimiters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "encoding"),
    [
        ("email,apellido\nana@example.pe,Ñúñez\n".encode(), "utf-8"),
        ("\ufeffemail,apellido\nana@example.pe,Ñúñez\n".encode(), "utf-8-sig"),
        ("email;apellido\r\nana@example.pe;Ñúñez\r\n".encode("cp1252"), "cp1252"),
        # latin-1 and cp1252 agree on every printable character a contact file holds.
        ("email;apellido\r\nana@example.pe;Ñúñez\r\n".encode("latin-1"), "cp1252"),
        # Excel's "Unicode text": UTF-16 with a BOM, tab-separated.
        ("email\tapellido\r\nana@example.pe\tÑúñez\r\n".encode("utf-16"), "utf-16"),
    ],
    ids=["utf-8", "utf-8-bom", "cp1252", "latin-1", "utf-16"],
)
def test_encodings_are_detected_and_accents_survive(encoded: bytes, encoding: str) -> None:
    table, items = read(encoded)
    assert (table.format, table.encoding, table.sheet) == ("csv", encoding, "")
    assert table.headers == ["email", "apellido"]
    assert items == [Row(2, ["ana@example.pe", "Ñúñez"])]


def test_a_spanish_windows_export_is_cp1252_even_with_few_accents() -> None:
    data = (
        "Correo Electrónico;Nombres;Apellidos;Teléfono\r\n"
        "jose@example.pe;José;Núñez;987654321\r\n"
        "maria@example.pe;María;Peña;\r\n"
    ).encode("cp1252")
    table, items = read(data)
    assert (table.encoding, table.delimiter) == ("cp1252", ";")
    assert table.headers[0] == "Correo Electrónico"
    assert good(items)[1] == (3, ["maria@example.pe", "María", "Peña", ""])


def test_cp1252_bytes_after_a_utf8_looking_start_are_still_read_right() -> None:
    # Two exports glued together: the first 64 KB are plain ASCII, then a cp1252 row.
    head = "email,apellido\n" + "".join(f"user{i}@example.pe,Perez\n" for i in range(4000))
    data = head.encode() + "late@example.pe,Ñúñez\n".encode("cp1252")
    assert len(head) > tables.SNIFF_BYTES
    table, items = read(data)
    assert table.encoding == "utf-8"
    assert good(items)[-1] == (4002, ["late@example.pe", "Ñúñez"])


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_each_delimiter_is_detected_by_the_header(delimiter: str) -> None:
    # Values hold the other separators, unquoted, to mislead a guess made from the rows.
    lines = [
        ["email", "empresa", "nota"],
        ["ana@example.pe", "Servicios, S.A.C.", "a;b|c"],
        ["luis@example.pe", "Tab\there", "x,y;z"],
    ]
    text = "\n".join(delimiter.join(v for v in line if delimiter not in v) for line in lines[:1])
    rows = [
        [v if delimiter not in v else f'"{v}"' for v in line] for line in lines[1:]
    ]  # quote a value only when it holds the real delimiter
    text += "\n" + "\n".join(delimiter.join(row) for row in rows) + "\n"
    table, items = read(text.encode())
    assert table.delimiter == delimiter
    assert good(items) == [(2, lines[1]), (3, lines[2])]


def test_a_single_column_file_is_read() -> None:
    table, items = read(b"email\nana@example.pe\nluis@example.pe\n")
    assert table.headers == ["email"]
    assert good(items) == [(2, ["ana@example.pe"]), (3, ["luis@example.pe"])]


# --- CSV: line numbers, blank rows, headers ----------------------------------------------------


def test_line_numbers_count_physical_lines_and_a_row_is_where_it_starts() -> None:
    data = (
        b"email,nota\r\n"  # 1
        b'ana@example.pe,"uno\r\ndos"\r\n'  # 2-3
        b"luis@example.pe,tres\r\n"  # 4
        b"\r\n"  # 5 blank
        b" , \r\n"  # 6 blank once stripped
        b'rosa@example.pe,"x\ny\rz"\n'  # 7-9 (\n and a lone \r both end a line)
        b"zoe@example.pe,w"  # 10, no final line break
    )
    _, items = read(data)
    assert good(items) == [
        (2, ["ana@example.pe", "uno\r\ndos"]),
        (4, ["luis@example.pe", "tres"]),
        (7, ["rosa@example.pe", "x\ny\rz"]),
        (10, ["zoe@example.pe", "w"]),
    ]
    assert problems(items) == []


def test_blank_lines_before_the_header_are_skipped() -> None:
    table, items = read(b"\n  \n,,\nemail,nombre\nana@example.pe,Ana\n")
    assert table.headers == ["email", "nombre"]
    assert good(items) == [(5, ["ana@example.pe", "Ana"])]


def test_values_and_headers_are_stripped() -> None:
    table, items = read(b" email , nombre \n  ana@example.pe ,\tAna  \n")
    assert table.headers == ["email", "nombre"]
    assert good(items) == [(2, ["ana@example.pe", "Ana"])]


def test_blank_and_repeated_headers_get_names() -> None:
    table, _ = read(b"email,,email, ,nombre,email\nx,,,,,\n")
    assert table.headers == ["email", "columna_2", "email_2", "columna_4", "nombre", "email_3"]


def test_a_made_up_name_never_takes_a_name_another_column_has() -> None:
    assert name_headers(["a", "a", "a_2"]) == ["a", "a_3", "a_2"]
    assert name_headers(["", "columna_1"]) == ["columna_1", "columna_1_2"]


# --- CSV: bad rows --------------------------------------------------------------------------


def test_rows_with_another_column_count_are_reported_not_fixed() -> None:
    data = (
        b"email,nombre,empresa\n"
        b"ana@example.pe,Ana,ACME\n"
        b"short@example.pe,Only two\n"
        b"long@example.pe,Luis,Servicios, S.A.C.\n"
        b'multi@example.pe,"two\nlines"\n'
        b"rosa@example.pe,Rosa,\n"
    )
    _, items = read(data)
    assert good(items) == [
        (2, ["ana@example.pe", "Ana", "ACME"]),
        (7, ["rosa@example.pe", "Rosa", ""]),
    ]
    short, long, multi = problems(items)
    assert (short.line, short.column, short.reason) == (3, "*", WRONG_COLUMN_COUNT)
    assert short.params == {"found": 2, "expected": 3}
    assert short.value == "short@example.pe,Only two"
    assert short.message() == (
        "the row has 2 columns, the header has 3 (a separator or quote inside a value?)"
    )
    assert (long.line, long.params) == (4, {"found": 4, "expected": 3})
    assert (multi.line, multi.reason) == (5, WRONG_COLUMN_COUNT_MULTILINE)
    assert multi.params == {"found": 2, "expected": 3, "line": 5, "last_line": 6}


def test_nul_bytes_report_the_row_and_reading_goes_on() -> None:
    data = b"email,nombre\nana@example.pe,A\x00na\nluis@example.pe,Luis\n"
    _, items = read(data)
    assert items[0] == RowProblem(2, "nombre", "Ana", NUL_IN_VALUE, {})
    assert good(items) == [(3, ["luis@example.pe", "Luis"])]


def test_an_unclosed_quote_is_fatal_after_every_good_row_before_it() -> None:
    data = (
        b"email,nombre\n"
        b"ana@example.pe,Ana\n"
        b'luis@example.pe,"Luis\n'  # 3: the quote is never closed
        b"rosa@example.pe,Rosa\n"
        b"zoe@example.pe,Zoe\n"
    )
    _, items = read(data)
    assert good(items) == [(2, ["ana@example.pe", "Ana"])]
    fatal = items[-1]
    assert isinstance(fatal, RowProblem) and fatal.fatal
    assert (fatal.line, fatal.reason, fatal.params) == (
        3,
        QUOTE_NEVER_CLOSED,
        {"line": 3, "last_line": 5},
    )
    assert fatal.value.startswith("luis@example.pe,Luis\nrosa@example.pe")
    assert "cannot be read from line 3 to its end (line 5)" in fatal.message()


def test_a_value_longer_than_the_csv_limit_is_a_problem_not_a_crash() -> None:
    huge = "x" * (csv.field_size_limit() + 1)
    data = f"email,nota\nana@example.pe,{huge}\nluis@example.pe,ok\n".encode()
    _, items = read(data)
    (problem,) = problems(items)
    assert (problem.line, problem.reason, problem.fatal) == (2, VALUE_TOO_LONG, False)
    assert problem.params == {"limit": csv.field_size_limit(), "line": 2, "last_line": 2}
    assert good(items) == [(3, ["luis@example.pe", "ok"])]


def test_a_line_too_long_to_hold_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "MAX_LINE_CHARS", 64)
    data = b"email,nota\n" + b"a" * 500 + b",x\r\nluis@example.pe,ok\n"
    _, items = read(data)
    assert items[0] == RowProblem(2, "*", "", LINE_TOO_LONG, {"long_line": 2, "limit": 64})
    assert good(items) == [(3, ["luis@example.pe", "ok"])]


def test_excerpts_are_at_most_200_characters() -> None:
    data = ("email,nombre\n" + "x" * 300 + ",y,z\n").encode()
    _, items = read(data)
    assert len(problems(items)[0].value) == 200


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (b"", "contacts.csv", "the file is empty: it has no header row"),
        (b"\r\n \n,,\n", "contacts.csv", "the file is empty: it has no header row"),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500),
            "contacts.xls",
            "save it as .xlsx or as CSV UTF-8",
        ),
        (bytes(range(256)) * 20, "contacts.csv", "binary data, not a table"),
        (bytes(range(256)) * 20, "contacts.xlsx", "a damaged Excel file"),
        (b"%PDF-1.7\n...", "contacts.csv", "a PDF document, not a table"),
        (
            b"<html><body><table><tr><td>email</td></tr></table></body></html>",
            "report.xls",
            "a web page (HTML) with an Excel name",
        ),
        (b'"email\nnombre\n', "contacts.csv", "never closed"),
    ],
    ids=["empty", "blank", "legacy-xls", "binary", "binary-named-xlsx", "pdf", "html", "header"],
)
def test_files_that_are_not_tables_are_refused_saying_how_to_fix_it(
    data: bytes, filename: str, expected: str
) -> None:
    assert expected in refused(data, filename)


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_zips_that_are_not_workbooks_are_refused() -> None:
    assert "a zip archive, not an Excel workbook" in refused(zipped({"a.csv": b"email\n"}))
    ods = zipped({"mimetype": b"application/vnd.oasis.opendocument.spreadsheet"})
    assert "an OpenDocument spreadsheet (.ods)" in refused(ods)
    assert "a Word document" in refused(zipped({"word/document.xml": b"<w/>"}))
    assert "(.xlsb)" in refused(zipped({"xl/workbook.bin": b"\x00"}))
    assert "a damaged zip" in refused(b"PK\x03\x04" + bytes(100))


def test_a_truncated_workbook_is_refused() -> None:
    data = workbook_bytes([["email"], ["ana@example.pe"]])
    message = refused(data[: len(data) // 2])
    assert "damaged" in message or "cannot be opened" in message


def test_a_workbook_without_data_is_refused() -> None:
    workbook = Workbook()
    workbook.create_sheet("other")
    assert "the workbook has no data" in refused(save(workbook))


# --- sources, progress, closing ---------------------------------------------------------------


def test_a_path_is_opened_read_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"email,nombre\nana@example.pe,Ana\nluis@example.pe,Luis\n")
    table = open_table(path)
    assert table.size_hint == path.stat().st_size
    assert len(list(table.rows)) == 2
    assert (table.position(), table.progress_fraction()) == (path.stat().st_size, 1.0)
    table.close()  # closing again is harmless


def test_progress_moves_through_a_large_csv() -> None:
    data = b"email,n\n" + b"".join(b"user%d@example.pe,x\n" % i for i in range(50_000))
    table = open_table(io.BytesIO(data))
    fractions = []
    with table:
        for index, _ in enumerate(table.rows):
            if index % 10_000 == 0:
                fractions.append(table.progress_fraction())
        assert table.position() == len(data)
    assert fractions == sorted(fractions) and 0 < fractions[1] < fractions[-1] < 1
    assert table.progress_fraction() == 1.0


def test_closing_early_stops_the_stream_and_leaves_the_callers_stream_open() -> None:
    source = io.BytesIO(b"email\na@example.pe\nb@example.pe\n")
    with open_table(source) as table:
        assert next(table.rows) == Row(2, ["a@example.pe"])
    assert list(table.rows) == []
    assert not source.closed


def test_a_stream_that_cannot_seek_is_read() -> None:
    table = open_table(io.BufferedReader(OneWayStream(b"email\na@example.pe\n")))
    assert table.size_hint == 0
    with table:
        assert list(table) == [Row(2, ["a@example.pe"])]
    data = workbook_bytes([["email"], ["b@example.pe"]])
    with open_table(io.BufferedReader(OneWayStream(data))) as workbook_table:
        assert list(workbook_table) == [Row(2, ["b@example.pe"])]


# --- XLSX -------------------------------------------------------------------------------------


def save(workbook: Any) -> bytes:
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def workbook_bytes(rows: list[list[Any]], title: str = "Hoja1") -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = title
    for row in rows:
        sheet.append(row)
    return save(workbook)


def edit_sheet(
    data: bytes, edit: Callable[[str], str], member: str = "xl/worksheets/sheet1.xml"
) -> bytes:
    """The workbook *data* with one part rewritten, as another program would have written it."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == member:
                content = edit(content.decode()).encode()
            target.writestr(item.filename, content)
    return out.getvalue()


def test_cell_values_come_out_as_a_list_manager_reads_them() -> None:
    data = workbook_bytes(
        [
            ["email", "telefono", "telefono_float", "grande", "monto", "suma", "alta"],
            [
                "ana@example.pe",
                987654321,
                987654321.0,
                1e20,
                1234.5,
                0.1 + 0.2,
                dt.datetime(2024, 5, 31),
            ],
            [
                " luis@example.pe ",
                -5,
                2.5e-7,
                1234567890123,
                -0.0,
                True,
                dt.datetime(2024, 5, 31, 14, 30),
            ],
            ["rosa@example.pe", None, False, dt.date(2024, 1, 2), dt.time(8, 15), "  ", "texto"],
        ]
    )
    table, items = read(data, "contacts.xlsx")
    assert (table.format, table.sheet, table.encoding, table.delimiter) == ("xlsx", "Hoja1", "", "")
    assert good(items) == [
        (
            2,
            [
                "ana@example.pe",
                "987654321",
                "987654321",
                "100000000000000000000",
                "1234.5",
                "0.3",
                "2024-05-31",
            ],
        ),
        (
            3,
            [
                "luis@example.pe",
                "-5",
                "0.00000025",
                "1234567890123",
                "0",
                "true",
                "2024-05-31T14:30:00",
            ],
        ),
        (4, ["rosa@example.pe", "", "false", "2024-01-02", "08:15:00", "", "texto"]),
    ]


def test_number_text_shows_what_excel_shows() -> None:
    assert number_text(987654321.0) == "987654321"
    assert number_text(1e20) == "100000000000000000000"
    assert number_text(0.1 + 0.2) == "0.3"
    assert number_text(2.9999999999999996) == "3"
    assert number_text(-1.5) == "-1.5"
    assert number_text(float("inf")) == "inf"


def test_formulas_give_their_cached_value() -> None:
    # openpyxl writes a formula without a cached value (only Excel computes one) ...
    data = workbook_bytes([["email", "n", "doble"], ["ana@example.pe", 21, "=B2*2"]])
    assert good(read(data)[1]) == [(2, ["ana@example.pe", "21", ""])]
    # ... so give it the value Excel would have stored next to the formula.
    cached = edit_sheet(
        data, lambda xml: re.sub(r"<f>B2\*2</f>(<v\s*/>|<v></v>)?", "<f>B2*2</f><v>42</v>", xml)
    )
    assert (
        "<v>42</v>" in zipfile.ZipFile(io.BytesIO(cached)).read("xl/worksheets/sheet1.xml").decode()
    )
    assert good(read(cached)[1]) == [(2, ["ana@example.pe", "21", "42"])]


def test_empty_rows_are_skipped_and_lines_are_worksheet_rows() -> None:
    workbook = Workbook()
    sheet = workbook.active
    sheet["B3"] = "email"  # the header need not start at A1
    sheet["C3"] = "nombre"
    sheet["D3"] = None
    sheet["B4"] = "ana@example.pe"
    sheet["B7"] = "luis@example.pe"
    sheet["C7"] = "Luis"
    sheet["D7"] = ""  # a trailing empty cell is trimmed
    sheet["B9"] = "   "  # a row of blanks is skipped
    table, items = read(save(workbook))
    assert table.headers == ["columna_1", "email", "nombre"]
    assert good(items) == [(4, ["", "ana@example.pe", ""]), (7, ["", "luis@example.pe", "Luis"])]


def test_headers_with_blanks_and_duplicates_are_named() -> None:
    data = workbook_bytes(
        [
            ["email", None, "email", " Nombre ", None, None],
            ["a@example.pe", "x", "b@example.pe", "A"],
        ]
    )
    table, items = read(data)
    assert table.headers == ["email", "columna_2", "email_2", "Nombre"]
    assert good(items) == [(2, ["a@example.pe", "x", "b@example.pe", "A"])]


def test_a_value_right_of_the_last_header_is_reported() -> None:
    data = workbook_bytes(
        [["email", "nombre"], ["a@example.pe", "Ana", None, "nota suelta"], ["b@example.pe"]]
    )
    _, items = read(data)
    (problem,) = problems(items)
    assert (problem.line, problem.column, problem.reason) == (2, "*", VALUE_WITHOUT_HEADER)
    assert problem.params == {"column": "D", "last": "B"}
    assert problem.value == "a@example.pe | Ana |  | nota suelta"
    assert good(items) == [(3, ["b@example.pe", ""])]


def test_the_first_visible_sheet_with_data_is_read() -> None:
    workbook = Workbook()
    workbook.active.title = "Vacía"
    hidden = workbook.create_sheet("Oculta")
    hidden.append(["secret"])
    hidden.sheet_state = "hidden"
    contacts = workbook.create_sheet("Contactos")
    contacts.append(["email"])
    contacts.append(["ana@example.pe"])
    workbook.create_sheet("Otra").append(["other"])
    table, items = read(save(workbook))
    assert (table.sheet, table.headers) == ("Contactos", ["email"])
    assert good(items) == [(2, ["ana@example.pe"])]


def test_a_wrong_dimension_does_not_cut_the_sheet() -> None:
    # Some writers declare <dimension ref="A1"/> whatever the size; openpyxl would stop there.
    data = workbook_bytes([["email", "nombre"], ["a@example.pe", "Ana"], ["b@example.pe", "Bea"]])
    wrong = edit_sheet(
        data, lambda xml: re.sub(r'<dimension ref="[^"]*"\s*/>', '<dimension ref="A1"/>', xml)
    )
    assert (
        '<dimension ref="A1"/>'
        in zipfile.ZipFile(io.BytesIO(wrong)).read("xl/worksheets/sheet1.xml").decode()
    )
    _, items = read(wrong)
    assert good(items) == [(2, ["a@example.pe", "Ana"]), (3, ["b@example.pe", "Bea"])]


def test_a_sheet_damaged_halfway_is_fatal_after_the_good_rows() -> None:
    data = workbook_bytes([["email"], *[[f"user{i}@example.pe"] for i in range(10)]])
    cut = edit_sheet(
        data, lambda xml: xml[: xml.index('<row r="6"')] + '<row r="6"><c r="A6" t="n"><v>x'
    )
    _, items = read(cut)
    assert [line for line, _ in good(items)] == [2, 3, 4, 5]
    fatal = items[-1]
    assert isinstance(fatal, RowProblem) and fatal.fatal
    assert (fatal.line, fatal.reason) == (6, WORKBOOK_DAMAGED_FROM)


def test_openpyxl_warnings_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    # pytest turns warnings into errors here: a stylesheet without named styles and a
    # worksheet extension openpyxl drops must be handled by the reader.
    data = workbook_bytes([["email"], ["a@example.pe"]])
    data = edit_sheet(
        data,
        lambda xml: re.sub(r"<cellStyles.*?</cellStyles>", "", xml, flags=re.S),
        "xl/styles.xml",
    )
    extension = '<extLst><ext uri="{CCE6A557-97BC-4b89-ADB6-D9C93CAAB3DF}"/></extLst></worksheet>'
    data = edit_sheet(data, lambda xml: xml.replace("</worksheet>", extension))
    with caplog.at_level(logging.INFO, logger="mailer.audience.tables"):
        _, items = read(data)
    assert good(items) == [(2, ["a@example.pe"])]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "no default style" in logged and "extension is not supported" in logged


def test_xlsx_progress_counts_rows() -> None:
    data = workbook_bytes([["email"], *[[f"user{i}@example.pe"] for i in range(99)]])
    table = open_table(io.BytesIO(data))
    with table:
        next(table.rows)
        assert table.position() == 2
        assert 0 < table.progress_fraction() < 0.05
        for _ in table.rows:
            pass
        assert (table.position(), table.progress_fraction()) == (100, 1.0)


# --- writing ----------------------------------------------------------------------------------

ROWS: list[list[Any]] = [
    ["josé@example.pe", "Ñúñez, Peña", 'dice "hola"\nen dos líneas', 987654321],
    ['=HYPERLINK("http://x")', "#N/A", "con\x01control", None],
    ["zoe@example.pe", 2.5, dt.date(2024, 5, 31), True],
]
READ_BACK = [
    (2, ["josé@example.pe", "Ñúñez, Peña", 'dice "hola"\nen dos líneas', "987654321"]),
    (3, ['=HYPERLINK("http://x")', "#N/A", "concontrol", ""]),
    (4, ["zoe@example.pe", "2.5", "2024-05-31", "true"]),
]


def test_write_csv_round_trips_with_a_bom_for_excel(tmp_path: Path) -> None:
    path = tmp_path / "limpio.csv"
    write_table(path, ["correo", "nombre", "nota", "teléfono"], iter(ROWS))
    assert path.read_bytes().startswith(b"\xef\xbb\xbfcorreo,nombre,nota,tel\xc3\xa9fono\r\n")
    table = open_table(path)
    with table:
        assert (table.encoding, table.delimiter) == ("utf-8-sig", ",")
        assert table.headers == ["correo", "nombre", "nota", "teléfono"]
        read_back = good(list(table.rows))
    # Lines are physical lines (the first value takes two); a CSV holds any text, so the
    # control character stays (only XLSX cannot hold it).
    assert read_back == [
        READ_BACK[0],
        (4, [*READ_BACK[1][1][:2], "con\x01control", ""]),
        (5, READ_BACK[2][1]),
    ]


def test_write_xlsx_round_trips_keeping_text_as_text(tmp_path: Path) -> None:
    path = tmp_path / "limpio.xlsx"
    write_table(path, ["correo", "nombre", "nota", "teléfono"], iter(ROWS))
    table = open_table(path)
    with table:
        assert table.headers == ["correo", "nombre", "nota", "teléfono"]
        assert good(list(table.rows)) == READ_BACK
    workbook = load_workbook(path)  # not read-only: see the cell types
    sheet = workbook.active
    assert (sheet["A3"].data_type, sheet["B3"].data_type, sheet["D2"].data_type) == ("s", "s", "n")
    workbook.close()


def test_write_table_refuses_other_suffixes_and_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match=r"name the output \.csv or \.xlsx"):
        write_table(tmp_path / "out.txt", ["a"], [])

    def failing() -> Iterator[list[Any]]:
        yield ["a"]
        raise RuntimeError("source went away")

    for name in ("out.csv", "out.xlsx"):
        with pytest.raises(RuntimeError):
            write_table(tmp_path / name, ["a"], failing())
    assert list(tmp_path.iterdir()) == []


# --- properties -------------------------------------------------------------------------------

WORDS = [
    "ana",
    "José",
    "Núñez",
    "Peña",
    "S.A.C.",
    "año",
    "ñandú",
    "Müller",
    "x",
    "",
    " ",
    "ok@example.pe",
]
SEPARATORS = [",", ";", "\t", "|", '"', "\n", "\r\n", " ", "'"]
cp1252_value = st.lists(st.sampled_from(WORDS + SEPARATORS), max_size=6).map("".join)
unicode_value = st.lists(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(SEPARATORS), max_size=12
).map("".join)
header_name = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


def breaks(text: str) -> int:
    """Line breaks in *text* as a text editor counts them: \\r\\n, \\n, \\r."""
    return len(re.findall(r"\r\n|\r|\n", text))


@st.composite
def well_formed_csv(draw: st.DrawFn) -> tuple[bytes, str, list[str], list[list[str]], str]:
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    delimiter = draw(st.sampled_from(list(tables.DELIMITERS)))
    value = cp1252_value if encoding == "cp1252" else unicode_value
    headers = draw(st.lists(header_name, min_size=2, max_size=5, unique=True))
    width = st.just(len(headers)) | st.integers(1, 7)
    rows = draw(
        st.lists(width.flatmap(lambda n: st.lists(value, min_size=n, max_size=n)), max_size=12)
    )
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=terminator).writerows([headers, *rows])
    return out.getvalue().encode(encoding), delimiter, headers, rows, terminator


@property_settings(150)
@given(well_formed_csv())
def test_every_row_of_a_well_formed_csv_is_read_exactly_once(
    case: tuple[bytes, str, list[str], list[list[str]], str],
) -> None:
    data, delimiter, headers, rows, terminator = case
    table, items = read(data)
    assert (table.delimiter, table.headers) == (delimiter, headers)
    expected: list[tuple[int, list[str] | int]] = []
    line = 2
    for row in rows:
        record = io.StringIO()
        csv.writer(record, delimiter=delimiter, lineterminator=terminator).writerow(row)
        values = [value.strip() for value in row]
        if any(values):
            expected.append((line, values if len(values) == len(headers) else len(values)))
        line += breaks(record.getvalue())
    # A row is its values; a problem, the column count it found.
    assert [
        (item.line, item.values if isinstance(item, Row) else item.params["found"])
        for item in items
    ] == expected


@st.composite
def dirty_csv(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, int]]]:
    """A file whose every row has a known fate: ok, ragged, nul, blank, or the one unclosed
    quote after which nothing can be read."""
    encoding = draw(st.sampled_from(["utf-8", "cp1252", "utf-16"]))
    delimiter = draw(st.sampled_from(list(tables.DELIMITERS)))
    word = st.sampled_from(["ana@example.pe", "José", "Núñez", "Servicios SAC", "987654321"])
    kinds = draw(st.lists(st.sampled_from(["ok", "ragged", "nul", "blank"]), max_size=15))
    if draw(st.booleans()):
        kinds.insert(draw(st.integers(0, len(kinds))), "unclosed")
    lines = [delimiter.join(["email", "nombre", "empresa"])]
    for kind in kinds:
        values = draw(st.lists(word, min_size=3, max_size=3))
        if kind == "ragged":
            values = draw(st.lists(word, min_size=1, max_size=6).filter(lambda v: len(v) != 3))
        elif kind == "nul":
            values[draw(st.integers(0, 2))] += "\x00"
        elif kind == "blank":
            values = draw(st.sampled_from([[], ["", " ", ""], [" "]]))
        elif kind == "unclosed":
            values[draw(st.integers(0, 2))] = '"' + values[0]
        lines.append(delimiter.join(values))
    text = "\r\n".join(lines) + draw(st.sampled_from(["", "\r\n"]))
    fates = [(kind, number) for number, kind in enumerate(kinds, start=2) if kind != "blank"]
    return text.encode(encoding), fates


@property_settings(150)
@given(dirty_csv())
def test_every_row_of_a_dirty_csv_is_accounted_for(
    case: tuple[bytes, list[tuple[str, int]]],
) -> None:
    data, fates = case
    _, items = read(data)
    outcome = []
    for item in items:
        if isinstance(item, Row):
            outcome.append(("ok", item.line))
        elif item.fatal:
            outcome.append(("unclosed", item.line))
        elif item.reason == NUL_IN_VALUE:
            outcome.append(("nul", item.line))
        else:
            assert item.reason == WRONG_COLUMN_COUNT
            outcome.append(("ragged", item.line))
    unclosed = next((i for i, (kind, _) in enumerate(fates) if kind == "unclosed"), None)
    assert outcome == (fates if unclosed is None else fates[: unclosed + 1])


def check_stream(table: Table, items: list[TableItem]) -> None:
    """What holds for any table, whatever its file."""
    assert table.headers and all(table.headers) and len(set(table.headers)) == len(table.headers)
    lines = [item.line for item in items]
    assert lines == sorted(set(lines)) and all(line >= 2 for line in lines)
    for position, item in enumerate(items):
        if isinstance(item, Row):
            assert len(item.values) == len(table.headers)
            assert all(isinstance(v, str) and v == v.strip() for v in item.values)
            assert any(item.values)
        else:
            assert len(item.value) <= tables.EXCERPT_CHARS
            assert item.message()
            assert not item.fatal or position == len(items) - 1
    assert table.progress_fraction() == 1.0


def reference_records(data: bytes, table: Table) -> list[tuple[int, list[str]]]:
    """Every record after the header, with its start line, read all at once by the csv
    module: what the streaming reader must account for."""
    errors = "mailer-tables-cp1252-fallback" if table.encoding.startswith("utf-8") else "replace"
    lines = io.StringIO(data.decode(table.encoding, errors=errors), newline="")
    reader = csv.reader(lines, delimiter=table.delimiter)
    records = []
    start = 1
    header_seen = False
    for record in reader:
        values = [value.strip() for value in record]
        if header_seen:
            records.append((start, values))
        header_seen = header_seen or any(value.replace("\x00", "") for value in values)
        start = reader.line_num + 1
    return records


@property_settings(200)
@given(
    st.binary(max_size=3000)
    | st.binary(max_size=600).map(lambda tail: b"email;nombre\r\n" + tail)
    | st.lists(st.sampled_from(list(b'ab,;|\t"\n\r \x00\xc3\xa9\xf1')), max_size=300).map(bytes)
)
def test_arbitrary_bytes_are_refused_or_read_without_losing_a_row(data: bytes) -> None:
    try:
        table, items = read(data)
    except ValidationFailed:
        return
    check_stream(table, items)
    records = reference_records(data, table)
    if items and isinstance(items[-1], RowProblem) and items[-1].fatal:
        # The unclosed quote starts the last record; nothing after it is lost silently.
        assert records[-1][0] == items[-1].line
        records, items = records[:-1], items[:-1]
    records = [(line, values) for line, values in records if any(values)]
    assert [line for line, _ in records] == [item.line for item in items]
    for (_, values), item in zip(records, items, strict=True):
        if isinstance(item, Row):
            assert item.values == values


# XLSX: values written through openpyxl, and the text a list manager must get back.
safe_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    max_size=10,
).filter(lambda text: not text.startswith("=") and "_x" not in text)
cell = st.one_of(
    st.none(),
    safe_text.map(lambda text: (text, text.strip())),
    st.integers(-(10**15), 10**15).map(lambda n: (n, str(n))),
    st.integers(-(10**12), 10**12).map(lambda n: (float(n), str(n))),
    st.decimals(-10_000, 10_000, places=2).map(
        lambda d: (float(d), "0" if d == 0 else format(d.normalize(), "f"))
    ),
    st.booleans().map(lambda b: (b, "true" if b else "false")),
    st.dates(dt.date(1901, 1, 1), dt.date(2099, 12, 31)).map(lambda d: (d, d.isoformat())),
    st.datetimes(dt.datetime(1901, 1, 1), dt.datetime(2099, 12, 31))
    .map(lambda moment: moment.replace(microsecond=0))
    .map(
        lambda moment: (
            moment,
            moment.date().isoformat() if moment.time() == dt.time() else moment.isoformat(),
        )
    ),
)


@property_settings(60)
@given(
    st.integers(0, 3),
    st.lists(st.lists(cell, max_size=6), min_size=1, max_size=10),
    st.booleans(),
)
def test_every_row_of_a_generated_workbook_is_read_exactly_once(
    blank_rows_first: int, grid: list[list[Any]], second_sheet: bool
) -> None:
    workbook = Workbook()
    sheet = workbook.active
    for _ in range(blank_rows_first):
        sheet.append([])
    for row in grid:
        sheet.append([None if value is None else value[0] for value in row])
    if second_sheet:
        workbook.create_sheet("dos").append(["other"])
    texts = [[("" if value is None else value[1]) for value in row] for row in grid]
    if second_sheet and not any(any(row) for row in texts):
        texts, blank_rows_first = [["other"]], 0  # the first sheet with data is read
    non_empty = [
        (number, row) for number, row in enumerate(texts, blank_rows_first + 1) if any(row)
    ]
    if not non_empty:
        assert "no data" in refused(save(workbook))
        return
    (_, header), *data_rows = non_empty
    width = max(i + 1 for i, value in enumerate(header) if value)
    table, items = read(save(workbook))
    check_stream(table, items)
    assert table.headers == name_headers(header[:width])
    expected: list[tuple[str, int, list[str]]] = []
    for number, row in data_rows:
        if any(row[width:]):
            expected.append(("problem", number, []))
        else:
            expected.append(("row", number, (row + [""] * width)[:width]))
    assert [
        ("row", item.line, item.values) if isinstance(item, Row) else ("problem", item.line, [])
        for item in items
    ] == expected


@lru_cache(maxsize=1)
def sample_workbook() -> bytes:
    return workbook_bytes([["email", "n"], *[[f"user{i}@example.pe", i] for i in range(30)]])


@property_settings(100)
@given(
    st.integers(0, 10**6),
    # Anywhere, or in the last bytes: the zip's central directory.
    st.lists(
        st.tuples(st.integers(-(10**6), -1) | st.integers(-800, -1), st.integers(0, 255)),
        max_size=4,
    ),
)
def test_a_damaged_workbook_is_refused_or_read_without_an_unexpected_error(
    cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(sample_workbook())
    for position, byte in flips:
        data[position % len(data)] = byte
    data = data[: max(4, cut % (len(data) + 1))]
    try:
        table, items = read(bytes(data))
    except ValidationFailed:
        return
    check_stream(table, items)
