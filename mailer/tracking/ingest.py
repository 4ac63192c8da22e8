"""Buffered ingest of tracking hits: the endpoints only append to a buffer in memory; the
hits are classified and written as events in batches, every ``tracking.flush_seconds``
and on shutdown.

Who writes (``tracking.writer``): by default a *writer process* of each HTTP process
(``python -m mailer.tracking.ingest``), to which a thread of the HTTP process hands the
buffer every :data:`SHIP_SECONDS` through a pipe (marshalled tuples).  Written from a
thread of the HTTP process instead, the work of a flush (about 15-25 us a hit) held the GIL
against the event loop: under load the loop stalled for tens of milliseconds per flush.

The writing goes through the DBAPI connection itself (no ORM, no SQL compilation, no
per-row type processing).  Per batch, in one transaction:

- one SELECT resolves the messages (account, campaign, contact, send time; hits of unknown
  messages are dropped), with the ids as one parameter (an array on PostgreSQL, a JSON
  list on SQLite);
- one SELECT reads, for the messages clicked or trapped in the batch, the stored hidden-link
  hits of the last ``trap_window_seconds`` and the stored clicks of the last
  ``burst_seconds`` (so bursts and traps are seen across flushes and processes);
- the events are written with ``COPY`` on PostgreSQL and one prepared ``executemany`` on
  SQLite;
- only when a trap or a burst is found, one UPDATE marks the message's earlier opens and
  clicks in the window as machine.

What a crash loses: an HTTP process killed loses the hits of its last
:data:`SHIP_SECONDS` (its writer process, at the end of its input, writes what it was
handed and ends); a writer process killed loses what it held: the hits handed to it since
its last write, normally under ``flush_seconds`` of them (the HTTP process starts another
for the next ones).  A clean shutdown loses nothing.

Raw IP addresses stay in memory: the event keeps a truncated or keyed-hash form.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from mailer.core.config import Settings, TrackingSettings
from mailer.events.models import EventKind
from mailer.storage.db import dispose_engines, get_engine
from mailer.tracking.classify import Activity, classify_click, classify_open, proxy_of

log = logging.getLogger(__name__)

OPEN = "open"
CLICK = "click"
TRAP = "trap"
WEB = "web"

MAX_BUFFERED = 500_000
"""Hits kept while the database is unreachable; beyond this the oldest are dropped."""
CHUNK = 5000
"""Hits written per transaction."""
_MAX_AGENT = 400

_OPENED = EventKind.OPENED.value
_CLICKED = EventKind.CLICKED.value
_SCANNED = EventKind.SCANNED.value
_COLUMNS = "account_id, kind, message_id, contact_id, campaign_id, occurred_at, machine, data"
_COPY_EVENTS = f"COPY events ({_COLUMNS}) FROM STDIN"
_INSERT_EVENTS = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608


class Hit(NamedTuple):
    """One request on a tracking URL, as the endpoint saw it (a tuple: one is made per
    request, on the event loop)."""

    kind: str  # open, click, trap, web
    message_id: int
    at: float  # time.time()
    method: str
    user_agent: str
    ip: str
    link: int = -1
    url: str = ""


@lru_cache(maxsize=65536)
def private_ip(ip: str, mode: str, secret: str) -> str:
    """The form of an IP address that is stored: the /24 (IPv4) or /48 (IPv6) network it is
    in, or a keyed hash of it (see ``TrackingSettings.ip_mode``)."""
    if not ip:
        return ""
    if mode == "hash":
        digest = hmac.new(secret.encode(), b"ip\x00" + ip.encode(), hashlib.sha256)
        return digest.hexdigest()[:24]
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class _Target(NamedTuple):
    account_id: int
    campaign_id: int | None
    contact_id: int | None
    sent_at: datetime | None


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class _Store:
    """The SQL of one backend, on a DBAPI cursor.  Times are aware UTC datetimes here."""

    def targets(self, cursor: Any, message_ids: Sequence[int]) -> dict[int, _Target]:
        raise NotImplementedError

    def activity(
        self, cursor: Any, message_ids: Sequence[int], clicks_since: datetime, traps_since: datetime
    ) -> Iterable[tuple[int, str, datetime, int | None]]:
        """(message, kind, time, link) of the stored clicks and hidden-link hits."""
        raise NotImplementedError

    def insert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        """Rows in :data:`_COLUMNS` order, occurred_at an aware datetime, data a dict."""
        raise NotImplementedError

    def mark_earlier(self, cursor: Any, message_ids: Sequence[int], since: datetime) -> None:
        raise NotImplementedError


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data)  # what SQLAlchemy's JSON type writes


class _Postgres(_Store):
    def targets(self, cursor: Any, message_ids: Sequence[int]) -> dict[int, _Target]:
        cursor.execute(
            "SELECT id, account_id, campaign_id, contact_id, sent_at FROM messages "
            "WHERE id = ANY(%s::bigint[])",
            (list(message_ids),),
        )
        return {row[0]: _Target(row[1], row[2], row[3], row[4]) for row in cursor.fetchall()}

    def activity(
        self, cursor: Any, message_ids: Sequence[int], clicks_since: datetime, traps_since: datetime
    ) -> Iterable[tuple[int, str, datetime, int | None]]:
        cursor.execute(
            "SELECT message_id, kind, occurred_at, "
            "CASE WHEN jsonb_typeof(data->'link') = 'number' THEN (data->>'link')::numeric END "
            "FROM events WHERE message_id = ANY(%s::bigint[]) AND ("
            "(kind = %s AND occurred_at >= %s) OR (kind = %s AND occurred_at >= %s))",
            (list(message_ids), _CLICKED, clicks_since, _SCANNED, traps_since),
        )
        return cursor.fetchall()  # type: ignore[no-any-return]

    def insert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        with cursor.copy(_COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row((*row[:7], _dumps(row[7])))

    def mark_earlier(self, cursor: Any, message_ids: Sequence[int], since: datetime) -> None:
        cursor.execute(
            "UPDATE events SET machine = true WHERE message_id = ANY(%s::bigint[]) "
            "AND kind IN (%s, %s) AND occurred_at >= %s AND machine = false",
            (list(message_ids), _OPENED, _CLICKED, since),
        )


def _sqlite_time(at: datetime) -> str:
    """What SQLAlchemy's SQLite DATETIME stores (naive UTC, always with microseconds): the
    events written here compare and sort with the ones written through the ORM."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_read_time(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class _Sqlite(_Store):
    def targets(self, cursor: Any, message_ids: Sequence[int]) -> dict[int, _Target]:
        cursor.execute(
            "SELECT id, account_id, campaign_id, contact_id, sent_at FROM messages "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(message_ids)),),
        )
        return {
            row[0]: _Target(row[1], row[2], row[3], _sqlite_read_time(row[4]) if row[4] else None)
            for row in cursor.fetchall()
        }

    def activity(
        self, cursor: Any, message_ids: Sequence[int], clicks_since: datetime, traps_since: datetime
    ) -> Iterable[tuple[int, str, datetime, int | None]]:
        cursor.execute(
            "SELECT message_id, kind, occurred_at, "
            "CASE WHEN json_type(data, '$.link') = 'integer' THEN json_extract(data, '$.link') "
            "END FROM events WHERE message_id IN (SELECT value FROM json_each(?)) AND ("
            "(kind = ? AND occurred_at >= ?) OR (kind = ? AND occurred_at >= ?))",
            (
                json.dumps(list(message_ids)),
                _CLICKED,
                _sqlite_time(clicks_since),
                _SCANNED,
                _sqlite_time(traps_since),
            ),
        )
        return [
            (message_id, kind, _sqlite_read_time(at), link)
            for message_id, kind, at, link in cursor.fetchall()
        ]

    def insert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        cursor.executemany(
            _INSERT_EVENTS,
            [(*row[:5], _sqlite_time(row[5]), 1 if row[6] else 0, _dumps(row[7])) for row in rows],
        )

    def mark_earlier(self, cursor: Any, message_ids: Sequence[int], since: datetime) -> None:
        cursor.execute(
            "UPDATE events SET machine = 1 WHERE message_id IN (SELECT value FROM json_each(?)) "
            "AND kind IN (?, ?) AND occurred_at >= ? AND machine = 0",
            (json.dumps(list(message_ids)), _OPENED, _CLICKED, _sqlite_time(since)),
        )


class HitBuffer:
    """Hits waiting to be written.  ``add`` is all an endpoint does (no I/O, no lock held for
    more than an append).

    ``writer="thread"``: a thread of this process writes the buffer every
    ``flush_seconds``.  ``writer="process"`` (``tracking.writer``, the default): a thread
    of this process hands the buffer every :data:`SHIP_SECONDS` to a writer process of
    its own (``python -m mailer.tracking.ingest``, started on the first hit) through a pipe,
    and that process classifies and writes; the HTTP process never waits for the database
    and holds the GIL only to append and to marshal.
    """

    def __init__(self, settings: Settings, *, writer: str | None = None) -> None:
        self.settings = settings
        self.rules: TrackingSettings = settings.tracking
        self.writer = writer or self.rules.writer
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._child: _WriterProcess | None = None

    def add(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)
        if self._thread is None:
            self.start()

    def add_many(self, hits: Iterable[Hit]) -> None:
        with self._lock:
            self._hits.extend(hits)
        if self._thread is None:
            self.start()

    def pending(self) -> int:
        """Hits this process holds (in process mode: not yet handed to the writer)."""
        return len(self._hits)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="tracking-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is left (on shutdown); in process mode, hand it to
        the writer process, which writes everything it holds and exits."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.writer != "process":
            try:
                self.flush()
            except Exception:
                log.exception("tracking hits lost at shutdown")
            return
        with self._flush_lock:
            try:
                self._ship()
            except Exception:
                log.exception("could not hand the last tracking hits to the writer process")
            if self._child is not None:
                self._child.close()
                self._child = None
        if self._hits:  # the writer process could not take them: write them from here
            self.writer = "thread"
            try:
                self.flush()
            except Exception:
                log.exception("tracking hits lost at shutdown")

    def _run(self) -> None:
        shipping = self.writer == "process"
        interval = min(SHIP_SECONDS, self.rules.flush_seconds) if shipping else None
        while not self._stop.wait(interval or self.rules.flush_seconds):
            try:
                if shipping:
                    with self._flush_lock:
                        self._ship()
                else:
                    self.flush()
            except Exception:  # keep accepting hits; the next round retries the buffer
                log.exception("could not write tracking hits")
                self._stop.wait(1.0)

    def flush(self) -> int:
        """Write the buffered hits now; returns how many events were written (in process
        mode: by the writer process, of everything it was handed so far)."""
        if self.writer == "process":
            with self._flush_lock:
                self._ship()
                if self._child is None:
                    return 0
                return self._child.flush()
        with self._flush_lock:
            with self._lock:
                hits, self._hits = self._hits, []
            if not hits:
                return 0
            start = written = 0
            try:
                for start in range(0, len(hits), CHUNK):
                    written += self._write(hits[start : start + CHUNK])
                return written
            except Exception:
                self._requeue(hits[start:])
                raise

    def _requeue(self, hits: list[Hit]) -> None:
        with self._lock:
            self._hits[:0] = hits
            if len(self._hits) > MAX_BUFFERED:
                dropped = len(self._hits) - MAX_BUFFERED
                del self._hits[:dropped]
                log.error("tracking buffer full: %d hits dropped", dropped)

    def _ship(self) -> None:
        """Hand the buffer to the writer process (started, or started anew, as needed).
        Called with ``_flush_lock`` held."""
        with self._lock:
            hits, self._hits = self._hits, []
        if not hits:
            return
        try:
            if self._child is not None and not self._child.alive():
                log.error(
                    "the tracking writer process exited (%s): the hits it held are lost",
                    self._child.process.returncode,
                )
                self._child.kill()  # closes the pipes
                self._child = None
            if self._child is None:
                self._child = _WriterProcess(self.settings)
            self._child.send(("hits", [tuple(hit) for hit in hits]))
        except Exception:
            # Not received (a frame is used whole or not at all): a new process gets them.
            self._requeue(hits)
            if self._child is not None:
                self._child.kill()
                self._child = None
            raise

    def _write(self, hits: Sequence[Hit]) -> int:
        """Write one chunk in one transaction; returns the events written."""
        engine = get_engine(self.settings)
        store: _Store = _Postgres() if engine.dialect.name == "postgresql" else _Sqlite()
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                written = self._write_with(store, cursor, hits)
            finally:
                cursor.close()
            connection.commit()
            return written
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # a broken connection: the pool replaces it
                log.debug("rollback failed", exc_info=True)
            raise
        finally:
            connection.close()

    def _write_with(self, store: _Store, cursor: Any, hits: Sequence[Hit]) -> int:
        targets = store.targets(cursor, sorted({hit.message_id for hit in hits}))
        hits = [hit for hit in hits if hit.message_id in targets]
        if not hits:
            return 0
        activity = self._activity(store, cursor, hits)
        rows: list[tuple[Any, ...]] = []
        traps: dict[int, datetime] = {}  # message -> its earliest hidden-link hit
        bursts: dict[int, datetime] = {}  # message -> its earliest click in a burst
        secret, mode, rules = self.settings.secret_key, self.rules.ip_mode, self.rules
        nothing = Activity()
        for hit in hits:
            target = targets[hit.message_id]
            at = _when(hit.at)
            seen = activity.get(hit.message_id, nothing)
            data: dict[str, Any] = {
                "ua": hit.user_agent[:_MAX_AGENT],
                "ip": private_ip(hit.ip, mode, secret),
            }
            if hit.method != "GET":
                data["method"] = hit.method[:8]
            if hit.kind == CLICK:
                kind = _CLICKED
                reasons = classify_click(
                    at=at,
                    method=hit.method,
                    user_agent=hit.user_agent,
                    link=hit.link,
                    sent_at=target.sent_at,
                    activity=seen,
                    rules=rules,
                )
                data["link"] = hit.link
                data["url"] = hit.url
                if "burst" in reasons:
                    bursts[hit.message_id] = min(at, bursts.get(hit.message_id, at))
            elif hit.kind == TRAP:
                kind, reasons = _SCANNED, ["trap"]
                traps[hit.message_id] = min(at, traps.get(hit.message_id, at))
            else:
                kind = _OPENED
                reasons = classify_open(
                    at=at,
                    method=hit.method,
                    user_agent=hit.user_agent,
                    ip=hit.ip,
                    sent_at=target.sent_at,
                    activity=seen,
                    rules=rules,
                )
                proxy = proxy_of(hit.user_agent)
                if proxy:
                    data["proxy"] = proxy
                if hit.kind == WEB:
                    data["web"] = True
            if reasons:
                data["reasons"] = reasons
            rows.append(
                (
                    target.account_id,
                    kind,
                    hit.message_id,
                    target.contact_id,
                    target.campaign_id,
                    at,
                    bool(reasons),
                    data,
                )
            )
        store.insert(cursor, rows)
        for flagged, seconds in ((traps, rules.trap_window_seconds), (bursts, rules.burst_seconds)):
            if flagged:  # a trap or a burst also unmasks the message's earlier activity
                since = min(flagged.values()) - timedelta(seconds=seconds)
                store.mark_earlier(cursor, sorted(flagged), since)
        return len(rows)

    def _activity(self, store: _Store, cursor: Any, hits: Sequence[Hit]) -> dict[int, Activity]:
        """Clicks and hidden-link hits of the clicked messages: this batch and stored ones."""
        clicked = sorted({hit.message_id for hit in hits if hit.kind in (CLICK, TRAP)})
        activity: dict[int, Activity] = {}
        if not clicked:
            return activity
        first = _when(min(hit.at for hit in hits))
        stored = store.activity(
            cursor,
            clicked,
            clicks_since=first - timedelta(seconds=self.rules.burst_seconds),
            traps_since=first - timedelta(seconds=self.rules.trap_window_seconds),
        )
        for message_id, kind, occurred_at, link in stored:
            seen = activity.setdefault(message_id, Activity())
            if kind == _SCANNED:
                seen.traps.append(occurred_at)
            elif link is not None and link == int(link):  # a link index (an integer)
                seen.clicks.append((occurred_at, int(link)))
        for hit in hits:
            if hit.kind == TRAP:
                activity.setdefault(hit.message_id, Activity()).traps.append(_when(hit.at))
            elif hit.kind == CLICK:
                activity.setdefault(hit.message_id, Activity()).clicks.append(
                    (_when(hit.at), hit.link)
                )
        return activity


# -- the writer process ------------------------------------------------------------------

SHIP_SECONDS = 0.05
"""How often an HTTP process hands its hits to its writer process (what a crash of the
HTTP process can lose)."""
FLUSH_TIMEOUT = 120.0
CLOSE_TIMEOUT = 60.0
_HEADER = struct.Struct("!I")
_ROOT = str(Path(__file__).resolve().parents[2])  # where the ``mailer`` package is


def _write_frame(fd: int, message: Any) -> None:
    data = marshal.dumps(message)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


class _FrameReader:
    """Length-prefixed marshal frames from a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._data = bytearray()

    def read(self, timeout: float | None = None) -> Any:
        """The next frame; None at the end of the stream (or after *timeout* seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._data) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._data)
                end = _HEADER.size + size
                if len(self._data) >= end:
                    # Written by our own HTTP process, through a pipe only it holds.
                    frame = marshal.loads(bytes(self._data[_HEADER.size : end]))  # noqa: S302
                    del self._data[:end]
                    return frame
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    return None
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self._data += chunk


class _WriterProcess:
    """The writer process of one HTTP process and the pipes to it: hits and flush requests
    go in (stdin), answers to flush requests come out (stdout)."""

    def __init__(self, settings: Settings) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailer.tracking.ingest"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Out of the HTTP process's group: a Ctrl-C or a signal to the group reaches
            # the HTTP process, which stops its writer in order (or dies: end of input).
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._answers = _FrameReader(self.process.stdout.fileno())
        self._sequence = 0
        self.send(
            (
                "config",
                {
                    "database_url": settings.effective_database_url,
                    "secret_key": settings.secret_key,
                    "tracking": settings.tracking.model_dump(mode="json"),
                },
            )
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: Any) -> None:
        _write_frame(self._in, message)

    def flush(self) -> int:
        """Have the process write what it holds now; how many events it wrote."""
        self._sequence += 1
        self.send(("flush", self._sequence))
        while True:
            answer = self._answers.read(FLUSH_TIMEOUT)
            if answer is None:
                raise RuntimeError("the tracking writer process did not answer")
            if answer[1] != self._sequence:
                continue  # the answer to an earlier request that timed out
            if answer[0] == "failed":
                raise RuntimeError(f"the tracking writer process could not write: {answer[2]}")
            return int(answer[2])

    def close(self) -> None:
        """Let the process write everything it holds and end; wait for it."""
        with contextlib.suppress(OSError):  # already gone
            self.send(("stop",))
        self._close_pipes()
        try:
            code = self.process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("the tracking writer process did not finish: killed, its hits are lost")
            self.kill()
            return
        if code:
            log.error("the tracking writer process ended with code %s", code)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


def _writer_main() -> int:
    """``python -m mailer.tracking.ingest``: the writer process.  Reads hits from stdin,
    writes them every ``flush_seconds`` and when asked, and at the end of its input (its
    HTTP process stopped, or died) writes what is left and ends.  Signals are for the HTTP
    process: a Ctrl-C or a SIGTERM to the process group must not lose what is buffered."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, not into the answers
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s tracking writer: %(message)s"
    )
    frames = _FrameReader(0)
    first = frames.read()
    if not first or first[0] != "config":
        return 2
    config = first[1]
    settings = Settings.model_construct(
        database_url=config["database_url"],
        secret_key=config["secret_key"],
        tracking=TrackingSettings.model_validate(config["tracking"]),
    )
    buffer = HitBuffer(settings, writer="thread")
    while True:
        frame = frames.read()
        if frame is None or frame[0] == "stop":
            break
        if frame[0] == "hits":
            buffer.add_many([Hit(*hit) for hit in frame[1]])
        elif frame[0] == "flush":
            try:
                answer: tuple[Any, ...] = ("flushed", frame[1], buffer.flush())
            except Exception as exc:
                log.exception("could not write tracking hits")
                answer = ("failed", frame[1], f"{type(exc).__name__}: {exc}")
            _write_frame(answers, answer)
    buffer.stop()
    dispose_engines()
    return 0


if __name__ == "__main__":
    sys.exit(_writer_main())
