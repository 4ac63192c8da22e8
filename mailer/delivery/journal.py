"""The acceptance journal: what each relay answered, on disk before the next SMTP command.

The ledger is written in bulk after a batch; a worker killed in between would lose what it
learnt, and the rows would be sent again.  So each batch keeps a journal file named by its
claim token: every outcome (above all each 250 after DATA) is appended with one
``write(2)`` before the connection is used again.  The kernel keeps the bytes once the
call returns, so they survive a ``kill -9`` of the worker (not a crash of the machine:
then at most the last moments may be resent, see DESIGN.md).

A live journal is held with an exclusive ``flock``; the kernel drops it when its process
dies.  :func:`orphaned_journals` finds the journals nobody holds, so a recovering worker
can apply them to the ledger and delete them.  A journal is created under a temporary name
and renamed only once locked, so a recovering worker never takes a journal that is being
born.  Journals are local to one machine: workers on other machines fall back to the
ledger's claim lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailer.core.types import DeliveryResult, DeliveryStatus

__all__ = ["Journal", "OrphanJournal", "orphaned_journals", "read_journal"]

log = logging.getLogger(__name__)

SUFFIX = ".journal"
_STATUS_CODE = {
    DeliveryStatus.ACCEPTED: "a",
    DeliveryStatus.DEFERRED: "d",
    DeliveryStatus.REJECTED: "r",
    DeliveryStatus.HELD: "h",
}
_CODE_STATUS = {code: status for status, code in _STATUS_CODE.items()}


class Journal:
    """The journal of one claim; use as a context manager (removed when closed)."""

    def __init__(self, directory: Path, token: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{token}{SUFFIX}"
        temporary = directory / f".{token}.{secrets.token_hex(4)}.tmp"
        self._fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, self.path)
        except BaseException:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self.written = 0

    def record(self, result: DeliveryResult) -> None:
        """Append one outcome (a single write: complete, or absent after a crash)."""
        line = json.dumps(
            [
                result.message_id,
                _STATUS_CODE[result.status],
                result.code,
                result.text[:300],
                result.relay,
                result.provider_id,
            ],
            separators=(",", ":"),
        )
        os.write(self._fd, line.encode() + b"\n")
        self.written += 1

    def close(self, *, remove: bool = True) -> None:
        """Close, and delete the file once its outcomes are in the ledger."""
        if self._fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)  # releases the lock
        self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        # On an exception the outcomes may not be in the ledger: keep the file for recovery.
        self.close(remove=exc[0] is None)


def read_journal(path: Path) -> list[DeliveryResult]:
    """The outcomes in a journal; a torn or unreadable line is skipped (and logged)."""
    results: list[DeliveryResult] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                message_id, status, code, text, relay, provider_id = json.loads(raw)
                results.append(
                    DeliveryResult(
                        message_id=int(message_id),
                        status=_CODE_STATUS[status],
                        code=code,
                        text=text,
                        relay=relay,
                        provider_id=provider_id,
                    )
                )
            except (ValueError, KeyError, TypeError):
                log.warning("journal %s line %d is unreadable, skipped", path, number)
    return results


@dataclass(slots=True)
class OrphanJournal:
    """A journal whose worker is gone, locked by us until :meth:`remove`."""

    token: str
    path: Path
    _fd: int

    def results(self) -> list[DeliveryResult]:
        return read_journal(self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def orphaned_journals(directory: Path) -> Iterator[OrphanJournal]:
    """Journals no live process holds, each locked while the caller handles it.

    The caller applies :meth:`OrphanJournal.results` to the ledger, then calls
    :meth:`OrphanJournal.remove` (or ``release`` to leave it for a later try).
    """
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its worker finished meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live worker (or another recovery) holds it
        if not path.exists():  # finished and removed between our open and lock
            os.close(fd)
            continue
        orphan = OrphanJournal(path.name.removesuffix(SUFFIX), path, fd)
        try:
            yield orphan
        finally:
            orphan.release()
