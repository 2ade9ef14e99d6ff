"""internal tenants (reported apart from customers) and webhook delivery of budget alerts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 19:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch: SQLite would rebuild `tenants`, which other tables' foreign keys point at.
    op.add_column('tenants', sa.Column('internal', sa.Boolean(), server_default=sa.false(), nullable=False))
    # The labelling tenant `ferryman router label` made before this column existed is ours, not a customer.
    op.execute("update tenants set internal = true where name = 'ferryman-operator'")
    op.add_column('budget_alerts', sa.Column('claimed_until', sa.DateTime(), nullable=True))
    op.add_column('budget_alerts', sa.Column('sent_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('budget_alerts', schema=None) as batch_op:
        batch_op.drop_column('sent_at')
        batch_op.drop_column('claimed_until')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('internal')
