"""Admin REST API (admin key only): tenants, keys, budgets, prices, usage, reports. Plus `GET /v1/usage`,
where a tenant's own key reads its own usage and nothing else.

Routes are plain `def`s: FastAPI runs them in its thread pool, so ledger queries never block streaming.
"""
from __future__ import annotations

import math
import time
from collections import deque
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import BaseModel, Field

from billing import Billing
from billing.reports import to_csv, totals
from gateway.errors import APIError, invalid

router = APIRouter()

Count = Annotated[int | None, Field(ge=1, le=2**31 - 1)]
Share = Annotated[float | None, Field(ge=0.0, le=1.0)]
Micros = Annotated[int, Field(ge=0, le=2**63 - 1)]
ModelNames = list[Annotated[str, Field(min_length=1, max_length=128)]] | None  # None: every model and group


class TenantIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    priority: Literal["interactive", "standard", "batch"] = "standard"
    quality_floor: Share = None
    large_share: Share = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None
    allowed_models: ModelNames = None
    store_prompts: bool = False


class TenantPatch(BaseModel):
    priority: Literal["interactive", "standard", "batch"] | None = None
    quality_floor: Share = None
    large_share: Share = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None
    allowed_models: ModelNames = None
    store_prompts: bool | None = None


class KeyIn(BaseModel):
    name: str = Field("default", min_length=1, max_length=128)
    expires_at: datetime | None = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None


class KeyPatch(BaseModel):
    expires_at: datetime | None = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None


class BudgetIn(BaseModel):
    tenant_id: int
    key_id: int | None = None  # None: the tenant's budget, shared by all its keys
    period: Literal["daily", "monthly"] = "monthly"
    limit_micros: Micros
    alert_percent: int = Field(80, ge=1, le=100)


class PriceIn(BaseModel):
    input_micros_per_m: Micros
    cached_input_micros_per_m: Micros
    output_micros_per_m: Micros


def admin_billing(request: Request, authorization: str | None = Header(None)) -> Billing:
    ferry = request.app.state.ferry
    ferry.check_admin(authorization)
    return ferry.billing


Admin = Annotated[Billing, Depends(admin_billing)]


@contextmanager
def answers():
    """Billing's refusals as OpenAI-shaped errors: bad input 400, unknown id 404."""
    try:
        yield
    except LookupError as exc:
        raise APIError(404, str(exc).strip("'\""), "invalid_request_error", "not_found") from None
    except ValueError as exc:
        raise invalid(str(exc)) from None


def _utc(moment: datetime | None) -> datetime | None:
    """Naive UTC, as the ledger stores it; a timestamp without zone is taken as UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


# --- tenants and keys ----------------------------------------------------------------------------

@router.post("/admin/tenants", status_code=201)
def create_tenant(body: TenantIn, billing: Admin) -> dict:
    with answers():
        return billing.create_tenant(**body.model_dump())


@router.get("/admin/tenants")
def list_tenants(billing: Admin) -> list[dict]:
    return billing.list_tenants()


@router.get("/admin/tenants/{tenant_id}")
def get_tenant(tenant_id: int, billing: Admin) -> dict:
    with answers():
        return billing.tenant(tenant_id)


@router.patch("/admin/tenants/{tenant_id}")
def update_tenant(tenant_id: int, body: TenantPatch, billing: Admin) -> dict:
    with answers():
        return billing.update_tenant(tenant_id, **body.model_dump(exclude_unset=True))


@router.post("/admin/tenants/{tenant_id}/keys", status_code=201)
def create_key(tenant_id: int, body: KeyIn, billing: Admin) -> dict:
    """The secret is in the answer this once; only its hash is kept."""
    fields = body.model_dump()
    name, fields["expires_at"] = fields.pop("name"), _utc(fields["expires_at"])
    with answers():
        secret, key = billing.create_key(tenant_id, name, **fields)
    return {**key, "key": secret}


@router.get("/admin/tenants/{tenant_id}/keys")
def list_keys(tenant_id: int, billing: Admin) -> list[dict]:
    with answers():
        billing.tenant(tenant_id)
    return billing.list_keys(tenant_id)


@router.patch("/admin/keys/{key_id}")
def update_key(key_id: int, body: KeyPatch, billing: Admin) -> dict:
    fields = body.model_dump(exclude_unset=True)
    if "expires_at" in fields:
        fields["expires_at"] = _utc(fields["expires_at"])
    with answers():
        return billing.update_key(key_id, **fields)


@router.delete("/admin/keys/{key_id}")
def revoke_key(key_id: int, billing: Admin) -> dict:
    """Revoked at once on this replica, within the key cache's few seconds on the others."""
    with answers():
        return billing.revoke_key(key_id)


# --- budgets, prices -----------------------------------------------------------------------------

@router.put("/admin/budgets")
def set_budget(body: BudgetIn, billing: Admin) -> dict:
    with answers():
        return billing.set_budget(**body.model_dump())


@router.get("/admin/budgets")
def list_budgets(billing: Admin, tenant_id: int | None = None) -> list[dict]:
    return billing.list_budgets(tenant_id)


@router.delete("/admin/budgets/{budget_id}", status_code=204)
def delete_budget(budget_id: int, billing: Admin) -> None:
    with answers():
        billing.delete_budget(budget_id)


@router.get("/admin/alerts")
def list_alerts(billing: Admin, tenant_id: int | None = None) -> list[dict]:
    return billing.list_alerts(tenant_id)


@router.get("/admin/prices")
def list_prices(billing: Admin) -> list[dict]:
    return billing.list_prices()


@router.put("/admin/prices/{model}")
def set_price(model: str, body: PriceIn, billing: Admin) -> dict:
    with answers():
        return billing.set_price(model, **body.model_dump())


# --- usage and reports ---------------------------------------------------------------------------

@router.get("/admin/usage")
def usage(billing: Admin, tenant_id: int | None = None, since: date | None = None, until: date | None = None,
          limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
    return billing.usage(tenant_id, _day(since), _day(until), limit)


@router.get("/admin/reports/usage", response_model=None)
def usage_report(billing: Admin, group_by: str = "tenant,model,day", since: date | None = None,
                 until: date | None = None, tenant_id: int | None = None,
                 format: Literal["json", "csv"] = "json") -> dict | PlainTextResponse:
    """Cost, tokens, requests and savings against the large model, per tenant / model / day (or any subset)."""
    with answers():
        rows = billing.report(tuple(g.strip() for g in group_by.split(",") if g.strip()), since=_day(since),
                              until=_day(until), tenant_id=tenant_id)
    if format == "csv":
        name = f"ferryman-usage-{_day(since) or 'start'}-{_day(until) or 'now'}.csv"
        return PlainTextResponse(to_csv(rows), media_type="text/csv",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})
    return {"group_by": group_by.split(","), "since": _day(since), "until": _day(until), "rows": rows,
            "totals": totals(rows)}


@router.get("/v1/usage")
def own_usage(request: Request, authorization: str | None = Header(None), since: date | None = None,
              until: date | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict:
    """A tenant's own view: its budgets, its per model / day report and its newest records. Nobody else's."""
    principal = request.app.state.ferry.principal_for(authorization)
    billing: Billing = request.app.state.ferry.billing
    rows = billing.report(("model", "day"), since=_day(since), until=_day(until), tenant_id=principal.tenant_id)
    return {"tenant": principal.tenant_name, "budgets": billing.list_budgets(principal.tenant_id),
            "report": rows, "totals": totals(rows),
            "records": billing.usage(principal.tenant_id, _day(since), _day(until), limit)}


def _day(value: date | None) -> str | None:
    return value.isoformat() if value else None


# --- the admin page's summaries --------------------------------------------------------------------

@router.get("/admin/spend")
def spend(billing: Admin) -> list[dict]:
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
                     "savings_micros": usage.get("savings_micros", 0), "budget": budget})
    return rows


class LiveWindow:
    """Request rate, p95 latency and token rates over the last `window_s` seconds, from snapshots of the
    Prometheus registry taken whenever the admin page polls: the gateway keeps no history of its own."""

    def __init__(self, window_s: float = 15.0):
        self.window_s = window_s
        self.snapshots: deque[tuple[float, dict]] = deque(maxlen=1000)

    def add(self, now: float, snapshot: dict) -> tuple[float, dict]:
        """Keep the newest snapshot at least `window_s` old as the baseline, and return it."""
        self.snapshots.append((now, snapshot))
        while len(self.snapshots) > 1 and now - self.snapshots[1][0] >= self.window_s:
            self.snapshots.popleft()
        return self.snapshots[0]


ENGINE_SAMPLES = {"ferryman_engine_kv_cache_usage_ratio": "kv_cache_usage",
                  "ferryman_engine_running_requests": "running", "ferryman_engine_waiting_requests": "waiting",
                  "ferryman_engine_generation_tokens_total": "generated_tokens"}


def registry_snapshot(registry: CollectorRegistry = REGISTRY) -> dict:
    """The cumulative figures the live view needs, summed over routes: latency buckets, outcomes, engine state."""
    snap = {"buckets": {}, "requests": 0.0, "errors": 0.0, "engines": {}}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "ferryman_request_seconds_bucket":
                le = float(s.labels["le"])
                snap["buckets"][le] = snap["buckets"].get(le, 0.0) + s.value
            elif s.name == "ferryman_requests_total":
                snap["requests"] += s.value
                snap["errors"] += s.value if s.labels["status"] != "ok" else 0.0
            elif s.name in ENGINE_SAMPLES:
                engine = snap["engines"].setdefault(s.labels["model"], {})
                engine[ENGINE_SAMPLES[s.name]] = s.value
    return snap


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the q-th observation."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in sorted(buckets):
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # past the last finite bucket all we know is "more than this"
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


@router.get("/admin/live")
async def live(request: Request, _: Admin) -> dict:
    """Requests/s, p95 latency and error share over the last seconds, and each in-process engine's KV cache
    usage and queue, read from the gateway's own metrics."""
    state = request.app.state
    if not hasattr(state, "live_window"):
        state.live_window = LiveWindow()
    now, snap = time.monotonic(), registry_snapshot()
    since, base = state.live_window.add(now, snap)
    window = now - since
    done = snap["requests"] - base["requests"]
    buckets = {le: count - base["buckets"].get(le, 0.0) for le, count in snap["buckets"].items()}
    engines = []
    for model, now_engine in sorted(snap["engines"].items()):
        # max(0, ...): an engine unloaded and loaded again starts its counter afresh
        generated = max(0.0, now_engine.get("generated_tokens", 0.0)
                        - base["engines"].get(model, {}).get("generated_tokens", 0.0))
        engines.append({"model": model, "kv_cache_usage": now_engine.get("kv_cache_usage"),
                        "running": int(now_engine.get("running", 0)), "waiting": int(now_engine.get("waiting", 0)),
                        "tokens_per_s": generated / window if window > 0 else None})
    return {"window_s": window, "requests_total": int(snap["requests"]),
            "requests_per_s": done / window if window > 0 else None,
            "p95_latency_s": quantile(0.95, buckets) if window > 0 else None,
            "error_share": (snap["errors"] - base["errors"]) / done if done > 0 else None,
            "engines": engines}
