"""Per-message identities that come back to us: the VERP return path and the Message-ID.

- Return path ``bounces+<id>-<mac>@<bounce domain>``: a bounce is sent to it, so the
  address itself names the ledger row that bounced, whatever the bounce's format.  The
  token is lower case (some MTAs lower-case local parts) and signed, so a forged bounce
  cannot suppress someone else.
- Message-ID ``<m<id>.<mac>@<domain>>``: the same for every send of one ledger row, so a
  message sent twice after a crash carries the same Message-ID and can be recognised.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "header_message_id",
    "parse_return_path",
    "return_path",
    "verp_address",
    "verp_token",
]

_PREFIX = "bounces+"
_TOKEN = re.compile(r"([0-9]+)-([0-9a-f]{12})\Z")


def _mac(secret: str, purpose: str, message_id: int, size: int) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{message_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:size]


def verp_token(secret: str, message_id: int) -> str:
    return f"{message_id}-{_mac(secret, 'verp', message_id, 12)}"


def return_path(secret: str, message_id: int, bounce_domain: str) -> str:
    return verp_address(verp_token(secret, message_id), bounce_domain)


def verp_address(token: str, bounce_domain: str) -> str:
    """The return path of a :func:`verp_token` already computed."""
    return f"{_PREFIX}{token}@{bounce_domain}"


def parse_return_path(secret: str, address: str) -> int | None:
    """The ledger id a VERP address names, or None if it is not one of ours (or forged)."""
    local = address.strip().strip("<>").rpartition("@")[0].lower()
    if not local.startswith(_PREFIX):
        return None
    match = _TOKEN.match(local.removeprefix(_PREFIX))
    if match is None:
        return None
    message_id = int(match.group(1))
    expected = _mac(secret, "verp", message_id, 12)
    return message_id if hmac.compare_digest(expected, match.group(2)) else None


def header_message_id(secret: str, message_id: int, domain: str) -> str:
    """The Message-ID (without brackets) of ledger row *message_id*."""
    return f"m{message_id}.{_mac(secret, 'msgid', message_id, 10)}@{domain}"
