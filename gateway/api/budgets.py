"""Budgets, the alerts they raised, and prices (admin routes)."""
from __future__ import annotations


from fastapi import APIRouter

from gateway.admin_schemas import AlertPublic, BudgetPublic, BudgetSet, PricePublic, PriceSet
from gateway.api.deps import LIST, ONE, READ, WRITE, AnyRole, Operator, RowId, TenantFilter, answers

router = APIRouter()


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
