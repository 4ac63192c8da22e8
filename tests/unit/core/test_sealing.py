"""Sealed secrets: they open with the key and purpose they were sealed for, still open
after the key changed while the old one is listed, and keep the form two-factor secrets
have always been stored in."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet

from mailer.core.config import Settings
from mailer.core.sealing import Sealer, Unsealable

KEY = "first-secret-key-" + "k" * 32
NEW_KEY = "second-secret-key-" + "n" * 32


def test_seal_and_unseal_with_purpose_separation() -> None:
    sealer = Sealer.with_keys("webhook secret", KEY)
    sealed = sealer.seal("whsec_abc")
    assert "whsec_abc" not in sealed and sealed.startswith("gAAAA")
    assert sealed != sealer.seal("whsec_abc")  # a fresh IV every time
    assert sealer.unseal(sealed) == "whsec_abc"
    with pytest.raises(Unsealable, match="totp secret kept in the database cannot be decrypted"):
        Sealer.with_keys("totp secret", KEY).unseal(sealed)
    with pytest.raises(Unsealable):
        Sealer.with_keys("webhook secret", NEW_KEY).unseal(sealed)
    with pytest.raises(Unsealable):
        sealer.unseal("not a token")
    assert KEY not in repr(sealer)


def test_previous_keys_unseal_and_reseal_moves_to_the_current_key() -> None:
    old = Sealer.with_keys("webhook secret", KEY).seal("whsec_abc")
    rotated = Sealer.with_keys("webhook secret", NEW_KEY, [KEY])
    assert rotated.unseal(old) == "whsec_abc"
    moved = rotated.reseal(old)
    assert Sealer.with_keys("webhook secret", NEW_KEY).unseal(moved) == "whsec_abc"
    with pytest.raises(Unsealable):
        Sealer.with_keys("webhook secret", KEY).unseal(rotated.seal("whsec_new"))


def test_settings_give_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_CONFIG", "/nonexistent/mailer.toml")
    monkeypatch.setenv("MAILER_PREVIOUS_SECRET_KEYS", f'["{KEY}"]')
    settings = Settings(secret_key=NEW_KEY)  # type: ignore[call-arg]
    assert settings.previous_secret_keys == [KEY]
    sealer = Sealer.from_settings("totp secret", settings)
    assert sealer.unseal(Sealer.with_keys("totp secret", KEY).seal("JBSWY3DP")) == "JBSWY3DP"
    monkeypatch.setenv("MAILER_PREVIOUS_SECRET_KEYS", KEY)  # one key, as it is
    assert Settings().previous_secret_keys == [KEY]


def test_two_factor_secrets_sealed_before_keep_opening() -> None:
    """The key derivation totp.py used before the helper existed."""
    legacy_key = hashlib.sha256(b"mailer totp secret\x00" + KEY.encode()).digest()
    legacy = Fernet(base64.urlsafe_b64encode(legacy_key)).encrypt(b"JBSWY3DPEHPK3PXP").decode()
    assert Sealer.with_keys("totp secret", KEY).unseal(legacy) == "JBSWY3DPEHPK3PXP"
