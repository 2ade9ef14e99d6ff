"""Admin REST API (admin keys, each route open to the roles of gateway/admin_access.py): tenants, keys, budgets,
prices, usage, reports. Plus `GET /v1/usage`, where a tenant's own key reads its own usage and nothing else.

Bodies in and out are pydantic models (Base -> Create / Update / Public, as in FastAPI's full-stack template);
each route's OpenAPI entry lists the error statuses it really answers. Routes are plain `def`s: FastAPI runs
them in its thread pool, so ledger queries never block streaming.
"""
from __future__ import annotations

import math
import time
from collections import deque
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from billing import Billing
from billing.operators import MAX_ALERTS, MAX_ID, MAX_LIMIT, MAX_MICROS
from billing.reports import to_csv, totals
from gateway import metrics
from gateway.admin_access import AnyRole, Finance, Operator
from gateway.errors import APIError, invalid, responses

router = APIRouter()

Count = Annotated[int | None, Field(ge=1, le=MAX_LIMIT)]
Share = Annotated[float | None, Field(ge=0.0, le=1.0)]
Micros = Annotated[int, Field(ge=0, le=MAX_MICROS)]
Percent = Annotated[int, Field(ge=1, le=100)]
RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="Ids are 32-bit; a larger one is a 400")]
TenantFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Priority = Literal["interactive", "standard", "batch"]

READ = responses(401, 403, 503)  # every admin route: an admin key, a role it allows, and the ledger reachable
WRITE = responses(400, 401, 403, 404, 503)
ONE = responses(400, 401, 403, 404, 503)  # a path id: out of range (400) or unknown (404)
LIST = responses(400, 401, 403, 503)


# --- tenants ---------------------------------------------------------------------------------------

class TenantBase(BaseModel):
    priority: Priority = "standard"
    quality_floor: Share = None
    large_share: Share = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None
    allowed_models: list[Name] | None = None  # model and route group names; None: every one
    store_prompts: bool = False  # keep this tenant's prompts for router training (off unless it opts in)
    internal: bool = False  # our own use, not a customer: reported apart, never among the top tenants


class TenantCreate(TenantBase):
    name: Name


class TenantUpdate(TenantBase):
    priority: Priority | None = None
    store_prompts: bool | None = None
    internal: bool | None = None


class TenantPublic(TenantBase):
    id: int
    name: str
    created_at: datetime


# --- keys ------------------------------------------------------------------------------------------

class KeyBase(BaseModel):
    expires_at: datetime | None = None
    rpm: Count = None
    tpm: Count = None
    max_concurrent: Count = None


class KeyCreate(KeyBase):
    name: Name = "default"


class KeyUpdate(KeyBase):
    pass


class KeyPublic(KeyBase):
    id: int
    tenant_id: int
    name: str
    key_prefix: str  # shown to tell keys apart; the secret itself is never kept
    revoked_at: datetime | None
    created_at: datetime


class KeyCreated(KeyPublic):
    key: str  # the secret: in this answer only


# --- budgets, alerts, prices -------------------------------------------------------------------------

class BudgetBase(BaseModel):
    period: Literal["daily", "monthly"] = "monthly"
    limit_micros: Micros
    # Alert when spend reaches each of these percents of the limit, once per period each; []: no alerts.
    alert_percents: list[Percent] = Field([80], max_length=MAX_ALERTS)


class BudgetSet(BudgetBase):
    model_config = ConfigDict(extra="forbid")  # a misspelt field (or the old `alert_percent`) is a 400, not ignored
    tenant_id: int = Field(ge=1, le=MAX_ID)
    key_id: int | None = Field(None, ge=1, le=MAX_ID)  # None: the tenant's budget, shared by all its keys


class BudgetPublic(BudgetBase):
    id: int
    tenant_id: int
    key_id: int | None
    created_at: datetime
    period_key: str  # the current period: "2026-11-30" or "2026-11"
    spent_micros: int
    reserved_micros: int  # held by requests in flight
    remaining_micros: int


class AlertPublic(BaseModel):
    id: int
    budget_id: int
    tenant_id: int
    tenant: str
    key_id: int | None
    period_key: str
    spent_micros: int
    limit_micros: int
    alert_percent: int  # the threshold (of the budget's alert_percents) this alert is for
    created_at: datetime
    sent_at: datetime | None  # delivered to the alert webhook; None: not (yet), or no webhook set


class PriceBase(BaseModel):
    input_micros_per_m: Micros
    cached_input_micros_per_m: Micros
    output_micros_per_m: Micros
    # Set (engine models): billed per attributed GPU-second at this micro-USD per GPU-hour, never past the per-token
    # hold; null: billed per token; left out of a PUT: as it was.
    gpu_hour_micros: Micros | None = None


class PriceSet(PriceBase):
    pass


class PricePublic(PriceBase):
    model: str
    updated_at: datetime


# --- usage and reports -------------------------------------------------------------------------------

class UsageRecordPublic(BaseModel):
    id: int
    request_id: str
    tenant_id: int
    key_id: int
    model: str
    route: str | None
    route_group: str | None
    difficulty: float | None
    status: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    baseline_cost_micros: int | None  # at the route group's strongest tier; None: no group to compare with
    estimated: bool  # token counts estimated (the upstream reported none)
    gpu_seconds: float | None
    token_cost_micros: int | None  # at the per-token prices (cost_micros is what was billed)
    gpu_cost_micros: int | None  # at the GPU-hour price; None: the model has none
    latency_ms: float | None
    feedback_score: float | None
    feedback_comment: str | None
    prompt_text: str | None  # only for tenants that opted in
    day: str
    created_at: datetime


class ReportTotals(BaseModel):
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    baseline_cost_micros: int
    savings_micros: int
    token_cost_micros: int  # the same records at the per-token prices
    gpu_cost_micros: int | None  # the records with a GPU-hour price, at it; None: none has one
    gpu_seconds: float


class UsageReport(BaseModel):
    group_by: list[str]
    since: str | None
    until: str | None
    rows: list[dict]  # the group columns asked for, then ReportTotals' columns
    totals: ReportTotals


class OwnUsage(BaseModel):
    tenant: str
    budgets: list[BudgetPublic]
    report: list[dict]
    totals: ReportTotals
    records: list[UsageRecordPublic]


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

@router.post("/admin/tenants", status_code=201, responses=LIST)
def create_tenant(body: TenantCreate, billing: Operator) -> TenantPublic:
    with answers():
        return billing.create_tenant(**body.model_dump())


@router.get("/admin/tenants", responses=READ)
def list_tenants(billing: AnyRole) -> list[TenantPublic]:
    return billing.list_tenants()


@router.get("/admin/tenants/{tenant_id}", responses=ONE)
def get_tenant(tenant_id: RowId, billing: AnyRole) -> TenantPublic:
    with answers():
        return billing.tenant(tenant_id)


@router.patch("/admin/tenants/{tenant_id}", responses=WRITE)
def update_tenant(tenant_id: RowId, body: TenantUpdate, billing: Operator) -> TenantPublic:
    with answers():
        return billing.update_tenant(tenant_id, **body.model_dump(exclude_unset=True))


@router.post("/admin/tenants/{tenant_id}/keys", status_code=201, responses=WRITE)
def create_key(tenant_id: RowId, body: KeyCreate, billing: Operator) -> KeyCreated:
    """The secret is in the answer this once; only its hash is kept."""
    fields = body.model_dump()
    name, fields["expires_at"] = fields.pop("name"), _utc(fields["expires_at"])
    with answers():
        secret, key = billing.create_key(tenant_id, name, **fields)
    return KeyCreated(**key, key=secret)


@router.get("/admin/tenants/{tenant_id}/keys", responses=ONE)
def list_keys(tenant_id: RowId, billing: Operator) -> list[KeyPublic]:
    with answers():
        billing.tenant(tenant_id)
    return billing.list_keys(tenant_id)


@router.patch("/admin/keys/{key_id}", responses=WRITE)
def update_key(key_id: RowId, body: KeyUpdate, billing: Operator) -> KeyPublic:
    fields = body.model_dump(exclude_unset=True)
    if "expires_at" in fields:
        fields["expires_at"] = _utc(fields["expires_at"])
    with answers():
        return billing.update_key(key_id, **fields)


@router.delete("/admin/keys/{key_id}", responses=ONE)
def revoke_key(key_id: RowId, billing: Operator) -> KeyPublic:
    """Revoked at once on this replica, within the key cache's few seconds on the others."""
    with answers():
        return billing.revoke_key(key_id)


# --- budgets, prices -----------------------------------------------------------------------------

@router.put("/admin/budgets", responses=WRITE)
def set_budget(body: BudgetSet, billing: Operator) -> BudgetPublic:
    with answers():
        return billing.set_budget(**body.model_dump())


@router.get("/admin/budgets", responses=LIST)
def list_budgets(billing: AnyRole, tenant_id: TenantFilter = None) -> list[BudgetPublic]:
    return billing.list_budgets(tenant_id)


@router.delete("/admin/budgets/{budget_id}", status_code=204, responses=ONE)
def delete_budget(budget_id: RowId, billing: Operator) -> None:
    with answers():
        billing.delete_budget(budget_id)


@router.get("/admin/alerts", responses=LIST)
def list_alerts(billing: AnyRole, tenant_id: TenantFilter = None) -> list[AlertPublic]:
    return billing.list_alerts(tenant_id)


@router.get("/admin/prices", responses=READ)
def list_prices(billing: AnyRole) -> list[PricePublic]:
    return billing.list_prices()


@router.put("/admin/prices/{model}", responses=LIST)
def set_price(model: str, body: PriceSet, billing: Operator) -> PricePublic:
    with answers():
        return billing.set_price(model, **body.model_dump(exclude_unset=True))  # no gpu_hour_micros: kept


# --- usage and reports ---------------------------------------------------------------------------

@router.get("/admin/usage", responses=LIST)
def usage(billing: Finance, tenant_id: TenantFilter = None, since: date | None = None, until: date | None = None,
          limit: int = Query(100, ge=1, le=10_000)) -> list[UsageRecordPublic]:
    """The newest usage records. Finance reads their money, not what tenants wrote: for a finance key
    `prompt_text` and `feedback_comment` are null (admins see them, for tenants that opted in to keeping prompts)."""
    return billing.usage(tenant_id, _day(since), _day(until), limit, tenant_text=billing.actor.role == "admin")


@router.get("/admin/reports/usage", response_model=None, responses={
    **LIST, 200: {"model": UsageReport, "content": {"text/csv": {}},
                                      "description": "JSON, or CSV with format=csv"}})
def usage_report(billing: Finance, group_by: str = "tenant,model,day", since: date | None = None,
                 until: date | None = None, tenant_id: TenantFilter = None,
                 format: Literal["json", "csv"] = "json") -> UsageReport | PlainTextResponse:
    """Cost, tokens, requests and savings against each record's baseline, per tenant / model / day (or any subset)."""
    with answers():
        rows = billing.report(tuple(g.strip() for g in group_by.split(",") if g.strip()), since=_day(since),
                              until=_day(until), tenant_id=tenant_id)
    if format == "csv":
        name = f"ferryman-usage-{_day(since) or 'start'}-{_day(until) or 'now'}.csv"
        return PlainTextResponse(to_csv(rows), media_type="text/csv",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})
    return UsageReport(group_by=group_by.split(","), since=_day(since), until=_day(until), rows=rows,
                       totals=totals(rows))


@router.get("/v1/usage", responses=responses(400, 401, 503))
def own_usage(request: Request, authorization: str | None = Header(None), since: date | None = None,
              until: date | None = None, limit: int = Query(100, ge=1, le=1000)) -> OwnUsage:
    """A tenant's own view: its budgets, its per model / day report and its newest records. Nobody else's."""
    principal = request.app.state.ferry.principal_for(authorization)
    billing: Billing = request.app.state.ferry.billing
    rows = billing.report(("model", "day"), since=_day(since), until=_day(until), tenant_id=principal.tenant_id)
    return OwnUsage(tenant=principal.tenant_name, budgets=billing.list_budgets(principal.tenant_id), report=rows,
                    totals=totals(rows), records=billing.usage(principal.tenant_id, _day(since), _day(until), limit))


def _day(value: date | None) -> str | None:
    return value.isoformat() if value else None


# --- the admin page's summaries --------------------------------------------------------------------

class SpendRow(BaseModel):
    tenant_id: int
    tenant: str
    period: Literal["daily", "monthly"]
    since: str  # first day of the period
    requests: int
    cost_micros: int
    savings_micros: int  # against each record's own baseline
    internal: bool  # our own use, shown apart from customers
    budget: BudgetPublic | None


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


def registry_snapshot(registry: CollectorRegistry | None = None) -> dict:
    """The cumulative figures the live view needs, summed over routes: latency buckets, outcomes, engine state.
    A refused request (429, 402, 403, 400, 503 before any work) counts as a request and an error."""
    snap = {"buckets": {}, "requests": 0.0, "errors": 0.0, "engines": {}}
    for family in (registry or metrics.registry()).collect():
        for s in family.samples:
            if s.name == "ferryman_request_seconds_bucket":
                le = float(s.labels["le"])
                snap["buckets"][le] = snap["buckets"].get(le, 0.0) + s.value
            elif s.name == "ferryman_requests_total":
                snap["requests"] += s.value
                snap["errors"] += s.value if s.labels["status"] != "ok" else 0.0
            elif s.name == "ferryman_rejected_total":
                snap["requests"] += s.value
                snap["errors"] += s.value
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


class EngineLive(BaseModel):
    model: str
    kv_cache_usage: float | None
    running: int
    waiting: int
    tokens_per_s: float | None


class LiveView(BaseModel):
    window_s: float
    requests_total: int
    requests_per_s: float | None
    p95_latency_s: float | None
    error_share: float | None
    engines: list[EngineLive]


@router.get("/admin/live", responses=READ)
async def live(request: Request, _: Operator) -> LiveView:
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
