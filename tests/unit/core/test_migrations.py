"""The migrations create exactly the tables the models declare (no drift)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mailer.core.config import Settings
from mailer.storage.db import get_engine, load_models


def test_models_and_migrations_agree(settings: Settings) -> None:
    metadata = load_models().metadata
    with get_engine(settings).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == []


def test_migrations_go_down_and_up_again(settings: Settings) -> None:
    from alembic import command

    from mailer.storage.migrate import alembic_config, current_revision, upgrade

    command.downgrade(alembic_config(settings), "base")
    assert current_revision(settings) is None
    upgrade(settings)
    assert current_revision(settings) == "0013"
