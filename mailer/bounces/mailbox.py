"""Polling an IMAP or POP3 mailbox for bounces, complaints and mailto unsubscribes: the same
messages the SMTP receiver (:mod:`mailer.bounces.inbound`) takes, where they are delivered
to a mailbox instead (``settings.inbound.mailbox``; an empty host turns polling off).

Standard library only (:mod:`imaplib`, :mod:`poplib`): two protocols, a handful of
commands each, nothing a library would make shorter or safer.

One poll (:meth:`MailboxPoller.poll`) connects, logs in, and takes at most ``max_per_poll``
messages, oldest first.  For each message:

1. its envelope is worked out from the headers the delivering MTA wrote
   (:func:`envelope_of`): the recipient from ``Delivered-To``, ``X-Original-To``,
   ``Envelope-To``, ``X-Envelope-To``, else ``To``/``Cc`` (only addresses the SMTP receiver
   would accept: ``bounces+TOKEN@``, ``bounces@``, ``unsubscribe+TOKEN@`` at the inbound
   domains and the feedback-loop address), the sender from ``Return-Path``;
2. :func:`mailer.bounces.service.handle_inbound` acts on it in a transaction of its own,
   committed before anything else happens;
3. only then is it removed: POP3 ``DELE`` (applied at ``QUIT``), IMAP ``\\Deleted`` and
   ``UID EXPUNGE``, or ``UID MOVE`` to ``processed_folder``.

A crash (or a lost connection) between 2 and 3 leaves the message where it was; the next
poll handles it again, which records nothing twice (``handle_inbound`` is idempotent: a row
bounces once, a delay, a complaint and an unsubscribe are recorded once).

A message that cannot be handled (no header at all, larger than ``inbound.max_bytes``, or
``handle_inbound`` raised) is logged and left in the mailbox: on IMAP flagged ``\\Flagged``
(later polls skip flagged messages: unflag one to have it tried again) or moved to
``error_folder``; on POP3, which has no flags, skipped for the life of the process.  A
report about a row whose send is not recorded yet is left as it is, for the next poll.  The
poll goes on with the next message.  A lost connection or an unavailable database ends the
poll (the message at hand stays, untouched) and :meth:`MailboxPoller.run` tries again with
back-off.  Bad credentials raise :class:`MailboxLoginFailed`, which names the settings to fix.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import imaplib
import logging
import poplib
import re
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import Enum
from types import TracebackType
from typing import BinaryIO, Protocol

from sqlalchemy.exc import InterfaceError, OperationalError

from mailer.bounces.inbound import accepts_recipient
from mailer.bounces.service import handle_inbound
from mailer.core.config import MailboxSettings, Settings
from mailer.core.errors import ConfigError, MailerError
from mailer.storage.db import load_models, session_scope

__all__ = [
    "Envelope",
    "MailboxError",
    "MailboxLoginFailed",
    "MailboxPoller",
    "PollSummary",
    "UnreadableMessage",
    "envelope_of",
    "poll_once",
]

log = logging.getLogger(__name__)

ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
"""Where delivering MTAs write the envelope recipient, most trusted first."""

BACKOFF_FIRST_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 900.0

# A POP3 line may be as long as a message (an HTML part on one line); sizes are checked
# against inbound.max_bytes before RETR.
_POP3_MAX_LINE = 64 * 1024 * 1024

# Errors that end a poll: the connection is gone or the database is unavailable.
_DATABASE_DOWN = (OperationalError, InterfaceError)


class MailboxError(MailerError):
    """The mailbox could not be polled: unreachable, TLS, a protocol or folder error."""

    code = "mailbox_error"


class MailboxLoginFailed(ConfigError):
    """The server refused the configured username and password."""

    code = "mailbox_login_failed"


class UnreadableMessage(ValueError):
    """A mailbox item that is not a mail message (no header fields at all)."""


@dataclass(slots=True)
class PollSummary:
    """What one poll did: ``fetched`` = ``handled`` (acted on and removed) + ``left`` (still
    in the mailbox: could not be handled, not ready, or not removed); ``errors`` counts the
    failures among them (a message left for later is not one).  ``more``: messages were left
    for the next poll by ``max_per_poll``; ``aborted``: why the poll ended early."""

    fetched: int = 0
    handled: int = 0
    left: int = 0
    errors: int = 0
    more: bool = False
    aborted: str = ""

    def as_dict(self) -> dict[str, int]:
        return {
            "fetched": self.fetched,
            "handled": self.handled,
            "left": self.left,
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope a mailbox message came with, as far as its headers tell."""

    mail_from: str
    rcpt_tos: list[str]


def envelope_of(settings: Settings, data: bytes) -> Envelope:
    """The envelope of a message read from a mailbox (see the module docstring).

    Recipients are the addresses the SMTP receiver would accept, from the first group of
    headers that has any: the envelope headers, then ``To``/``Cc``; none (the report is
    then matched by what it carries of the original message) when no header names one.
    Raises :class:`UnreadableMessage` for bytes without any header field."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data)
    if not headers.keys():
        raise UnreadableMessage("no header fields: not a mail message")
    recipients: list[str] = []
    for names in (ENVELOPE_HEADERS, ("To", "Cc")):
        ours = [a for a in _addresses(headers, names) if accepts_recipient(settings, a)]
        if ours:
            recipients = list(dict.fromkeys(ours))
            break
    return Envelope(_sender(headers), recipients)


def _addresses(headers: Message, names: Iterable[str]) -> list[str]:
    values = [str(value) for name in names for value in headers.get_all(name) or []]
    return [address for _name, address in email.utils.getaddresses(values) if "@" in address]


def _sender(headers: Message) -> str:
    """The envelope sender: the topmost ``Return-Path`` (``<>`` is the null sender).

    Without one (a delivery agent that does not write it), an automatic message
    (``Auto-Submitted``) counts as from the null sender and anything else as from its
    ``From`` address."""
    paths = headers.get_all("Return-Path") or []
    if paths:
        addresses = email.utils.getaddresses([str(paths[0])])
        return addresses[0][1] if addresses else ""
    auto = str(headers.get("Auto-Submitted") or "no").strip().lower()
    if not auto.startswith("no"):
        return ""
    found = _addresses(headers, ("From",))
    return found[0] if found else ""


# --- the two protocols ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    key: str  # IMAP UID, POP3 message number
    uid: str  # IMAP UID, POP3 UIDL
    size: int


class _Box(Protocol):
    """One open, logged-in mailbox connection."""

    label: str
    removals_on_close: bool  # removals take effect only when close() succeeds (POP3)

    def pending(self, limit: int, skip: set[str]) -> tuple[list[_Item], bool]: ...
    def fetch(self, item: _Item) -> bytes: ...
    def remove(self, item: _Item) -> None: ...
    def set_aside(self, item: _Item) -> None: ...
    def close(self) -> None: ...


def _tls_context(mailbox: MailboxSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=mailbox.ca_file or None)


def _label(mailbox: MailboxSettings) -> str:
    scheme = mailbox.protocol + ("s" if mailbox.security == "tls" else "")
    return f"{scheme}://{mailbox.host}:{mailbox.effective_port}"


def _unreachable(mailbox: MailboxSettings, exc: BaseException) -> MailboxError:
    hint = "check inbound.mailbox.host, port and security"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            "the server's certificate is not trusted for this host name: check "
            "inbound.mailbox.host, or set inbound.mailbox.ca_file to the PEM of its CA"
        )
    elif isinstance(exc, ssl.SSLError):
        hint = 'check inbound.mailbox.security ("tls" for ports 993/995, "starttls" for 143/110)'
    return MailboxError(
        "cannot connect to the mailbox {where} ({security}): {error}; {hint}",
        field="inbound.mailbox.host",
        where=_label(mailbox),
        security=mailbox.security,
        error=str(exc) or type(exc).__name__,
        hint=hint,
    )


def _login_failed(mailbox: MailboxSettings, said: str) -> MailboxLoginFailed:
    return MailboxLoginFailed(
        "the mailbox {where} refused the login of user {user!r} ({said}): check "
        "inbound.mailbox.username and inbound.mailbox.password (MAILER_INBOUND__MAILBOX__"
        "USERNAME, MAILER_INBOUND__MAILBOX__PASSWORD), and that the server allows this "
        "login over {security}",
        field="inbound.mailbox.password",
        where=_label(mailbox),
        user=mailbox.username,
        said=said,
        security={"tls": "TLS", "starttls": "STARTTLS"}.get(
            mailbox.security, "a connection without TLS"
        ),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# Server answers that mean "not now" rather than "wrong password" (RFC 5530, RFC 3206).
_TRANSIENT = re.compile(r"\[(?:UNAVAILABLE|SERVERBUG|LIMIT|INUSE|IN-USE|SYS/TEMP)\b", re.I)


class _Imap:
    removals_on_close = False

    def __init__(self, settings: Settings) -> None:
        mailbox = settings.inbound.mailbox
        self.mailbox = mailbox
        self.label = f"{_label(mailbox)}/{mailbox.folder}"
        host, port, timeout = mailbox.host, mailbox.effective_port, mailbox.timeout_seconds
        try:
            if mailbox.security == "tls":
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    host, port, ssl_context=_tls_context(mailbox), timeout=timeout
                )
            else:
                conn = imaplib.IMAP4(host, port, timeout=timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise _unreachable(mailbox, exc) from exc
        self.conn = conn
        try:
            self._start(settings)
        except BaseException:
            self._drop()
            raise

    def _start(self, settings: Settings) -> None:
        mailbox, conn = self.mailbox, self.conn
        try:
            if mailbox.security == "starttls":
                if "STARTTLS" not in conn.capabilities:
                    raise MailboxError(
                        "the mailbox {where} does not offer STARTTLS: set "
                        'inbound.mailbox.security = "tls" (and the IMAPS port, 993)',
                        field="inbound.mailbox.security",
                        where=_label(mailbox),
                    )
                conn.starttls(_tls_context(mailbox))
        except (OSError, imaplib.IMAP4.error) as exc:
            raise _unreachable(mailbox, exc) from exc
        user, password = mailbox.username, mailbox.password.get_secret_value()
        try:
            if (user + password).isascii():
                conn.login(user, password)
            else:  # LOGIN is ASCII only; SASL PLAIN carries UTF-8
                plain = b"\0" + user.encode() + b"\0" + password.encode()
                conn.authenticate("PLAIN", lambda _challenge: plain)
        except imaplib.IMAP4.abort as exc:
            raise _unreachable(mailbox, exc) from exc
        except imaplib.IMAP4.error as exc:
            said = _text(exc.args[0] if exc.args else exc)
            if _TRANSIENT.search(said):
                raise MailboxError(
                    "the mailbox {where} cannot log in now: {said}",
                    field="inbound.mailbox.host",
                    where=_label(mailbox),
                    said=said,
                ) from exc
            raise _login_failed(mailbox, said) from exc
        except OSError as exc:
            raise _unreachable(mailbox, exc) from exc
        typ, data = conn.capability()
        self.capabilities = set(_text(data[0]).upper().split()) if typ == "OK" and data else set()
        typ, data = conn.select(_mailbox_name(mailbox.folder))
        if typ != "OK":
            raise MailboxError(
                "the mailbox {where} has no folder {folder!r} ({said}): check "
                "inbound.mailbox.folder",
                field="inbound.mailbox.folder",
                where=_label(mailbox),
                folder=mailbox.folder,
                said=_text(data[0] if data else typ),
            )
        for name, folder in (
            ("processed_folder", mailbox.processed_folder),
            ("error_folder", mailbox.error_folder),
        ):
            if folder:
                self._ensure_folder(name, folder)

    def _ensure_folder(self, setting: str, folder: str) -> None:
        quoted = _mailbox_name(folder)
        typ, data = self.conn.list('""', quoted)
        if typ == "OK" and any(item for item in data):
            return
        typ, data = self.conn.create(quoted)
        if typ != "OK" and "ALREADYEXISTS" not in _text(data[0] if data else "").upper():
            raise MailboxError(
                "the mailbox {where} cannot create the folder {folder!r} ({said}): create it, "
                "or change inbound.mailbox.{setting}",
                field=f"inbound.mailbox.{setting}",
                where=_label(self.mailbox),
                folder=folder,
                said=_text(data[0] if data else typ),
                setting=setting,
            )
        log.info("mailbox %s: created the folder %r", _label(self.mailbox), folder)

    def _check(self, what: str, result: tuple[str, list[object]]) -> list[object]:
        typ, data = result
        if typ != "OK":
            raise MailboxError(
                "the mailbox {where} refused {what}: {said}",
                where=self.label,
                what=what,
                said=_text(data[0] if data else typ),
            )
        return data

    def pending(self, limit: int, skip: set[str]) -> tuple[list[_Item], bool]:
        data = self._check("SEARCH", self.conn.uid("SEARCH", "UNDELETED", "UNFLAGGED"))
        uids = [uid for uid in _text(data[0] if data else b"").split() if uid not in skip]
        uids.sort(key=int)
        chosen = uids[:limit]
        if not chosen:
            return [], False
        sizes: dict[str, int] = {}
        answer = self._check("FETCH", self.conn.uid("FETCH", ",".join(chosen), "(RFC822.SIZE)"))
        for entry in answer:
            line = _text(entry[0] if isinstance(entry, tuple) else entry)
            uid = re.search(r"\bUID (\d+)", line)
            size = re.search(r"\bRFC822\.SIZE (\d+)", line)
            if uid and size:
                sizes[uid.group(1)] = int(size.group(1))
        items = [_Item(uid, uid, sizes.get(uid, 0)) for uid in chosen]
        return items, len(uids) > limit

    def fetch(self, item: _Item) -> bytes:
        data = self._check("FETCH", self.conn.uid("FETCH", item.key, "(BODY.PEEK[])"))
        for entry in data:
            if isinstance(entry, tuple) and b"BODY[]" in entry[0] and isinstance(entry[1], bytes):
                return entry[1]
        raise MailboxError(
            "the mailbox {where} returned no message for UID {uid}",
            where=self.label,
            uid=item.key,
        )

    def remove(self, item: _Item) -> None:
        if self.mailbox.processed_folder:
            self._move(item, self.mailbox.processed_folder)
        else:
            self._delete(item)

    def set_aside(self, item: _Item) -> None:
        if self.mailbox.error_folder:
            self._move(item, self.mailbox.error_folder)
        else:
            self._check("STORE", self.conn.uid("STORE", item.key, "+FLAGS.SILENT", r"(\Flagged)"))

    def _move(self, item: _Item, folder: str) -> None:
        if "MOVE" in self.capabilities:
            self._check("MOVE", self.conn.uid("MOVE", item.key, _mailbox_name(folder)))
            return
        self._check("COPY", self.conn.uid("COPY", item.key, _mailbox_name(folder)))
        self._delete(item)

    def _delete(self, item: _Item) -> None:
        self._check("STORE", self.conn.uid("STORE", item.key, "+FLAGS.SILENT", r"(\Deleted)"))
        if "UIDPLUS" in self.capabilities:
            self._check("EXPUNGE", self.conn.uid("EXPUNGE", item.key))
        # Without UIDPLUS, CLOSE expunges; meanwhile the search leaves \Deleted ones out.

    def close(self) -> None:
        try:
            self._check("CLOSE", self.conn.close())
        finally:
            self._drop()

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.logout()


def _mailbox_name(name: str) -> str:
    """An IMAP folder name as a quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    encoded: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            text = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            encoded.append(f"&{text}-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            encoded.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    text = "".join(encoded).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


class _LongLines:
    """poplib reads lines of at most 2,048 bytes; a message's may be longer."""

    file: BinaryIO

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(_POP3_MAX_LINE + 1)
        if len(line) > _POP3_MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class _POP3(_LongLines, poplib.POP3):
    pass


class _POP3SSL(_LongLines, poplib.POP3_SSL):
    pass


class _Pop3:
    removals_on_close = True

    def __init__(self, settings: Settings) -> None:
        mailbox = settings.inbound.mailbox
        self.mailbox = mailbox
        self.label = _label(mailbox)
        host, port, timeout = mailbox.host, mailbox.effective_port, mailbox.timeout_seconds
        try:
            if mailbox.security == "tls":
                conn: poplib.POP3 = _POP3SSL(
                    host, port, timeout=timeout, context=_tls_context(mailbox)
                )
            else:
                conn = _POP3(host, port, timeout=timeout)
        except (OSError, poplib.error_proto) as exc:
            raise _unreachable(mailbox, exc) from exc
        self.conn = conn
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.conn.close()
            raise

    def _start(self) -> None:
        mailbox, conn = self.mailbox, self.conn
        try:
            if mailbox.security == "starttls":
                if "STLS" not in conn.capa():
                    raise MailboxError(
                        "the mailbox {where} does not offer STLS: set "
                        'inbound.mailbox.security = "tls" (and the POP3S port, 995)',
                        field="inbound.mailbox.security",
                        where=_label(mailbox),
                    )
                conn.stls(_tls_context(mailbox))
        except (OSError, poplib.error_proto) as exc:
            raise _unreachable(mailbox, exc) from exc
        try:
            conn.user(mailbox.username)
            conn.pass_(mailbox.password.get_secret_value())
        except poplib.error_proto as exc:
            said = _text(exc.args[0] if exc.args else exc)
            if not said.startswith("-ERR") or said == "-ERR EOF":
                raise _unreachable(mailbox, exc) from exc
            if _TRANSIENT.search(said):
                raise MailboxError(
                    "the mailbox {where} cannot log in now: {said}",
                    field="inbound.mailbox.host",
                    where=_label(mailbox),
                    said=said,
                ) from exc
            raise _login_failed(mailbox, said) from exc
        except OSError as exc:
            raise _unreachable(mailbox, exc) from exc

    def pending(self, limit: int, skip: set[str]) -> tuple[list[_Item], bool]:
        _resp, size_lines, _octets = self.conn.list()
        sizes = dict(_text(line).split()[:2] for line in size_lines)
        try:
            _resp, uid_lines, _octets = self.conn.uidl()
            uids = dict(_text(line).split()[:2] for line in uid_lines)
        except poplib.error_proto:  # UIDL is optional (RFC 1939): numbers stand in
            uids = {number: f"#{number}" for number in sizes}
        items = [
            _Item(number, uids.get(number, f"#{number}"), int(size))
            for number, size in sizes.items()
            if uids.get(number, f"#{number}") not in skip
        ]
        return items[:limit], len(items) > limit

    def fetch(self, item: _Item) -> bytes:
        _resp, lines, _octets = self.conn.retr(item.key)
        return b"\r\n".join(lines) + b"\r\n"

    def remove(self, item: _Item) -> None:
        self.conn.dele(item.key)

    def set_aside(self, item: _Item) -> None:
        """POP3 has no flags: the poller remembers the message instead."""

    def close(self) -> None:
        try:
            self.conn.quit()  # the UPDATE state: DELE takes effect now
        finally:
            with contextlib.suppress(Exception):
                self.conn.close()


def _open(settings: Settings) -> _Box:
    if settings.inbound.mailbox.protocol == "pop3":
        return _Pop3(settings)
    return _Imap(settings)


# --- the poller -----------------------------------------------------------------------------


class _Verdict(Enum):
    HANDLED = "handled"  # acted on, committed and removed
    NOT_YET = "not yet"  # the row's send is not recorded yet: left for the next poll
    FAILED = "failed"  # could not be handled: set aside


class MailboxPoller:
    """Polls ``settings.inbound.mailbox``: :meth:`poll` once, or :meth:`run` until stopped,
    or ``start()`` / ``stop()`` (a context manager) in a thread of its own.  Not configured
    (empty host): :meth:`start` does nothing and :meth:`poll` raises :class:`ConfigError`.

    After a failed poll :meth:`run` waits *backoff_first* seconds, doubling with each
    failure in a row up to *backoff_max* (or ``poll_seconds`` if longer); after a refused
    login at least ``poll_seconds`` (a server that locks accounts is not hammered)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backoff_first: float = BACKOFF_FIRST_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self.settings = settings
        self.mailbox = settings.inbound.mailbox
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._failed: set[str] = set()  # POP3 UIDLs set aside, skipped while this lives
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.mailbox.enabled

    # --- one poll ---------------------------------------------------------------------------

    def poll(self, stop: threading.Event | None = None) -> PollSummary:
        """Poll once; raises :class:`MailboxError` (or :class:`MailboxLoginFailed`) if the
        mailbox cannot be opened.  A poll that ends early says why in ``aborted``."""
        if not self.enabled:
            raise ConfigError(
                "no mailbox to poll: set inbound.mailbox.host (MAILER_INBOUND__MAILBOX__HOST), "
                "username and password",
                field="inbound.mailbox.host",
            )
        load_models()  # every table the ledger's foreign keys name
        box = _open(self.settings)
        summary = PollSummary()
        try:
            items, summary.more = box.pending(self.mailbox.max_per_poll, self._failed)
            for item in items:
                if stop is not None and stop.is_set():
                    summary.more = True
                    break
                summary.fetched += 1
                try:
                    verdict = self._process(box, item)
                except Exception as exc:  # connection lost, database down, not removed
                    summary.left += 1
                    summary.errors += 1
                    summary.aborted = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "mailbox %s: poll ended at message %s, which stays: %s",
                        box.label,
                        item.uid,
                        summary.aborted,
                    )
                    break
                if verdict is _Verdict.HANDLED:
                    summary.handled += 1
                else:
                    summary.left += 1
                    if verdict is _Verdict.FAILED:
                        summary.errors += 1
        except Exception as exc:
            if not summary.aborted:
                summary.aborted = f"{type(exc).__name__}: {exc}"
                summary.errors += 1
                log.warning("mailbox %s: poll ended: %s", box.label, summary.aborted)
        finally:
            try:
                box.close()
            except Exception as exc:
                if box.removals_on_close and summary.handled:
                    # POP3: the DELEs were not applied; they come back, harmlessly.
                    summary.left += summary.handled
                    summary.handled = 0
                summary.errors += 1
                summary.aborted = summary.aborted or f"{type(exc).__name__}: {exc}"
                log.warning("mailbox %s: closing failed: %s", box.label, exc)
        if summary.fetched:
            log.info("mailbox %s: %s", box.label, summary.as_dict())
        return summary

    def _process(self, box: _Box, item: _Item) -> _Verdict:
        if item.size > self.settings.inbound.max_bytes:
            reason = (
                f"{item.size} bytes, over inbound.max_bytes ({self.settings.inbound.max_bytes})"
            )
            return self._set_aside(box, item, reason)
        data = box.fetch(item)
        try:
            envelope = envelope_of(self.settings, data)
            with session_scope(self.settings) as session:
                outcome = handle_inbound(
                    session, self.settings, envelope.mail_from, envelope.rcpt_tos, data
                )
        except _DATABASE_DOWN:
            raise  # not the message's fault: it stays untouched, the poll ends
        except UnreadableMessage as exc:
            return self._set_aside(box, item, str(exc))
        except Exception as exc:
            log.exception("mailbox %s: message %s could not be handled", box.label, item.uid)
            return self._set_aside(box, item, f"{type(exc).__name__}: {exc}")
        if outcome.retry_later:
            log.info("mailbox %s: message %s left for later: %s", box.label, item.uid, outcome.note)
            return _Verdict.NOT_YET
        # Committed: only now may the message go.  If this fails it is handled again later.
        box.remove(item)
        return _Verdict.HANDLED

    def _set_aside(self, box: _Box, item: _Item, reason: str) -> _Verdict:
        self._failed.add(item.uid)
        where = (
            f"moved to {self.mailbox.error_folder!r}"
            if self.mailbox.error_folder and self.mailbox.protocol == "imap"
            else "flagged and left in place"
            if self.mailbox.protocol == "imap"
            else "left in place (skipped until the poller restarts)"
        )
        try:
            box.set_aside(item)
        except MailboxError as exc:
            where = f"left in place ({exc})"
        log.error("mailbox %s: message %s not handled (%s): %s", box.label, item.uid, reason, where)
        return _Verdict.FAILED

    # --- polling until stopped --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll every ``poll_seconds`` until *stop* is set; at once again while messages
        remain beyond ``max_per_poll``; with back-off after a failure."""
        failures = 0
        log.info(
            "polling the mailbox %s/%s every %gs",
            _label(self.mailbox),
            self.mailbox.folder,
            self.mailbox.poll_seconds,
        )
        while not stop.is_set():
            wait = self.mailbox.poll_seconds
            try:
                summary = self.poll(stop)
            except MailboxLoginFailed as exc:
                failures += 1
                wait = max(self._backoff(failures), self.mailbox.poll_seconds)
                log.error("%s (next try in %gs)", exc.message, wait)
            except Exception as exc:
                failures += 1
                wait = self._backoff(failures)
                if isinstance(exc, MailerError):
                    log.warning("%s (next try in %gs)", exc.message, wait)
                else:
                    log.exception("mailbox poll failed (next try in %gs)", wait)
            else:
                if summary.aborted:
                    failures += 1
                    wait = self._backoff(failures)
                else:
                    failures = 0
                    if summary.more:
                        wait = 0
            stop.wait(wait)

    def _backoff(self, failures: int) -> float:
        cap = max(self.backoff_max, self.mailbox.poll_seconds)
        return float(min(cap, self.backoff_first * 2 ** min(failures - 1, 30)))

    def start(self) -> MailboxPoller:
        """Poll in a thread of its own (nothing when no mailbox is configured)."""
        if self._thread is not None or not self.enabled:
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="mailbox-poller", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the message at hand (waiting up to *timeout* seconds)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout if timeout is not None else self.mailbox.timeout_seconds * 3)

    def __enter__(self) -> MailboxPoller:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def poll_once(settings: Settings) -> PollSummary:
    """One poll of ``settings.inbound.mailbox`` (``mailer inbound --poll-once``)."""
    return MailboxPoller(settings).poll()
