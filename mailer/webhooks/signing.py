"""Standard Webhooks signatures (https://www.standardwebhooks.com).

A secret is ``whsec_`` followed by the base64 of random bytes.  Each request carries
``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``:
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the decoded secret,
several signatures separated by spaces while a rotated secret is still honoured.

The secret signs, so it must be read back: it is kept sealed in the database
(``seal_secret``, ``unseal_secret``; see ``mailer.core.sealing``), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from mailer.core.config import Settings
from mailer.core.sealing import Sealer

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
SECRET_BYTES = 32
SEALING_PURPOSE = "webhook secret"
SEALED_LENGTH = 300  # column width; a sealed secret takes 164 characters


def seal_secret(secret: str, settings: Settings) -> str:
    """*secret* as it is stored."""
    return Sealer.from_settings(SEALING_PURPOSE, settings).seal(secret)


def unseal_secret(sealed: str, settings: Settings) -> str:
    """The secret stored as *sealed*; ``Unsealable`` if the install's keys do not open it."""
    return Sealer.from_settings(SEALING_PURPOSE, settings).unseal(sealed)


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of *body* sent as *webhook_id* at *timestamp*."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets_: Iterable[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets_)


def headers(
    secrets_: Iterable[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, webhook_id, timestamp, body),
    }
