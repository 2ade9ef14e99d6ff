"""Admin REST API (admin keys, each route open to the roles of gateway/admin_access.py): tenants, keys, budgets,
prices, usage, reports. Plus `GET /v1/usage`, where a tenant's own key reads its own usage and nothing else.

Bodies in and out are pydantic models of gateway/admin_schemas.py; the live view's arithmetic is
gateway/live_view.py's. Each route's OpenAPI entry lists the error statuses it really answers. Routes are plain `def`s: FastAPI runs
them in its thread pool, so ledger queries never block streaming.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import PlainTextResponse

from billing import Billing
from billing.operators import MAX_ID
from billing.reports import to_csv, totals
from gateway.admin_access import AnyRole, Finance, Operator
from gateway.admin_schemas import (AlertPublic, BudgetPublic, BudgetSet, KeyCreate, KeyCreated, KeyPublic, KeyUpdate,
                                   LiveView, OwnUsage, PricePublic, PriceSet, SpendRow, TenantCreate, TenantPublic,
                                   TenantUpdate, UsageRecordPublic, UsageReport)
from gateway.errors import APIError, invalid, responses
from gateway.live_view import LiveWindow, registry_snapshot

router = APIRouter()

RowId = Annotated[int, Path(ge=1, le=MAX_ID, description="Ids are 32-bit; a larger one is a 400")]
TenantFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]

READ = responses(401, 403, 503)  # every admin route: an admin key, a role it allows, and the ledger reachable
WRITE = responses(400, 401, 403, 404, 503)
ONE = responses(400, 401, 403, 404, 503)  # a path id: out of range (400) or unknown (404)
LIST = responses(400, 401, 403, 503)


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
