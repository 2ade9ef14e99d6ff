"""The admin page's summaries: each tenant's spend beside its budget, and the live view (gateway/live_view.py)."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request

from gateway.admin_schemas import LiveView, SpendRow
from gateway.api.deps import READ, Finance, Operator
from gateway.live_view import LiveWindow, registry_snapshot

router = APIRouter()


@router.get("/admin/spend", responses=READ)
def spend(billing: Finance) -> list[SpendRow]:
    """Each tenant's spend in its budget's current period (this month when it has none), beside that budget."""
    budgets = {b["tenant_id"]: b for b in billing.list_budgets() if b["key_id"] is None}
    today = billing.clock().date()
    starts = {"daily": today.isoformat(), "monthly": today.replace(day=1).isoformat()}
    spent = {period: {r["tenant_id"]: r for r in billing.report(("tenant",), since=since)}
             for period, since in starts.items()}
    rows = []
    for tenant in billing.list_tenants():
        budget = budgets.get(tenant["id"])
        period = budget["period"] if budget else "monthly"
        usage = spent[period].get(tenant["id"], {})
        rows.append({"tenant_id": tenant["id"], "tenant": tenant["name"], "period": period, "since": starts[period],
                     "requests": usage.get("requests", 0), "cost_micros": usage.get("cost_micros", 0),
                     "savings_micros": usage.get("savings_micros", 0), "internal": tenant["internal"],
                     "budget": budget})
    return rows


@router.get("/admin/live", responses=READ)
async def live(request: Request, _: Operator) -> LiveView:
    """Requests/s, p95 latency and error share over the last seconds, and each in-process engine's KV cache
    usage and queue, read from the gateway's own metrics."""
    state = request.app.state
    if not hasattr(state, "live_window"):
        state.live_window = LiveWindow()
    return state.live_window.view(time.monotonic(), registry_snapshot())
