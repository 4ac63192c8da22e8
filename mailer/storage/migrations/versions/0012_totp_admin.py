"""Two-factor login of portal users (TOTP): the encrypted secret, when it was enabled,
the last time step accepted and the hashes of the recovery codes.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mailer.storage.types  # noqa: F401 (UtcDateTime columns)

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_secret", sqlmodel.sql.sqltypes.AutoString(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("totp_enabled_at", mailer.storage.types.UtcDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("totp_recovery", sqlmodel.sql.sqltypes.AutoString(length=700), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("totp_recovery")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_enabled_at")
        batch_op.drop_column("totp_secret")
