"""Secrets the code must read back, encrypted at rest ("sealed").

Some secrets cannot be hashed because the code uses them in clear: the seed of a user's
two-factor codes, the key that signs an endpoint's webhooks.  They are kept sealed with
Fernet (AES-128-CBC and HMAC-SHA256, with a timestamp) so a database dump alone does not
give them away.

The key derives from the install's ``secret_key`` and a *purpose* (``"totp secret"``,
``"webhook secret"``): a value sealed for one purpose does not unseal for another.  After
``secret_key`` is changed, the old values listed in ``previous_secret_keys`` still unseal
(``reseal`` moves a value to the current key); new values are sealed with the current key.
What is not here: hashes of secrets that are only compared (passwords, API keys), which
belong to ``mailer.core.tokens`` and argon2.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from mailer.core.config import Settings
from mailer.core.errors import MailerError

__all__ = ["Sealer", "Unsealable", "derive_key"]


class Unsealable(MailerError):
    """A sealed value that none of the configured keys opens (the key changed, or the value
    was sealed for another purpose or damaged)."""

    code = "unsealable"


def derive_key(secret_key: str, purpose: str) -> bytes:
    """The Fernet key of *purpose* under *secret_key* (SHA-256 of both, domain-separated).

    ``secret_key`` is a long random value, so one hash is an adequate key derivation; the
    form is the one two-factor secrets have been sealed with from the start.
    """
    if "\x00" in purpose:
        raise ValueError("a sealing purpose cannot contain NUL")
    digest = hashlib.sha256(f"mailer {purpose}\x00".encode() + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest)


@lru_cache(maxsize=64)
def _multi_fernet(purpose: str, keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(derive_key(key, purpose)) for key in keys])


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals and unseals the values of one *purpose*; ``secret_key`` seals, it and the
    ``previous_secret_keys`` unseal."""

    purpose: str
    secret_key: str = field(repr=False)
    previous_secret_keys: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, purpose: str, settings: Settings) -> Sealer:
        return cls(purpose, settings.secret_key, tuple(settings.previous_secret_keys))

    @classmethod
    def with_keys(
        cls, purpose: str, secret_key: str, previous_secret_keys: Sequence[str] = ()
    ) -> Sealer:
        return cls(purpose, secret_key, tuple(previous_secret_keys))

    @property
    def _fernet(self) -> MultiFernet:
        keys = (self.secret_key, *(k for k in self.previous_secret_keys if k != self.secret_key))
        return _multi_fernet(self.purpose, keys)

    def seal(self, plaintext: str) -> str:
        """*plaintext* encrypted with the current key (a URL-safe ASCII token)."""
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def seal_bytes(self, plaintext: bytes) -> bytes:
        """*plaintext* bytes encrypted with the current key."""
        return self._fernet.encrypt(plaintext)

    def unseal_bytes(self, sealed: bytes) -> bytes:
        """The plaintext of *sealed* bytes; :class:`Unsealable` if no key opens them."""
        try:
            return self._fernet.decrypt(sealed)
        except (InvalidToken, ValueError):
            raise self._unsealable() from None

    def unseal(self, sealed: str) -> str:
        """The plaintext of *sealed*; :class:`Unsealable` if no configured key opens it."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except (InvalidToken, ValueError):  # UnicodeError is a ValueError
            raise self._unsealable() from None

    def reseal(self, sealed: str) -> str:
        """*sealed* encrypted again with the current key (after ``secret_key`` changed)."""
        try:
            return self._fernet.rotate(sealed.encode()).decode("ascii")
        except (InvalidToken, ValueError):
            raise self._unsealable() from None

    def _unsealable(self) -> Unsealable:
        return Unsealable(
            "a {purpose} kept in the database cannot be decrypted: the install's secret key "
            "changed (list the old one in previous_secret_keys) or the value is damaged",
            purpose=self.purpose,
        )


@dataclass(slots=True)
class Resealed:
    """What :meth:`Sealer.reseal` did over a set of stored values."""

    resealed: int = 0
    unreadable: int = 0  # sealed with a key no longer configured: left as they were

    def add(self, sealer: Sealer, sealed: str) -> str:
        """*sealed* under the current key, counted; unchanged (and counted) if unreadable."""
        try:
            value = sealer.reseal(sealed)
        except Unsealable:
            self.unreadable += 1
            return sealed
        self.resealed += 1
        return value
