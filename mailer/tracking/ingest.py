"""Buffered ingest of tracking hits: the endpoints only append to a buffer in memory; a
thread writes the buffer every ``tracking.flush_seconds`` (and on shutdown) as events.

Per flush: one SELECT resolves the messages (account, campaign, contact, send time; hits
of unknown messages are dropped), one SELECT reads the recent clicks and hidden-link hits
of the messages clicked (so bursts and traps are seen across flushes and processes), one
executemany inserts the events, and, only when a trap or a burst is found, one UPDATE
marks the message's earlier opens and clicks in the window as machine.

Raw IP addresses stay in memory: the event keeps a truncated or keyed-hash form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session, col

from mailer.core.config import Settings, TrackingSettings
from mailer.events.models import Event, EventKind
from mailer.messages.models import Message
from mailer.storage.db import session_scope
from mailer.tracking.classify import Activity, classify_click, classify_open, proxy_of

log = logging.getLogger(__name__)

OPEN = "open"
CLICK = "click"
TRAP = "trap"
WEB = "web"

MAX_BUFFERED = 500_000
"""Hits kept while the database is unreachable; beyond this the oldest are dropped."""
CHUNK = 5000
EVENTS = Event.__table__  # type: ignore[attr-defined]
_MAX_AGENT = 400


@dataclass(frozen=True, slots=True)
class Hit:
    """One request on a tracking URL, as the endpoint saw it."""

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


@dataclass(frozen=True, slots=True)
class _Target:
    account_id: int
    campaign_id: int | None
    contact_id: int | None
    sent_at: datetime | None


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class HitBuffer:
    """Hits waiting to be written.  ``add`` is all an endpoint does (no I/O)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules: TrackingSettings = settings.tracking
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)
        if self._thread is None:
            self.start()

    def pending(self) -> int:
        return len(self._hits)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="tracking-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is left (on shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            log.exception("tracking hits lost at shutdown")

    def _run(self) -> None:
        while not self._stop.wait(self.rules.flush_seconds):
            try:
                self.flush()
            except Exception:  # keep accepting hits; the next flush retries the buffer
                log.exception("could not write tracking hits")

    def flush(self) -> int:
        """Write the buffered hits; returns how many events were written."""
        with self._flush_lock:
            with self._lock:
                hits, self._hits = self._hits, []
            if not hits:
                return 0
            start = written = 0
            try:
                for start in range(0, len(hits), CHUNK):
                    with session_scope(self.settings) as session:
                        written += self._write(session, hits[start : start + CHUNK])
                return written
            except Exception:
                with self._lock:
                    self._hits[:0] = hits[start:]
                    if len(self._hits) > MAX_BUFFERED:
                        dropped = len(self._hits) - MAX_BUFFERED
                        del self._hits[:dropped]
                        log.error("tracking buffer full: %d hits dropped", dropped)
                raise

    def _write(self, session: Session, hits: Sequence[Hit]) -> int:
        targets = _targets(session, {hit.message_id for hit in hits})
        hits = [hit for hit in hits if hit.message_id in targets]
        if not hits:
            return 0
        activity = self._activity(session, hits)
        rows: list[dict[str, Any]] = []
        traps: dict[int, datetime] = {}  # message -> its earliest hidden-link hit
        bursts: dict[int, datetime] = {}  # message -> its earliest click in a burst
        secret, mode = self.settings.secret_key, self.rules.ip_mode
        for hit in hits:
            target = targets[hit.message_id]
            at = _when(hit.at)
            seen = activity.get(hit.message_id) or Activity()
            data: dict[str, Any] = {
                "ua": hit.user_agent[:_MAX_AGENT],
                "ip": private_ip(hit.ip, mode, secret),
            }
            if hit.method != "GET":
                data["method"] = hit.method[:8]
            if hit.kind == CLICK:
                kind = EventKind.CLICKED
                reasons = classify_click(
                    at=at,
                    method=hit.method,
                    user_agent=hit.user_agent,
                    link=hit.link,
                    sent_at=target.sent_at,
                    activity=seen,
                    rules=self.rules,
                )
                data.update(link=hit.link, url=hit.url)
                if "burst" in reasons:
                    bursts[hit.message_id] = min(at, bursts.get(hit.message_id, at))
            elif hit.kind == TRAP:
                kind, reasons = EventKind.SCANNED, ["trap"]
                traps[hit.message_id] = min(at, traps.get(hit.message_id, at))
            else:
                kind = EventKind.OPENED
                reasons = classify_open(
                    at=at,
                    method=hit.method,
                    user_agent=hit.user_agent,
                    ip=hit.ip,
                    sent_at=target.sent_at,
                    activity=seen,
                    rules=self.rules,
                )
                proxy = proxy_of(hit.user_agent)
                if proxy:
                    data["proxy"] = proxy
                if hit.kind == WEB:
                    data["web"] = True
            if reasons:
                data["reasons"] = reasons
            rows.append(
                {
                    "account_id": target.account_id,
                    "kind": kind.value,
                    "message_id": hit.message_id,
                    "contact_id": target.contact_id,
                    "campaign_id": target.campaign_id,
                    "occurred_at": at,
                    "machine": bool(reasons),
                    "data": data,
                }
            )
        session.execute(insert(EVENTS), rows)  # Core executemany: no ORM bookkeeping
        _mark_earlier(session, traps, self.rules.trap_window_seconds)
        _mark_earlier(session, bursts, self.rules.burst_seconds)
        return len(rows)

    def _activity(self, session: Session, hits: Sequence[Hit]) -> dict[int, Activity]:
        """Clicks and hidden-link hits of the clicked messages: this batch and stored ones."""
        clicked = {hit.message_id for hit in hits if hit.kind in (CLICK, TRAP)}
        activity: dict[int, Activity] = {}
        if not clicked:
            return activity
        reach = timedelta(seconds=max(self.rules.trap_window_seconds, self.rules.burst_seconds))
        since = _when(min(hit.at for hit in hits)) - reach
        stored = session.execute(
            select(
                col(Event.message_id), col(Event.kind), col(Event.occurred_at), col(Event.data)
            ).where(
                col(Event.message_id).in_(sorted(clicked)),
                col(Event.kind).in_([EventKind.CLICKED.value, EventKind.SCANNED.value]),
                col(Event.occurred_at) >= since,
            )
        ).all()
        for message_id, kind, occurred_at, data in stored:
            seen = activity.setdefault(message_id, Activity())
            if kind == EventKind.SCANNED:
                seen.traps.append(occurred_at)
            elif isinstance(data, dict) and isinstance(data.get("link"), int):
                seen.clicks.append((occurred_at, data["link"]))
        for hit in hits:
            if hit.message_id not in clicked:
                continue
            seen = activity.setdefault(hit.message_id, Activity())
            if hit.kind == TRAP:
                seen.traps.append(_when(hit.at))
            elif hit.kind == CLICK:
                seen.clicks.append((_when(hit.at), hit.link))
        return activity


def _mark_earlier(session: Session, flagged: dict[int, datetime], seconds: float) -> None:
    """A trap or a burst also unmasks the message's opens and clicks stored just before."""
    if not flagged:
        return
    session.execute(
        update(Event)
        .where(
            col(Event.message_id).in_(sorted(flagged)),
            col(Event.kind).in_([EventKind.OPENED.value, EventKind.CLICKED.value]),
            col(Event.occurred_at) >= min(flagged.values()) - timedelta(seconds=seconds),
            col(Event.machine).is_(False),
        )
        .values(machine=True)
        .execution_options(synchronize_session=False)
    )


def _targets(session: Session, message_ids: set[int]) -> dict[int, _Target]:
    rows = session.execute(
        select(
            col(Message.id),
            col(Message.account_id),
            col(Message.campaign_id),
            col(Message.contact_id),
            col(Message.sent_at),
        ).where(col(Message.id).in_(sorted(message_ids)))
    ).all()
    return {row[0]: _Target(row[1], row[2], row[3], row[4]) for row in rows}
