"""Idempotency keys: a POST retried with the same ``Idempotency-Key`` by the same
application gets the first outcome again instead of doing the work twice.

A key goes through three states:

- ``started``: claimed by a request, in a short transaction of its own, committed before
  the work begins, so a concurrent duplicate sees it at once (and waits, or gets 409);
- ``committed``: set by the request's own transaction (``bind_to_transaction``), so the
  work and this mark commit together or not at all;
- ``completed``: the response (status, headers, body) is stored, to be replayed.

What a crash can do: before the work commits, the key stays ``started``; after the lease a
retry takes it over and does the work (none was done).  Between the commit and the stored
response, the key stays ``committed``: the work is never done again, and retries are told
the response was lost (look the result up).  Only requests that committed keep their key:
one refused before (a validation error, a 404) frees it, so a corrected retry can run.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, delete, event, text, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailer.accounts.models import IdempotencyKey
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import Conflict, ValidationFailed
from mailer.core.sealing import Sealer, Unsealable
from mailer.storage.db import session_scope

MAX_KEY_LENGTH = 255
POLL_SECONDS = 0.05


class KeyState(StrEnum):
    STARTED = "started"
    COMMITTED = "committed"
    COMPLETED = "completed"


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"


class RequestInProgress(Conflict):
    code = "request_in_progress"


class ResponseLost(Conflict):
    code = "idempotency_response_lost"


@dataclass(frozen=True, slots=True)
class Claim:
    """This request holds the key (``token`` tells it from a later taker)."""

    id: int
    token: str


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ValidationFailed(
            "the Idempotency-Key header must be 1 to {maximum} printable ASCII characters",
            field="Idempotency-Key",
            maximum=MAX_KEY_LENGTH,
        )
    return key


def fingerprint(method: str, path: str, query: str, body_digest: str) -> str:
    """What makes two requests "the same": method, path, query string and body."""
    return hashlib.sha256(f"{method}\n{path}\n{query}\n{body_digest}".encode()).hexdigest()


def claim(
    settings: Settings,
    actor: str,
    key: str,
    request_hash: str,
    *,
    lease: timedelta,
    wait_seconds: float,
) -> Claim | StoredResponse:
    """Claim *key* for this request, or the stored response of the first one.  A duplicate
    of a request still running waits up to *wait_seconds* for its outcome, then
    RequestInProgress; a different request under the same key: IdempotencyKeyReused."""
    deadline = time.monotonic() + wait_seconds
    while True:
        outcome = _try_claim(settings, actor, key, request_hash, lease)
        if outcome is not None:
            return outcome
        if time.monotonic() >= deadline:
            raise RequestInProgress(
                "a request with this Idempotency-Key is still being processed; retry later",
                field="Idempotency-Key",
            )
        time.sleep(POLL_SECONDS)


def _try_claim(
    settings: Settings, actor: str, key: str, request_hash: str, lease: timedelta
) -> Claim | StoredResponse | None:
    token = secrets.token_hex(16)
    now = utcnow()
    try:
        with session_scope(settings) as session:
            _no_flush_wait(session)
            row = IdempotencyKey(
                actor=actor,
                key=key,
                request_hash=request_hash,
                state=KeyState.STARTED,
                claim_token=token,
                created_at=now,
                claimed_at=now,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            return Claim(row.id, token)
    except IntegrityError:
        pass  # the key exists: see what became of it
    with session_scope(settings) as session:
        found = session.exec(
            select(IdempotencyKey).where(IdempotencyKey.actor == actor, IdempotencyKey.key == key)
        ).first()
        if found is None or found.id is None:
            return None  # purged meanwhile: claim again
        if found.request_hash != request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used for a different request; use a new key",
                field="Idempotency-Key",
            )
        if found.state == KeyState.COMPLETED:
            return StoredResponse(
                status=found.response_status or 200,
                headers=dict(found.response_headers or {}),
                body=_unsealed(settings, found.response_body or b""),
            )
        if found.claimed_at > now - lease:
            return None  # still running
        if found.state == KeyState.COMMITTED:
            raise ResponseLost(
                "the request with this Idempotency-Key was done but its response was lost; "
                "look the result up instead of retrying",
                field="Idempotency-Key",
            )
        taken = _rowcount(
            session.execute(
                update(IdempotencyKey)
                .where(
                    col(IdempotencyKey.id) == found.id,
                    col(IdempotencyKey.state) == KeyState.STARTED,
                    col(IdempotencyKey.claim_token) == found.claim_token,
                )
                .values(claim_token=token, claimed_at=now)
            )
        )
        return Claim(found.id, token) if taken else None


def bind_to_transaction(session: Session, held: Claim) -> None:
    """Mark the key ``committed`` in the first commit of *session*, the request's own, so
    the mark and the work are one transaction.  If another request took the key over
    meanwhile (this one outlived its lease), that commit fails and the work is undone."""

    def mark(session_: Session) -> None:
        marked = _rowcount(
            session_.execute(
                update(IdempotencyKey)
                .where(
                    col(IdempotencyKey.id) == held.id,
                    col(IdempotencyKey.claim_token) == held.token,
                    col(IdempotencyKey.state) == KeyState.STARTED,
                )
                .values(state=KeyState.COMMITTED)
            )
        )
        if not marked:
            raise RequestInProgress(
                "a request with this Idempotency-Key is still being processed; retry later",
                field="Idempotency-Key",
            )

    event.listen(session, "before_commit", mark, once=True)


def finish(
    settings: Settings, held: Claim, status: int, headers: dict[str, str], body: bytes
) -> bool:
    """Store the response of a request that committed its work; free the key of one that
    did not (nothing was done: a retry may run).  True when stored."""
    with session_scope(settings) as session:
        _no_flush_wait(session)
        stored = _rowcount(
            session.execute(
                update(IdempotencyKey)
                .where(
                    col(IdempotencyKey.id) == held.id,
                    col(IdempotencyKey.claim_token) == held.token,
                    col(IdempotencyKey.state) == KeyState.COMMITTED,
                )
                .values(
                    state=KeyState.COMPLETED,
                    response_status=status,
                    response_headers=headers,
                    response_body=_sealed(settings, body),
                    completed_at=utcnow(),
                )
            )
        )
        if not stored:
            _release(session, held)
    return bool(stored)


# Stored answers are encrypted: some carry a secret shown once (a new OAuth client's, a
# webhook's) or personal data, and a database dump must not give them away.
_SEALED = b"sealed:"
_PURPOSE = "idempotent response"


def _sealed(settings: Settings, body: bytes) -> bytes:
    return _SEALED + Sealer.from_settings(_PURPOSE, settings).seal_bytes(body)


def _unsealed(settings: Settings, stored: bytes) -> bytes:
    if not stored.startswith(_SEALED):
        return stored  # stored in clear before answers were sealed
    try:
        return Sealer.from_settings(_PURPOSE, settings).unseal_bytes(stored[len(_SEALED) :])
    except Unsealable:  # sealed under a secret key no longer configured
        raise ResponseLost(
            "the request with this Idempotency-Key was done but its response can no longer "
            "be read; look the result up instead of retrying",
            field="Idempotency-Key",
        ) from None


def abandon(settings: Settings, held: Claim) -> None:
    """The request failed unexpectedly: free the key unless its work was committed."""
    with session_scope(settings) as session:
        _release(session, held)


def _release(session: Session, held: Claim) -> None:
    session.execute(
        delete(IdempotencyKey).where(
            col(IdempotencyKey.id) == held.id,
            col(IdempotencyKey.claim_token) == held.token,
            col(IdempotencyKey.state) == KeyState.STARTED,
        )
    )


def purge_expired(session: Session, older_than: timedelta, now: datetime | None = None) -> int:
    """Delete the keys created more than *older_than* ago; the number deleted."""
    cutoff = (now or utcnow()) - older_than
    return _rowcount(
        session.execute(delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < cutoff))
    )


def _no_flush_wait(session: Session) -> None:
    """On PostgreSQL, commit this transaction without waiting for the disk (a few ms each).
    Safe here: the work's own commit does wait, and it flushes the write-ahead log up to it,
    claim included; a stored response lost to a crash of the database server leaves its key
    ``committed`` (the work is not done again; retries are told the response was lost)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
