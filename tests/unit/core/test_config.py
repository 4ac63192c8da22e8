from __future__ import annotations

from pathlib import Path

import pytest

from mailer.core.config import PLACEHOLDER_SECRET, Settings
from mailer.core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAILER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MAILER_CONFIG", str(tmp_path / "mailer.toml"))


def test_defaults_work_embedded() -> None:
    settings = Settings()
    assert settings.effective_database_url == "sqlite:///var/mailer.db"
    assert settings.broker_url == ""
    assert settings.relay.port == settings.capture.port == 2525
    assert settings.timezone == "America/Lima"
    assert settings.effective_cookie_secure is False


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_RELAY__HOST", "smtp.example.pe")
    monkeypatch.setenv("MAILER_RELAY__PORT", "587")
    monkeypatch.setenv("MAILER_BASE_URL", "https://envios.example.pe")
    settings = Settings()
    assert (settings.relay.host, settings.relay.port) == ("smtp.example.pe", 587)
    assert settings.effective_cookie_secure is True


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "mailer.toml").write_text(
        'batch_size = 123\n[relay]\nhost = "relay.local"\nmax_connections = 9\n', encoding="utf-8"
    )
    monkeypatch.setenv("MAILER_BATCH_SIZE", "50")
    settings = Settings()
    assert settings.batch_size == 50
    assert settings.relay.host == "relay.local"
    assert settings.relay.max_connections == 9


def test_production_refuses_placeholder_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_ENVIRONMENT", "production")
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEY"):
        Settings()
    monkeypatch.setenv("MAILER_SECRET_KEY", "s" * 40)
    assert Settings().secret_key != PLACEHOLDER_SECRET


def test_postgres_url_uses_psycopg3() -> None:
    from mailer.storage.db import normalise_url

    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
