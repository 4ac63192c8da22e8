"""SMS on the ledger and the credit ledger: parts and their provider ids, receipts that
came early, replies; allowances as movements and balances; SMS campaigns (a channel, no
template), the account's sender id and keywords, a message's parts, payload and origin.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mailer.storage.types  # noqa: F401 (UtcDateTime and JSON columns)

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sms_pending_receipts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('provider_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('alt_ids', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('received_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sms_pending_receipts', schema=None) as batch_op:
        batch_op.create_index('ix_sms_pending_provider', ['gateway', 'provider_id'], unique=False)

    op.create_table('credit_balances',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('available', sa.BigInteger(), nullable=False),
    sa.Column('held', sa.BigInteger(), nullable=False),
    sa.Column('valid_until', mailer.storage.types.UtcDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name='fk_credit_balances_account_id'),
    sa.PrimaryKeyConstraint('account_id', 'channel')
    )
    op.create_table('credit_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('available_after', sa.BigInteger(), nullable=False),
    sa.Column('held_after', sa.BigInteger(), nullable=False),
    sa.Column('ref', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('counterpart_id', sa.Integer(), nullable=True),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('valid_until', mailer.storage.types.UtcDateTime(timezone=True), nullable=True),
    sa.Column('created_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name='fk_credit_entries_account_id'),
    sa.ForeignKeyConstraint(['counterpart_id'], ['accounts.id'], name='fk_credit_entries_counterpart_id'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('credit_entries', schema=None) as batch_op:
        batch_op.create_index('ix_credit_entries_account_channel', ['account_id', 'channel', 'id'], unique=False)

    op.create_table('sms_inbound',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=True),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('keyword', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('received_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name='fk_sms_inbound_account_id'),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name='fk_sms_inbound_campaign_id'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name='fk_sms_inbound_contact_id'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name='fk_sms_inbound_message_id'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sms_inbound', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_inbound_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_contact_id'), ['contact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_inbound_received_at'), ['received_at'], unique=False)

    op.create_table('sms_parts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('part', sa.Integer(), nullable=False),
    sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('provider_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('updated_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name='fk_sms_parts_message_id'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('sms_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_parts_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_sms_parts_provider', ['gateway', 'provider_id'], unique=False)

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sms_sender', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='', nullable=False))
        batch_op.add_column(sa.Column('sms_keywords', mailer.storage.types.JsonDict, nullable=True))

    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=8), server_default='email', nullable=False))
        batch_op.alter_column('template_id',
               existing_type=sa.INTEGER(),
               nullable=True)

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('payload', mailer.storage.types.JsonDict, nullable=True))
        batch_op.add_column(sa.Column('origin', sqlmodel.sql.sqltypes.AutoString(length=200), server_default='', nullable=False))
        batch_op.add_column(sa.Column('final_at', mailer.storage.types.UtcDateTime(timezone=True), nullable=True))

    # ### end Alembic commands ###


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("final_at")
        batch_op.drop_column("origin")
        batch_op.drop_column("payload")
        batch_op.drop_column("parts")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.alter_column("template_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("channel")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("sms_keywords")
        batch_op.drop_column("sms_sender")
    op.drop_table("sms_parts")
    op.drop_table("sms_inbound")
    op.drop_table("credit_entries")
    op.drop_table("credit_balances")
    op.drop_table("sms_pending_receipts")
