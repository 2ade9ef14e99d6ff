"""`ferryman ledger check`: every money figure finance sees, recomputed from the records, to the micro-dollar.

The records are the truth (billing.rules: a budget's spend for a period is the sum of that period's records). For
every tenant and every day and month with records, or with a budget counter, this compares with them: the budget
counters (spent, and on the SQL ledger what open holds reserve), the budgets `/v1/usage` and `tenants budgets` show,
the report `/v1/usage` shows the tenant, the `/admin` report, and its CSV (both the micro-USD and the dollar
column). Each figure is made by the function its screen calls. Any difference is one line of the answer.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from billing import rules
from billing.ledger import records_spend
from billing.models import budget_spend, budgets, reservations, tenants, usage_records
from billing.reports import to_csv, totals


def differences(billing) -> list[str]:
    """Every figure that disagrees with the records, one line each; [] when the ledger reconciles."""
    truth = _record_costs(billing)
    return _counters(billing) + _budgets_shown(billing) + _reports(billing, truth)


def _record_costs(billing) -> dict[tuple[int, str], int]:
    """(tenant id, period) -> the cost of its records, for every day and every month with a record."""
    u = usage_records.c
    with billing.engine.connect() as conn:
        rows = conn.execute(select(u.tenant_id, u.day, func.sum(u.cost_micros)).group_by(u.tenant_id, u.day)).all()
    costs: dict[tuple[int, str], int] = defaultdict(int)
    for tenant_id, day, cost in rows:
        costs[tenant_id, day] += int(cost)
        costs[tenant_id, day[:7]] += int(cost)
    return costs


def _counters(billing) -> list[str]:
    """Each budget period's counter row against its records, and (SQL ledger) its reserve against its open holds.
    Rows of a kind of period the budget no longer counts (daily rows of a budget made monthly) are its history,
    frozen when it changed: not compared."""
    s, r = budget_spend.c, reservations.c
    held = (select(func.coalesce(func.sum(r.amount_micros), 0))
            .where((r.tenant_spend_id == s.id) | (r.key_spend_id == s.id)).scalar_subquery())
    out = []
    with billing.engine.connect() as conn:
        rows = conn.execute(select(s.budget_id, s.period_key, s.spent_micros, s.reserved_micros, held, budgets.c.period)
                            .join(budgets, budgets.c.id == s.budget_id)).all()
        for budget_id, key, spent, reserved, holds, period in rows:
            if len(key) != len(rules.period_key(period, datetime(2000, 1, 1))):
                continue
            recorded = conn.execute(select(records_spend(budget_id, *rules.period_days(key)))).scalar_one()
            if spent != recorded:
                out.append(f"budget {budget_id} {key}: counter spent {spent} µ$, its records {recorded} µ$")
            if not billing.holds_in_redis and reserved != holds:
                out.append(f"budget {budget_id} {key}: counter reserved {reserved} µ$, its open holds {holds} µ$")
    return out


def _budgets_shown(billing) -> list[str]:
    """What `/v1/usage`, `tenants budgets` and the admin page say each budget has spent this period."""
    out = []
    with billing.engine.connect() as conn:
        for b in billing.list_budgets():
            first, last = rules.period_days(b["period_key"])
            recorded = conn.execute(select(records_spend(b["id"], first, last))).scalar_one()
            if b["spent_micros"] != recorded:
                out.append(f"budget {b['id']} as shown for {b['period_key']}: spent {b['spent_micros']} µ$, "
                           f"its records {recorded} µ$")
    return out


def _reports(billing, truth: dict[tuple[int, str], int]) -> list[str]:
    """The admin report, its CSV and each tenant's own report, summed per tenant and period, against the records."""
    admin = billing.report(("tenant", "model", "day"))
    views = {"/admin report": _by_period(admin, lambda row: row["cost_micros"]),
             "/admin CSV (cost_micros)": _by_period(_csv(admin), lambda row: int(row["cost_micros"])),
             "/admin CSV (cost_usd)": _by_period(_csv(admin), lambda row: int(Decimal(row["cost_usd"]) * 1_000_000))}
    own: dict[tuple[int, str], int] = defaultdict(int)
    with billing.engine.connect() as conn:
        tenant_ids = conn.execute(select(tenants.c.id)).scalars().all()
    out = []
    for tenant_id in tenant_ids:
        rows = billing.report(("model", "day"), tenant_id=tenant_id)
        for (_, period), cost in _by_period([{**r, "tenant_id": tenant_id} for r in rows],
                                            lambda row: row["cost_micros"]).items():
            own[tenant_id, period] = cost
        recorded = sum(cost for (t, period), cost in truth.items() if t == tenant_id and len(period) == 7)
        if totals(rows)["cost_micros"] != recorded:
            out.append(f"tenant {tenant_id}: /v1/usage total {totals(rows)['cost_micros']} µ$, records {recorded} µ$")
    views["/v1/usage report"] = own
    for name, view in views.items():
        for tenant_id, period in sorted(set(view) | set(truth)):
            shown, recorded = view.get((tenant_id, period), 0), truth.get((tenant_id, period), 0)
            if shown != recorded:
                out.append(f"tenant {tenant_id} {period}: {name} {shown} µ$, records {recorded} µ$")
    return out


def _by_period(rows, cost) -> dict[tuple[int, str], int]:
    sums: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        tenant_id, day = int(row["tenant_id"]), row["day"]
        sums[tenant_id, day] += cost(row)
        sums[tenant_id, day[:7]] += cost(row)
    return sums


def _csv(rows: list[dict]) -> list[dict]:
    return list(csv.DictReader(io.StringIO(to_csv(rows))))
