"""Shared fixtures: settings pointing at a fresh database (SQLite or PostgreSQL), the broker,
and real servers.  A test that needs a server that is absent is skipped locally and fails
under CI=true."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.core.config import Settings, get_settings
from mailer.storage.db import dispose_engines

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("MAILER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MAILER_TEST_REDIS", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("MAILER_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLOSED_DNS_PORT = free_port()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    name = f"mailer_test_{secrets.token_hex(4)}"
    admin = PG_ADMIN_URL
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    dispose_engines()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, **env: str
) -> Settings:
    values = {
        "MAILER_DATABASE_URL": database_url,
        "MAILER_DATA_DIR": str(tmp_path / "var"),
        "MAILER_SENDING_DOMAINS_DIR": str(tmp_path / "sending_domains"),
        "MAILER_TEMPLATES_DIR": str(REPO / "templates"),
        "MAILER_SECRET_KEY": "test-secret-" + "x" * 32,
        "MAILER_BROKER_URL": "",
        "MAILER_CONFIG": str(tmp_path / "absent.toml"),
        # Nothing leaves the machine: DNS goes to a closed local port and verdicts are
        # "unknown"; cleaning tests point it at their own unbound (and set their timeout).
        # An unconnected UDP socket is not told the port is closed, so a lookup waits for
        # its timeout: keep it short.
        "MAILER_DNS_SERVERS": f"127.0.0.1:{CLOSED_DNS_PORT}",
        "MAILER_DNS__TIMEOUT_SECONDS": "0.1",
        # Test receivers listen on 127.0.0.1, which the webhook target policy refuses by
        # default; tests of the policy itself set this back to "".
        "MAILER_WEBHOOKS__ALLOWED_NETWORKS": "127.0.0.0/8",
        **env,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    dispose_engines()
    return get_settings()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[object]:
    """Call ``configure(database_url, **env)`` to get migrated settings for this test."""

    def make(database_url: str | None = None, **env: str) -> Settings:
        from mailer.storage.migrate import upgrade
        from mailer.workers import configure_broker

        url = database_url or f"sqlite:///{tmp_path / 'mailer.db'}"
        settings = _configure(monkeypatch, tmp_path, url, **env)
        upgrade(settings)
        configure_broker(settings, force=True)
        return settings

    yield make
    dispose_engines()
    get_settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, configure: object) -> Settings:
    """Migrated settings on each database backend."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return configure(url)  # type: ignore[operator, no-any-return]


@pytest.fixture
def sqlite_settings(configure: object) -> Settings:
    return configure()  # type: ignore[operator, no-any-return]
