"""catalog and feedback: per-record route group, baseline, estimate flag, GPU time, feedback and opted-in
prompt; per-tenant model allow-list and prompt opt-in

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 18:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        batch_op.alter_column('baseline_cost_micros', existing_type=sa.BigInteger(), nullable=True)
        batch_op.add_column(sa.Column('estimated', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('route_group', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('gpu_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('prompt_text', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('feedback_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('feedback_comment', sa.Text(), nullable=True))
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_models', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('store_prompts', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('store_prompts')
        batch_op.drop_column('allowed_models')
    # Records without a baseline get their own cost back as one: savings stay 0 for them.
    op.execute("update usage_records set baseline_cost_micros = cost_micros where baseline_cost_micros is null")
    with op.batch_alter_table('usage_records', schema=None) as batch_op:
        for column in ('feedback_comment', 'feedback_score', 'prompt_text', 'gpu_seconds', 'route_group', 'estimated'):
            batch_op.drop_column(column)
        batch_op.alter_column('baseline_cost_micros', existing_type=sa.BigInteger(), nullable=False)
