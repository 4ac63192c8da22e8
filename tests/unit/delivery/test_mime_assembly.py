"""mime.assemble: the bytes parse back (stdlib parser) to exactly what went in, and obey
the line rules of RFC 5322 / 2045 / 2047."""

from __future__ import annotations

import email
import email.policy
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest

from mailer.core.errors import ValidationFailed
from mailer.delivery.mime import MessageHeaders, assemble, new_message_id

SPANISH_SUBJECT = "Comunicado: ¿Qué tal, señor Núñez? Plazo ñandú €"
DATE = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)

TRICKY_TEXT = "\n".join(
    [
        "Estimado señor Núñez:",
        "",
        ".",
        ".una línea que empieza con punto",
        "..dos puntos",
        "From the desk of the mayor",
        "From " + "x" * 120,
        "trailing spaces   ",
        "trailing tab\t",
        "a = b, c =3D d, e=",
        "=",
        "emoji 😀 🇵🇪 𝄞 outside the BMP",
        "a long line " + "palabra " * 60,
        "ñ" * 200,
        "x" * 75 + "=",
        "",
        "",
    ]
)
TRICKY_HTML = (
    '<html><body><p style="color:#333">Hola señor Núñez</p>\n'
    + '<a href="https://example.pe/c?a=1&b=2&token='
    + "A" * 300
    + '">clic aquí</a>\n'
    + ".\nFrom me\n"
    + "<p>"
    + "€ " * 400
    + "</p>  \n"
    + "<p>😀</p></body></html>"
)


def _headers(**overrides: object) -> MessageHeaders:
    values: dict[str, object] = {
        "from_name": "Municipalidad de Lima — Área de Logística",
        "from_email": "avisos@munilima.gob.pe",
        "reply_to": "mesa.partes@munilima.gob.pe",
        "extra": (
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("X-Campaign", "2025-03-licitaciones"),
        ),
    }
    values.update(overrides)
    return MessageHeaders(**values)  # type: ignore[arg-type]


def _assemble(**overrides: object) -> bytes:
    values: dict[str, object] = {
        "to_email": "juan.nunez@example.pe",
        "to_name": "Juan Núñez Ñandú",
        "subject": SPANISH_SUBJECT,
        "html": TRICKY_HTML,
        "text": TRICKY_TEXT,
        "message_id": "abc123@munilima.gob.pe",
        "date": DATE,
        "list_unsubscribe": "<https://t.munilima.gob.pe/u/abc>, <mailto:baja@munilima.gob.pe>",
    }
    headers = overrides.pop("headers", None) or _headers()
    values.update(overrides)
    return assemble(headers, **values)  # type: ignore[arg-type]


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _assert_wire_rules(raw: bytes) -> None:
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    lines = raw.split(b"\r\n")[:-1]
    assert all(len(line) <= 998 for line in lines)
    header_block, _, body = raw.partition(b"\r\n\r\n")
    for line in header_block.split(b"\r\n"):
        assert len(line) <= 78, line
    for line in body.split(b"\r\n"):
        assert len(line) <= 76, line
    assert raw.isascii()


def _parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    for part in (plain, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    # The canonical form of text in MIME has CRLF line breaks; the input used LF.
    return plain.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


def test_parts_decode_exactly_to_the_input() -> None:
    raw = _assemble()
    _assert_wire_rules(raw)
    message = _parse(raw)
    assert not message.defects
    text, html = _parts(message)
    assert text == TRICKY_TEXT
    assert html == TRICKY_HTML


def test_headers_decode() -> None:
    message = _parse(_assemble())
    assert message["Subject"] == SPANISH_SUBJECT
    sender = message["From"].addresses[0]
    assert sender.display_name == "Municipalidad de Lima — Área de Logística"
    assert sender.addr_spec == "avisos@munilima.gob.pe"
    recipient = message["To"].addresses[0]
    assert recipient.display_name == "Juan Núñez Ñandú"
    assert recipient.addr_spec == "juan.nunez@example.pe"
    assert message["Reply-To"].addresses[0].addr_spec == "mesa.partes@munilima.gob.pe"
    assert message["Message-ID"] == "<abc123@munilima.gob.pe>"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == DATE
    assert message["List-Unsubscribe"] == (
        "<https://t.munilima.gob.pe/u/abc>, <mailto:baja@munilima.gob.pe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Campaign"] == "2025-03-licitaciones"


def test_date_is_rfc5322_and_keeps_the_offset() -> None:
    lima = timezone(timedelta(hours=-5))
    raw = _assemble(date=datetime(2025, 1, 2, 8, 5, 0, tzinfo=lima))
    assert b"\r\nDate: Thu, 02 Jan 2025 08:05:00 -0500\r\n" in b"\r\n" + raw
    naive = _assemble(date=datetime(2025, 1, 2, 8, 5, 0))
    assert b"Date: Thu, 02 Jan 2025 08:05:00 +0000\r\n" in naive


@pytest.mark.parametrize(
    "subject",
    [
        SPANISH_SUBJECT,
        "Plain ASCII subject",
        "Un asunto muy largo " * 12,
        "Ñ" * 150,
        "😀🎉 " * 40,
        "=?utf-8?q?looks_encoded?= but is not",
        "tabs\tand  double  spaces",
        "a" * 300,  # one ASCII word longer than a line
        "mixed ascii then ñandú " + "word " * 30,
    ],
)
def test_subjects_round_trip_and_fold(subject: str) -> None:
    raw = _assemble(subject=subject)
    _assert_wire_rules(raw)
    assert _parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "display_name",
    [
        "José Núñez",
        "Municipalidad Distrital de San Juan de Lurigancho — Gerencia de Logística y Compras",
        "Lima S.A.",
        'Dice "hola" \\ adiós',
        "Ñandú",
        "Plain Name",
        "O'Brien, Ana",
        "😀 Emoji First",
    ],
)
def test_display_names_round_trip(display_name: str) -> None:
    raw = _assemble(headers=_headers(from_name=display_name), to_name=display_name)
    _assert_wire_rules(raw)
    message = _parse(raw)
    assert message["From"].addresses[0].display_name == display_name
    assert message["To"].addresses[0].display_name == display_name
    assert message["From"].addresses[0].addr_spec == "avisos@munilima.gob.pe"


def test_encoded_words_are_at_most_75_characters() -> None:
    raw = _assemble(subject="Ñ" * 300, to_name="ñ" * 100)
    words = re.findall(rb"=\?utf-8\?[bq]\?[^?]*\?=", raw)
    assert words
    assert all(len(word) <= 75 for word in words)


def test_no_name_and_bare_list_unsubscribe() -> None:
    raw = _assemble(to_name=None, list_unsubscribe="https://t.example.pe/u/x")
    message = _parse(raw)
    assert message["To"] == "juan.nunez@example.pe"
    assert message["List-Unsubscribe"] == "<https://t.example.pe/u/x>"
    assert "List-Unsubscribe" not in _parse(_assemble(list_unsubscribe=None))


def test_per_message_headers_and_brackets_on_message_id() -> None:
    raw = _assemble(
        message_id="<xyz@munilima.gob.pe>",
        per_message_headers=[("X-Mailer-Ledger", "12345"), ("X-Nota", "señal ñ")],
    )
    message = _parse(raw)
    assert message["Message-ID"] == "<xyz@munilima.gob.pe>"
    assert message["X-Mailer-Ledger"] == "12345"
    assert message["X-Nota"] == "señal ñ"


def test_boundary_is_not_in_the_body_and_is_stable() -> None:
    first = _assemble()
    boundary = _parse(first).get_boundary()
    assert boundary is not None and boundary.startswith("=_")
    body = first.partition(b"\r\n\r\n")[2]
    assert body.count(boundary.encode()) == 3  # two delimiters and the close
    assert _assemble() == first  # assembly is a pure function of its inputs


def test_empty_bodies() -> None:
    text, html = _parts(_parse(_assemble(text="", html="")))
    assert (text, html) == ("", "")


def test_line_endings_in_the_input_are_normalised() -> None:
    text, html = _parts(_parse(_assemble(text="a\r\nb\rc\n", html="<p>\r\n</p>")))
    assert text == "a\nb\nc\n"
    assert html == "<p>\n</p>"


def test_from_lines_never_start_a_body_line() -> None:
    raw = _assemble(text="From here\n" + "From " + "y" * 71 + "\n" + ("From " + "z" * 300))
    body = raw.partition(b"\r\n\r\n")[2]
    assert not any(line.startswith(b"From ") for line in body.split(b"\r\n"))
    _assert_wire_rules(raw)
    text, _ = _parts(_parse(raw))
    assert text == "From here\n" + "From " + "y" * 71 + "\n" + ("From " + "z" * 300)


@pytest.mark.parametrize("seed", range(40))
def test_random_bodies_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", "  ", "\t", "=", ".", "From ", "\n", "ñ", "€", "😀", "x" * 70]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 600)))
    raw = _assemble(text=text, html=text[::-1])
    _assert_wire_rules(raw)
    body = raw.partition(b"\r\n\r\n")[2]
    assert not any(line.startswith(b"From ") for line in body.split(b"\r\n"))
    assert _parts(_parse(raw)) == (text, text[::-1])


def test_non_ascii_address_domain_goes_out_as_idna() -> None:
    raw = _assemble(to_email="ana@correo.ñandú.pe")
    assert b"ana@correo.xn--and-6ma2c.pe" in raw


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"subject": "Hola\r\nBcc: victim@example.com"}, "subject"),
        ({"to_email": "not an address"}, "to"),
        ({"to_email": "a@b.pe>, evil@example.com"}, "to"),
        ({"to_name": "Juan\nBcc: x@example.com"}, "to"),
        ({"message_id": "no-at-sign"}, "message_id"),
        ({"to_email": "a" * 400 + "@example.pe"}, "to"),
        ({"per_message_headers": [("Subject", "second subject")]}, "headers"),
        ({"per_message_headers": [("Bad Name", "x")]}, "headers"),
        ({"list_unsubscribe": "<https://x.pe/" + "a" * 1000 + ">"}, "list-unsubscribe"),
        ({"text": "lone surrogate \ud800"}, "text"),
    ],
)
def test_invalid_input_is_refused(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _assemble(**overrides)
    assert caught.value.field == field


def test_invalid_campaign_headers_are_refused_at_construction() -> None:
    with pytest.raises(ValidationFailed):
        _headers(from_email="nope")
    with pytest.raises(ValidationFailed):
        _headers(extra=(("From", "second@example.com"),))
    with pytest.raises(ValidationFailed):
        _headers(extra=(("X-Ok", "line\r\nbreak"),))


def test_new_message_id() -> None:
    first, second = new_message_id("munilima.gob.pe"), new_message_id("munilima.gob.pe")
    assert first != second
    assert first.endswith("@munilima.gob.pe")
    assert re.fullmatch(r"[0-9a-f]{32}@munilima\.gob\.pe", first)
    assert new_message_id("ñandú.pe").endswith("@xn--and-6ma2c.pe")
    with pytest.raises(ValidationFailed):
        new_message_id("bad domain")
