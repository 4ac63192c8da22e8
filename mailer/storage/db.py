"""Engines and sessions.

One engine per database URL per process.  SQLite is opened in WAL mode with foreign keys
on and a busy timeout, so worker threads and the HTTP server can share it; PostgreSQL is
used through psycopg 3.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, insert, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, create_engine

from mailer.core.config import Settings, get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, *, pooled: bool = True) -> Engine:
    """An engine for *url*; ``pooled=False`` for one-off use (migrations)."""
    url = normalise_url(url)
    parsed = make_url(url)
    pool_args: dict[str, Any] = (
        {"pool_size": 10, "max_overflow": 20} if pooled else {"poolclass": NullPool}
    )
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool_args
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, **pool_args)
    if pooled:
        _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE = 1.0  # seconds a pooled connection rests before it is tested again


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection when it is taken, if it rested over PING_AFTER_IDLE
    seconds: a database restart or a dropped connection costs no request, and a busy
    process (its connections back in the pool for milliseconds) pays no round trip per
    request, which ``pool_pre_ping`` would charge (the "alive bypass window" of HikariCP)."""

    def connected(_dbapi_connection: Any, record: Any) -> None:
        record.info["rested_since"] = time.monotonic()

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["rested_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("rested_since")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's error for a dead connection
            raise DisconnectionError(str(exc)) from exc
        if not alive:
            raise DisconnectionError("the database connection did not answer a ping")

    event.listen(engine, "connect", connected)
    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checkout)


def get_engine(settings: Settings | None = None) -> Engine:
    url = normalise_url((settings or get_settings()).effective_database_url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(settings), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def next_ids(session: Session, table: Table, count: int) -> list[int] | None:
    """*count* ids for new rows of *table*, drawn from its sequence in one round trip on
    PostgreSQL (so a row that needs its own id in its content is inserted once, complete);
    None on SQLite, which assigns ids only on insert."""
    if count <= 0 or session.get_bind().dialect.name != "postgresql":
        return None
    return [
        int(value)
        for value in session.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"
            ),
            {"table": table.name, "n": count},
        ).scalars()
    ]


def attach_inserted(session: Session, rows: Sequence[SQLModel]) -> None:
    """Make *rows*, just inserted with Core statements (ids set), persistent in *session*
    as if loaded: later changes to them are flushed as UPDATEs, and nothing is read back."""
    for row in rows:
        make_transient_to_detached(row)
        session.add(row)


def insert_rows(session: Session, rows: Sequence[SQLModel]) -> None:
    """Insert *rows* (instances of one table model) with one Core ``INSERT ... RETURNING
    id`` instead of the unit of work (cheaper by far for a few rows on a hot path): rows
    without an id get theirs, rows with one keep it; then they are persistent in
    *session* (:func:`attach_inserted`)."""
    if not rows:
        return
    table = rows[0].__table__  # type: ignore[attr-defined]
    with_ids = getattr(rows[0], "id", None) is not None
    names = [c.name for c in table.columns if with_ids or c.name != "id"]
    ids = session.execute(
        insert(table).returning(table.c.id, sort_by_parameter_order=True),
        [{name: getattr(row, name) for name in names} for row in rows],
    ).scalars()
    for row, row_id in zip(rows, ids, strict=True):
        row.id = row_id  # type: ignore[attr-defined]
    attach_inserted(session, rows)


def load_models() -> type[SQLModel]:
    """Import every ``mailer.<package>.models`` module so SQLModel's metadata is complete."""
    import mailer

    for info in pkgutil.iter_modules(mailer.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"mailer.{info.name}.models")
            except ModuleNotFoundError as exc:
                if exc.name != f"mailer.{info.name}.models":
                    raise
    return SQLModel
