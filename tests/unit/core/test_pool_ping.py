"""Pooled PostgreSQL connections are tested when taken after a rest: a connection the
server dropped while it rested costs no request; a busy one is not pinged."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import event, text

from mailer.storage import db


def _backend_pid(engine: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_dropped_while_it_rested_is_replaced(
    configure: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(postgres_url)
    engine = db.get_engine(settings)
    first = _backend_pid(engine)
    other = db.make_engine(postgres_url, pooled=False)  # ends the pooled one's backend
    with other.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    other.dispose()
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.05)
    time.sleep(0.1)
    second = _backend_pid(engine)  # no error: the dead connection was tested and replaced
    assert second != first


def test_a_busy_connection_is_not_pinged(configure: Any, postgres_url: str) -> None:
    settings = configure(postgres_url)
    engine = db.get_engine(settings)
    _backend_pid(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(20):
        with engine.connect() as connection:
            connection.execute(text("SELECT 2"))
    assert statements == ["SELECT 2"] * 20  # no ping between them
