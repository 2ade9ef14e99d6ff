"""GPU-second prices: a per-model GPU-hour price, and each record's cost at the per-token and at the GPU price

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('prices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gpu_hour_micros', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_cost_micros', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('gpu_cost_micros', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.drop_column('gpu_cost_micros')
        batch_op.drop_column('token_cost_micros')
    with op.batch_alter_table('prices', schema=None) as batch_op:
        batch_op.drop_column('gpu_hour_micros')
