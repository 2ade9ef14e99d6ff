"""Usage records and reports for admins, and `GET /v1/usage`, where a tenant's own key reads its own usage and
nothing else. Routes are plain `def`s: FastAPI runs them in its thread pool, so ledger queries never block
streaming."""
from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse

from billing import Billing
from billing.reports import to_csv, totals
from gateway.admin_schemas import OwnUsage, UsageRecordPublic, UsageReport
from gateway.api.deps import LIST, Finance, TenantFilter, answers, day
from gateway.errors import responses

router = APIRouter()


@router.get("/admin/usage", responses=LIST)
def usage(billing: Finance, tenant_id: TenantFilter = None, since: date | None = None, until: date | None = None,
          limit: int = Query(100, ge=1, le=10_000)) -> list[UsageRecordPublic]:
    """The newest usage records. Finance reads their money, not what tenants wrote: for a finance key
    `prompt_text` and `feedback_comment` are null (admins see them, for tenants that opted in to keeping prompts)."""
    return billing.usage(tenant_id, day(since), day(until), limit, tenant_text=billing.actor.role == "admin")


@router.get("/admin/reports/usage", response_model=None, responses={
    **LIST, 200: {"model": UsageReport, "content": {"text/csv": {}},
                                      "description": "JSON, or CSV with format=csv"}})
def usage_report(billing: Finance, group_by: str = "tenant,model,day", since: date | None = None,
                 until: date | None = None, tenant_id: TenantFilter = None,
                 format: Literal["json", "csv"] = "json") -> UsageReport | PlainTextResponse:
    """Cost, tokens, requests and savings against each record's baseline, per tenant / model / day (or any subset)."""
    with answers():
        rows = billing.report(tuple(g.strip() for g in group_by.split(",") if g.strip()), since=day(since),
                              until=day(until), tenant_id=tenant_id)
    if format == "csv":
        name = f"ferryman-usage-{day(since) or 'start'}-{day(until) or 'now'}.csv"
        return PlainTextResponse(to_csv(rows), media_type="text/csv",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})
    return UsageReport(group_by=group_by.split(","), since=day(since), until=day(until), rows=rows,
                       totals=totals(rows))


@router.get("/v1/usage", responses=responses(400, 401, 503))
def own_usage(request: Request, authorization: str | None = Header(None), since: date | None = None,
              until: date | None = None, limit: int = Query(100, ge=1, le=1000)) -> OwnUsage:
    """A tenant's own view: its budgets, its per model / day report and its newest records. Nobody else's."""
    principal = request.app.state.ferry.principal_for(authorization)
    billing: Billing = request.app.state.ferry.billing
    rows = billing.report(("model", "day"), since=day(since), until=day(until), tenant_id=principal.tenant_id)
    return OwnUsage(tenant=principal.tenant_name, budgets=billing.list_budgets(principal.tenant_id), report=rows,
                    totals=totals(rows), records=billing.usage(principal.tenant_id, day(since), day(until), limit))
