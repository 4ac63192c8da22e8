"""tracking: machine flag and time index on events, permanent per-campaign counters

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 10:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mailer.storage.types  # noqa: F401 (UtcDateTime columns)

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('campaign_counters',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('metric', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('link', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('updated_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('campaign_id', 'metric', 'link', name='pk_campaign_counters')
    )
    with op.batch_alter_table('campaign_counters', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_counters_account_id', ['account_id'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('machine', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index('ix_events_occurred_at', ['occurred_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_occurred_at')
        batch_op.drop_column('machine')

    with op.batch_alter_table('campaign_counters', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_counters_account_id')

    op.drop_table('campaign_counters')
