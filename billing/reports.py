"""Reports for finance: cost, tokens, requests and savings against each record's baseline (its route group's
strongest tier)."""
from __future__ import annotations

import csv
import io

from sqlalchemy import Engine, func, select

from billing.models import budget_spend, budgets, reservations, tenants, usage_records
from billing.pricing import usd

GROUPS = ("tenant", "model", "day", "route")
COLUMNS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_micros",
           "baseline_cost_micros", "savings_micros")


def usage_report(engine: Engine, group_by: tuple[str, ...] = ("tenant", "model", "day"), *,
                 since: str | None = None, until: str | None = None, tenant_id: int | None = None) -> list[dict]:
    """One row per group, sums exact in micro-USD. `since`/`until` are inclusive UTC days (YYYY-MM-DD)."""
    bad = [g for g in group_by if g not in GROUPS]
    if bad or not group_by:
        raise ValueError(f"group_by must be a non-empty list of {', '.join(GROUPS)}; got {', '.join(bad) or 'nothing'}")
    u = usage_records.c
    keys = {"tenant": tenants.c.name.label("tenant"), "model": u.model, "day": u.day, "route": u.route}
    cols = [keys[g] for g in group_by]
    if "tenant" in group_by:
        cols.insert(0, u.tenant_id)
    # A record without a baseline (no route group to compare with) counts as its own baseline: no savings.
    measures = {c: func.coalesce(u.baseline_cost_micros, u.cost_micros) if c == "baseline_cost_micros" else u[c]
                for c in COLUMNS[1:-1]}
    sums = [func.count().label("requests")] + [func.sum(m).label(c) for c, m in measures.items()]
    query = select(*cols, *sums).join(tenants, tenants.c.id == u.tenant_id).group_by(*cols).order_by(*cols)
    query = where_usage(query, since, until, tenant_id)
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(query)]
    for row in rows:
        for c in COLUMNS[1:-1]:
            row[c] = int(row[c] or 0)
        row["savings_micros"] = row["baseline_cost_micros"] - row["cost_micros"]
    return rows


def recent_usage(engine: Engine, tenant_id: int | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 100) -> list[dict]:
    """The newest usage records, optionally one tenant's and between two UTC days (inclusive)."""
    query = select(usage_records).order_by(usage_records.c.id.desc()).limit(min(max(limit, 1), 10_000))
    with engine.connect() as conn:
        return [row._asdict() for row in conn.execute(where_usage(query, since, until, tenant_id))]


def ledger_totals(engine: Engine, tenant_id: int | None = None) -> dict:
    """Spend and holds on tenant budgets, summed over every period: what reports must agree with."""
    spend = budget_spend.c
    query = (select(func.coalesce(func.sum(spend.spent_micros), 0), func.coalesce(func.sum(spend.reserved_micros), 0))
             .join(budgets, budgets.c.id == spend.budget_id).where(budgets.c.key_id.is_(None)))
    holds = select(func.count()).select_from(reservations)
    if tenant_id is not None:
        query, holds = query.where(budgets.c.tenant_id == tenant_id), holds.where(reservations.c.tenant_id == tenant_id)
    with engine.connect() as conn:
        spent, reserved = conn.execute(query).one()
        open_holds = conn.execute(holds).scalar_one()
    return {"spent_micros": int(spent), "reserved_micros": int(reserved), "open_reservations": open_holds}


def where_usage(query, since: str | None, until: str | None, tenant_id: int | None):
    u = usage_records.c
    if since:
        query = query.where(u.day >= since)
    if until:
        query = query.where(u.day <= until)
    if tenant_id is not None:
        query = query.where(u.tenant_id == tenant_id)
    return query


def totals(rows: list[dict]) -> dict:
    return {c: sum(r[c] for r in rows) for c in COLUMNS}


def to_csv(rows: list[dict]) -> str:
    """CSV with exact dollar columns next to the micro-USD ones, ready for a spreadsheet."""
    out = io.StringIO()
    if not rows:
        return ""
    fields = list(rows[0]) + ["cost_usd", "baseline_cost_usd", "savings_usd"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "cost_usd": usd(row["cost_micros"]).replace("$", ""),
                         "baseline_cost_usd": usd(row["baseline_cost_micros"]).replace("$", ""),
                         "savings_usd": usd(row["savings_micros"]).replace("$", "")})
    return out.getvalue()
