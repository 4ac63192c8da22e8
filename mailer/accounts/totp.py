"""Two-factor login of portal users with time-based one-time codes (TOTP, RFC 6238).

A user enrols from the portal: a new secret is stored (encrypted, see below) but is not in
force until a first code made from it is verified, which also hands out the recovery codes
(one-time codes for a lost phone, stored as SHA-256 hashes only).  Once enabled, login asks
for a code after the password; a code is good once (the time step of the last accepted
code is kept) and within one step either side (clock drift).  Disabling asks for the
password and a code.

The secret must be read back to check codes, so it cannot be hashed: it is sealed
(``mailer.core.sealing``: Fernet under a key derived from the install's ``secret_key``).
A database dump alone does not give the codes away.  Changing ``secret_key`` (which already
ends every session) keeps enrolments readable while the old key is listed in
``previous_secret_keys``; without it those users must enrol again (an administrator resets
it on the users page).

Failed codes are counted from the audit log (``login.totp_failed``): after
:data:`MAX_FAILURES` within :data:`LOCK_MINUTES`, codes are refused until the window passes.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlmodel import Session, col

from mailer.accounts.models import AuditEntry, User
from mailer.core.clock import utcnow
from mailer.core.config import Settings, get_settings
from mailer.core.errors import AuthenticationFailed, Conflict
from mailer.core.sealing import Resealed, Sealer, Unsealable
from mailer.core.tokens import hash_secret

ISSUER = "mailer"
STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1  # a code of the previous or the next 30 s is accepted too
RECOVERY_CODES = 8
MAX_FAILURES = 5
LOCK_MINUTES = 15
FAILED_ACTION = "login.totp_failed"
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
SEALING_PURPOSE = "totp secret"

_hasher = PasswordHasher()


class TotpLocked(AuthenticationFailed):
    code = "totp_locked"


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A secret waiting for its first code: shown to the user once, as text and QR."""

    secret: str
    uri: str


def _sealer(secret_key: str) -> Sealer:
    # The callers pass the current key; the earlier ones are the install's.
    return Sealer.with_keys(SEALING_PURPOSE, secret_key, get_settings().previous_secret_keys)


def _secret_of(user: User, secret_key: str) -> str:
    try:
        return _sealer(secret_key).unseal(user.totp_secret)
    except Unsealable:
        raise AuthenticationFailed(
            "the two-factor secret of this user cannot be read (the install's secret key "
            "changed): an administrator must reset it"
        ) from None


def reseal_secrets(session: Session, settings: Settings) -> Resealed:
    """Every stored two-factor secret sealed again under the current ``secret_key`` (after
    a change of key, before the old one leaves ``previous_secret_keys``)."""
    sealer = Sealer.from_settings(SEALING_PURPOSE, settings)
    done = Resealed()
    for user in session.execute(select(User).where(col(User.totp_secret) != "")).scalars():
        user.totp_secret = done.add(sealer, user.totp_secret)
        session.add(user)
    return done


def is_enabled(user: User) -> bool:
    return user.totp_enabled_at is not None and bool(user.totp_secret)


def provisioning_uri(secret: str, email: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI authenticator apps read from the QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=email, issuer_name=issuer
    )


def begin_enrolment(session: Session, user: User, secret_key: str) -> Enrolment:
    """A new secret for *user*, stored but not in force until :func:`confirm_enrolment`."""
    if is_enabled(user):
        raise Conflict("two-factor login is already enabled: disable it first")
    secret = pyotp.random_base32()
    user.totp_secret = _sealer(secret_key).seal(secret)
    user.totp_enabled_at = None
    session.add(user)
    return Enrolment(secret, provisioning_uri(secret, user.email))


def pending_enrolment(user: User, secret_key: str) -> Enrolment | None:
    """The enrolment begun and not confirmed yet (to show its QR code again)."""
    if is_enabled(user) or not user.totp_secret:
        return None
    secret = _secret_of(user, secret_key)
    return Enrolment(secret, provisioning_uri(secret, user.email))


def _matching_step(secret: str, code: str, last_step: int, now: float | None = None) -> int | None:
    """The time step whose code is *code*, newer than *last_step*; None if there is none."""
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if step > last_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes(user: User) -> list[str]:
    """Fresh recovery codes for *user* (the old ones stop working); shown once."""
    codes = [
        "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(4)) for _ in range(3))
        for _ in range(RECOVERY_CODES)
    ]
    user.totp_recovery = " ".join(hash_secret(_normalise_recovery(c)) for c in codes)
    return codes


def _normalise_recovery(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def confirm_enrolment(session: Session, user: User, code: str, secret_key: str) -> list[str]:
    """Enable two-factor login once *code* matches the pending secret; returns the
    recovery codes (shown once)."""
    if is_enabled(user):
        raise Conflict("two-factor login is already enabled")
    if not user.totp_secret:
        raise Conflict("start the two-factor enrolment first")
    step = _matching_step(_secret_of(user, secret_key), code, 0)
    if step is None:
        raise AuthenticationFailed(
            "the code does not match: check the phone's clock and type the current code"
        )
    user.totp_enabled_at = utcnow()
    user.totp_last_step = step
    codes = new_recovery_codes(user)
    session.add(user)
    return codes


def recent_failures(session: Session, user_id: int, *, minutes: int = LOCK_MINUTES) -> int:
    since = utcnow() - timedelta(minutes=minutes)
    return int(
        session.execute(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                col(AuditEntry.action) == FAILED_ACTION,
                col(AuditEntry.target) == f"user:{user_id}",
                col(AuditEntry.created_at) >= since,
            )
        ).scalar_one()
    )


def check_code(session: Session, user: User, code: str, secret_key: str) -> str:
    """Accept *code* (a current TOTP code or an unused recovery code) as *user*'s second
    factor; returns ``"totp"`` or ``"recovery"``.  Raises :class:`TotpLocked` after too many
    failures, AuthenticationFailed for a wrong code (the caller audits it)."""
    if not is_enabled(user):
        raise AuthenticationFailed("two-factor login is not enabled for this user")
    assert user.id is not None
    if recent_failures(session, user.id) >= MAX_FAILURES:
        raise TotpLocked(
            "too many wrong codes: wait {minutes} minutes and try again", minutes=LOCK_MINUTES
        )
    step = _matching_step(_secret_of(user, secret_key), code, user.totp_last_step)
    if step is not None:
        user.totp_last_step = step
        session.add(user)
        return "totp"
    digest = hash_secret(_normalise_recovery(code))
    left = user.totp_recovery.split()
    if any(hmac.compare_digest(digest, kept) for kept in left):
        user.totp_recovery = " ".join(kept for kept in left if kept != digest)
        session.add(user)
        return "recovery"
    raise AuthenticationFailed("wrong code")


def recovery_codes_left(user: User) -> int:
    return len(user.totp_recovery.split())


def _check_password(user: User, password: str) -> None:
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise AuthenticationFailed("wrong password") from None


def disable(session: Session, user: User, password: str, code: str, secret_key: str) -> None:
    """Turn two-factor login off: the user proves both factors once more."""
    _check_password(user, password)
    check_code(session, user, code, secret_key)
    reset(session, user)


def regenerate_recovery_codes(
    session: Session, user: User, code: str, secret_key: str
) -> list[str]:
    """New recovery codes (the old ones stop working), against a current code."""
    check_code(session, user, code, secret_key)
    codes = new_recovery_codes(user)
    session.add(user)
    return codes


def reset(session: Session, user: User) -> None:
    """Forget the user's enrolment (disable, or an administrator's reset for a lost phone)."""
    user.totp_secret = ""
    user.totp_enabled_at = None
    user.totp_last_step = 0
    user.totp_recovery = ""
    session.add(user)


__all__ = [
    "Enrolment",
    "TotpLocked",
    "begin_enrolment",
    "check_code",
    "confirm_enrolment",
    "disable",
    "is_enabled",
    "pending_enrolment",
    "provisioning_uri",
    "recent_failures",
    "regenerate_recovery_codes",
    "reset",
]
