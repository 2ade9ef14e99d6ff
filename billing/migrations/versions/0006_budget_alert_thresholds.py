"""several alert thresholds per budget (e.g. 50, 80 and 100% of its limit), each alerted once per period

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 02:40:00

- budgets.alert_percent (one threshold) -> budgets.alert_percents (a JSON list, ascending);
- budget_spend.alerted (a flag) -> budget_spend.alerted_percent (the highest threshold alerted in that period, 0:
  none; spend only grows within a period, so thresholds are crossed in order);
- budget_alerts gets the threshold it is for (alert_percent) and is unique per budget, period and threshold.

`budgets` and `budget_spend` change by plain ADD / DROP COLUMN (SQLite >= 3.35 drops a column in place): rebuilding
`budgets` on SQLite would drop it, and its ON DELETE CASCADE would empty budget_spend and budget_alerts.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _json_list(column: str) -> str:
    return f"json_build_array({column})" if op.get_bind().dialect.name == "postgresql" else f"json_array({column})"


def upgrade() -> None:
    op.add_column('budgets', sa.Column('alert_percents', sa.JSON(), server_default='[80]', nullable=False))
    op.execute(f"update budgets set alert_percents = {_json_list('alert_percent')}")
    op.add_column('budget_spend', sa.Column('alerted_percent', sa.Integer(), server_default='0', nullable=False))
    op.execute("update budget_spend set alerted_percent = (select alert_percent from budgets "
               "where budgets.id = budget_spend.budget_id) where alerted")
    op.add_column('budget_alerts', sa.Column('alert_percent', sa.Integer(), server_default='0', nullable=False))
    op.execute("update budget_alerts set alert_percent = (select alert_percent from budgets "
               "where budgets.id = budget_alerts.budget_id)")
    op.drop_column('budget_spend', 'alerted')
    op.drop_column('budgets', 'alert_percent')
    # nothing points at budget_alerts: SQLite may rebuild it to change its unique key
    with op.batch_alter_table('budget_alerts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_budget_alerts_period', type_='unique')
        batch_op.create_unique_constraint('uq_budget_alerts_period', ['budget_id', 'period_key', 'alert_percent'])
        batch_op.alter_column('alert_percent', server_default=None)


def downgrade() -> None:
    first = ("coalesce((alert_percents->>0)::int, 80)" if op.get_bind().dialect.name == "postgresql"
             else "coalesce(json_extract(alert_percents, '$[0]'), 80)")
    op.add_column('budgets', sa.Column('alert_percent', sa.Integer(), server_default='80', nullable=False))
    op.execute(f"update budgets set alert_percent = {first}")
    op.add_column('budget_spend', sa.Column('alerted', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute("update budget_spend set alerted = (alerted_percent > 0)")
    # one alert per budget and period again: keep each period's first
    op.execute("delete from budget_alerts where id not in (select min(id) from budget_alerts "
               "group by budget_id, period_key)")
    with op.batch_alter_table('budget_alerts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_budget_alerts_period', type_='unique')
        batch_op.create_unique_constraint('uq_budget_alerts_period', ['budget_id', 'period_key'])
        batch_op.drop_column('alert_percent')
    op.drop_column('budget_spend', 'alerted_percent')
    op.drop_column('budgets', 'alert_percents')
