"""Quoted-printable encoded line by line (with a cache, and a fast path for printable
ASCII) is correct: it decodes back, keeps lines within 76 characters, never ends a line in
white space nor starts one with "From ", and is plain 7-bit."""

from __future__ import annotations

import binascii
import quopri

from hypothesis import given
from hypothesis import strategies as st

from mailer.delivery import mime

TEXT = st.lists(
    st.sampled_from([*"ab =.\tñé€\r\n-Frmo<>\"'", "From ", "  \n", "=20", "x" * 90]),
    max_size=120,
).map("".join)


def whole(content: str) -> bytes:
    data = content.encode().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    encoded = binascii.b2a_qp(data, istext=True)
    return mime._repair_lines(encoded).replace(b"\n", b"\r\n")


@given(TEXT)
def test_line_by_line_equals_whole_and_decodes_back(content: str) -> None:
    encoded = mime._quoted_printable(content, "html")
    again = mime._quoted_printable(content, "html")  # from the cache this time
    assert encoded == again
    assert quopri.decodestring(whole(content).replace(b"\r\n", b"\n")) == quopri.decodestring(
        encoded.replace(b"\r\n", b"\n")
    )
    normalised = content.replace("\r\n", "\n").replace("\r", "\n").encode()
    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")) == normalised
    lines = encoded.split(b"\r\n")
    assert all(len(line) <= 76 for line in lines)
    assert not any(line.startswith(b"From ") for line in lines)
    assert not any(line.endswith((b" ", b"\t")) for line in lines)
    assert all(32 <= byte < 127 or byte in b"\t\r\n" for byte in encoded)
