"""Alembic migrations, run programmatically (``mailer db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from mailer.core.config import Settings, get_settings
from mailer.storage.db import normalise_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    settings = settings or get_settings()
    config.attributes["settings"] = settings  # for migrations that need secret_key
    url = normalise_url(settings.effective_database_url)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    settings = settings or get_settings()
    if settings.effective_database_url.startswith("sqlite:///"):
        Path(settings.effective_database_url[len("sqlite:///") :]).parent.mkdir(
            parents=True, exist_ok=True
        )
    command.upgrade(alembic_config(settings), revision)


def current_revision(settings: Settings | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from mailer.storage.db import get_engine

    with get_engine(settings).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
