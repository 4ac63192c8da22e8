"""Delivery services: the configured transport, and the capture relay's mailbox."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlmodel import Session, col

from mailer.core.config import Settings
from mailer.core.errors import NotFound
from mailer.core.ports import Transport
from mailer.delivery.capture import CaptureRelay
from mailer.delivery.domains import SendingDomain, list_domains
from mailer.delivery.models import CapturedMessage
from mailer.delivery.smtp import SmtpTransport
from mailer.storage.db import session_scope

log = logging.getLogger(__name__)


def transport_from_settings(settings: Settings) -> Transport:
    return SmtpTransport.for_relay(settings.relay)


ACCOUNT_HEADER = "X-Mailer-Account"
"""Every message mailer sends names its account, so captured mail is shown to that account."""


def _subject_and_account(data: bytes) -> tuple[str, int | None]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(data, headersonly=True)
    raw = headers.get("Subject", "")
    try:
        subject = str(make_header(decode_header(str(raw))))[:998]
    except (UnicodeError, LookupError, ValueError):
        subject = str(raw)[:998]
    account = str(headers.get(ACCOUNT_HEADER, "")).strip()
    return subject, int(account) if account.isdigit() else None


class CaptureStore:
    """Writes captured messages in batches (the SMTP handler only appends to a buffer)."""

    def __init__(self, settings: Settings, flush_seconds: float = 0.2) -> None:
        self.settings = settings
        self.flush_seconds = flush_seconds
        self._buffer: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-store", daemon=True)

    def __call__(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        subject, account_id = _subject_and_account(data)
        row: dict[str, object] = {
            "account_id": account_id,
            "mail_from": mail_from[:320],
            "rcpt_to": ", ".join(rcpt_tos)[:2000],
            "subject": subject,
            "size": len(data),
            "data": data,
        }
        with self._lock:
            self._buffer.append(row)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # keep capturing; the next flush retries the buffer
                log.exception("could not store captured messages")

    def flush(self) -> int:
        with self._lock:
            rows, self._buffer = self._buffer, []
        if not rows:
            return 0
        try:
            with session_scope(self.settings) as session:
                session.execute(insert(CapturedMessage), rows)
                _trim(session, self.settings.capture.keep)
        except Exception:
            with self._lock:
                self._buffer[:0] = rows
            raise
        return len(rows)


def _trim(session: Session, keep: int) -> None:
    newest = session.execute(
        select(col(CapturedMessage.id))
        .order_by(col(CapturedMessage.id).desc())
        .offset(keep)
        .limit(1)
    ).scalar()
    if newest is not None:
        session.execute(delete(CapturedMessage).where(col(CapturedMessage.id) <= newest))


def start_capture_relay(settings: Settings) -> tuple[CaptureRelay, CaptureStore]:
    store = CaptureStore(settings)
    store.start()
    relay = CaptureRelay(settings.capture.host, settings.capture.port, sink=store)
    relay.start()
    return relay, store


@dataclass(frozen=True, slots=True)
class CaptureScope:
    """Which captured mail a reader may see: what its account sent (mail that names no
    account did not come from mailer and is shown to nobody)."""

    account_id: int

    def condition(self) -> ColumnElement[bool]:
        return col(CapturedMessage.account_id) == self.account_id


def list_captured(
    session: Session, scope: CaptureScope, *, offset: int = 0, limit: int = 50
) -> list[CapturedMessage]:
    return list(
        session.execute(
            select(CapturedMessage)
            .where(scope.condition())
            .order_by(col(CapturedMessage.id).desc())
            .offset(offset)
            .limit(limit)
        ).scalars()
    )


def count_captured(session: Session, scope: CaptureScope) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(CapturedMessage).where(scope.condition())
        ).scalar_one()
    )


def get_captured(session: Session, scope: CaptureScope, captured_id: int) -> CapturedMessage:
    message: CapturedMessage | None = session.execute(
        select(CapturedMessage).where(col(CapturedMessage.id) == captured_id, scope.condition())
    ).scalar_one_or_none()
    if message is None:
        raise NotFound("captured message {id} does not exist", id=captured_id)
    return message


def list_sending_domains(settings: Settings) -> list[SendingDomain]:
    return list_domains(settings.sending_domains_dir)
