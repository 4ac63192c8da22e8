"""Ids and signed tokens.

Tokens are short, URL-safe and HMAC-signed with the install's secret key; a tampered token
fails :func:`unsign` with :class:`BadToken`.  The ``purpose`` is part of the MAC so a token
minted for one use (a click) is not accepted for another (an unsubscribe).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mailer.core.errors import MailerError


class BadToken(MailerError):
    code = "bad_token"


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode, without its Python-level wrappers (tokens are minted for
    # every link of every message sent).
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, purpose: str, payload: str, *, mac_bytes: int = 12) -> str:
    mac = hmac.digest(secret.encode(), f"{purpose}\x00{payload}".encode(), "sha256")
    return f"{_b64(payload.encode())}.{_b64(mac[:mac_bytes])}"


def unsign(secret: str, purpose: str, token: str, *, mac_bytes: int = 12) -> str:
    try:
        encoded, mac_text = token.split(".", 1)
        payload = _unb64(encoded).decode()
        given = _unb64(mac_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadToken("malformed token") from exc
    expected = hmac.new(
        secret.encode(), f"{purpose}\x00{payload}".encode(), hashlib.sha256
    ).digest()[:mac_bytes]
    if not hmac.compare_digest(given, expected):
        raise BadToken("token signature does not match")
    return payload


def hash_secret(value: str) -> str:
    """Fast keyed-less hash for high-entropy secrets (API keys): SHA-256 hex."""
    return hashlib.sha256(value.encode()).hexdigest()
