"""Reports for finance: cost, tokens, requests and savings against each record's baseline (its route group's
strongest tier); for self-hosted models, GPU-seconds and the cost at both the per-token and the GPU-hour price."""
from __future__ import annotations

import csv
import io

from sqlalchemy import Engine, func, select

from billing.models import budget_spend, budgets, reservations, tenants, usage_records
from billing.pricing import usd

GROUPS = ("tenant", "model", "day", "route")
COLUMNS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_micros",
           "baseline_cost_micros", "savings_micros", "token_cost_micros", "gpu_cost_micros", "gpu_seconds")
# cost_micros is what was billed; token_cost_micros the same records at the per-token prices; gpu_cost_micros the
# records that have a GPU-hour price, at it (None: no record of the group has one); gpu_seconds the engine's
# attributed device time.
INTEGERS = ("prompt_tokens", "cached_tokens", "completion_tokens", "cost_micros", "baseline_cost_micros",
            "token_cost_micros")


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
    measures = {c: u[c] for c in ("prompt_tokens", "cached_tokens", "completion_tokens", "cost_micros",
                                  "gpu_cost_micros", "gpu_seconds")}
    # A record without a baseline (no route group to compare with) counts as its own baseline: no savings.
    measures["baseline_cost_micros"] = func.coalesce(u.baseline_cost_micros, u.cost_micros)
    # Records settled before GPU prices existed were billed per token: their cost is their per-token cost.
    measures["token_cost_micros"] = func.coalesce(u.token_cost_micros, u.cost_micros)
    sums = [func.count().label("requests")] + [func.sum(m).label(c) for c, m in measures.items()]
    query = select(*cols, *sums).join(tenants, tenants.c.id == u.tenant_id).group_by(*cols).order_by(*cols)
    query = where_usage(query, since, until, tenant_id)
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(query)]
    for row in rows:
        for c in INTEGERS:
            row[c] = int(row[c] or 0)
        row["savings_micros"] = row["baseline_cost_micros"] - row["cost_micros"]
        row["gpu_cost_micros"] = None if row["gpu_cost_micros"] is None else int(row["gpu_cost_micros"])
        row["gpu_seconds"] = round(float(row["gpu_seconds"] or 0.0), 6)
    # group columns first, then the measures in COLUMNS' order (the CSV's column order)
    return [{**{k: v for k, v in row.items() if k not in COLUMNS}, **{c: row[c] for c in COLUMNS}} for row in rows]


# What a tenant wrote (its prompt, its feedback's comment): read by admins and the tenant itself, not by finance.
TENANT_TEXT = ("prompt_text", "feedback_comment")


def recent_usage(engine: Engine, tenant_id: int | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 100, *, tenant_text: bool = True) -> list[dict]:
    """The newest usage records, optionally one tenant's and between two UTC days (inclusive). `tenant_text`
    False: the records without what the tenant wrote (None there; those columns are never read)."""
    columns = [c for c in usage_records.c if tenant_text or c.name not in TENANT_TEXT]
    query = select(*columns).order_by(usage_records.c.id.desc()).limit(min(max(limit, 1), 10_000))
    with engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(where_usage(query, since, until, tenant_id))]
    return [{**row, **{c: row.get(c) for c in TENANT_TEXT}} for row in rows]


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
    sums = {c: sum(r[c] for r in rows if r[c] is not None) for c in COLUMNS}
    if all(r["gpu_cost_micros"] is None for r in rows):
        sums["gpu_cost_micros"] = None
    sums["gpu_seconds"] = round(sums["gpu_seconds"], 6)
    return sums


# What a spreadsheet would run as a formula when a cell starts with it (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value):
    """A text someone chose (a tenant, model or key name) as a spreadsheet cell: one a spreadsheet would take for a
    formula gets a leading single quote, so it reads as the text it is. Our own figures never pass here: a negative
    saving stays a number."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    """CSV with exact dollar columns next to the micro-USD ones, ready for a spreadsheet. The group columns (tenant,
    model, route, day) are text cells; the measures are numbers, written as they are."""
    out = io.StringIO()
    if not rows:
        return ""
    dollars = ("cost", "baseline_cost", "savings", "token_cost", "gpu_cost")
    fields = list(rows[0]) + [f"{d}_usd" for d in dollars]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: v if k in COLUMNS else text_cell(v) for k, v in row.items()},
                         **{f"{d}_usd": "" if row[f"{d}_micros"] is None else usd(row[f"{d}_micros"])
                            .replace("$", "") for d in dollars}})
    return out.getvalue()
