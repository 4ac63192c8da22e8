"""Webhook signing secrets sealed at rest: the secret and the previous secret of every
subscription are encrypted (mailer.core.sealing, purpose "webhook secret") with the key the
application derives from its secret_key, and the columns widened for the sealed form.

The settings are those given to ``mailer.storage.migrate.upgrade`` (``mailer db upgrade``
reads mailer.toml and MAILER_* like the application); the same secret_key must then be used
by the application.  Needs a database connection: there is no offline (--sql) form.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
import sqlmodel
from alembic import context, op

from mailer.core.config import get_settings
from mailer.core.sealing import Sealer

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PURPOSE = "webhook secret"  # as mailer.webhooks.signing.SEALING_PURPOSE at this revision
CLEAR_PREFIX = "whsec_"  # a secret in clear; a sealed one is a Fernet token ("gAAAAA...")
NARROW = sqlmodel.sql.sqltypes.AutoString(length=100)
WIDE = sqlmodel.sql.sqltypes.AutoString(length=300)

subscriptions = sa.table(
    "webhook_subscriptions",
    sa.column("id", sa.Integer),
    sa.column("secret", sa.String),
    sa.column("previous_secret", sa.String),
)


def _sealer() -> Sealer:

    if context.is_offline_mode():
        raise RuntimeError("revision 0013 encrypts stored secrets: run it against a database")
    settings = context.config.attributes.get("settings") or get_settings()
    return Sealer.from_settings(PURPOSE, settings)


def _convert(change: Callable[[str], str], keep: Callable[[str], bool]) -> None:
    """Rewrite each secret column value for which ``keep(value)`` is false with ``change``."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(subscriptions.c.id, subscriptions.c.secret, subscriptions.c.previous_secret)
    ).all()
    for row_id, secret, previous in rows:
        values = {}
        if secret and not keep(secret):
            values["secret"] = change(secret)
        if previous and not keep(previous):
            values["previous_secret"] = change(previous)
        if values:
            connection.execute(
                subscriptions.update().where(subscriptions.c.id == row_id).values(**values)
            )


def _alter(type_: sa.types.TypeEngine[str], existing_type: sa.types.TypeEngine[str]) -> None:
    with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
        batch_op.alter_column("secret", type_=type_, existing_type=existing_type, existing_nullable=False)
        batch_op.alter_column("previous_secret", type_=type_, existing_type=existing_type, existing_nullable=True)


@contextmanager
def _foreign_keys_off_on_sqlite() -> Iterator[None]:
    """SQLite rebuilds the table to alter it (copy, drop, rename); with foreign keys
    enforced, the drop fails while deliveries point at it, and deferring them is not
    enough.  So, as SQLite's procedure for altering a table says, they are off meanwhile
    (set before the first write: the pragma is ignored inside a transaction, and Alembic
    starts a migration outside one) and checked afterwards."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
    yield
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"rows point at missing rows after the rebuild: {broken}")
    # Ignored if a transaction is open; the migrations' connection is not reused anyway.
    connection.exec_driver_sql("PRAGMA foreign_keys = ON")


def upgrade() -> None:
    sealer = _sealer()
    with _foreign_keys_off_on_sqlite():
        _alter(WIDE, NARROW)
        _convert(sealer.seal, lambda value: not value.startswith(CLEAR_PREFIX))


def downgrade() -> None:
    sealer = _sealer()
    with _foreign_keys_off_on_sqlite():
        _convert(sealer.unseal, lambda value: value.startswith(CLEAR_PREFIX))
        _alter(NARROW, WIDE)
