"""Admin routes about routing: which router artifact scores each route group's prompts, and each group and
tenant's live window on this replica (does it hold the tenant's target, what do tenants' grades say)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.admin_schemas import RouterGroup, RouterTarget
from gateway.api.deps import Operator
from gateway.errors import responses

router = APIRouter()


@router.get("/admin/router/targets", response_model=list[RouterTarget],
            responses=responses(401, 403, 503))  # 503: draining
async def router_targets(request: Request, _: Operator):
    """Per route group and tenant, this replica's window: does it hold the tenant's target, what do tenants say."""
    ferry = request.app.state.ferry
    return [RouterTarget(group=g, tenant_id=t, target_share=w.target, realised_share=w.realised_share(),
                         window=len(w.scores), feedback_quality=w.feedback_quality(), feedback_count=len(w.feedback))
            for (g, t), w in list(ferry.routing.live.windows.items())]


@router.get("/admin/router/groups", response_model=list[RouterGroup],
            responses=responses(401, 403, 503))  # 503: draining
async def router_groups(request: Request, _: Operator):
    """Per route group: which router artifact scores its prompts and what it does with unfamiliar ones."""
    ferry = request.app.state.ferry
    out = []
    for group in ferry.catalog.routes:
        name, scorer = ferry.routing.routers[group.name]
        meta = getattr(scorer, "meta", {})
        out.append(RouterGroup(group=group.name, policy=group.policy, router=name, unfamiliar=group.unfamiliar,
                               trained_on=meta.get("trained_on", []), examples=meta.get("examples")))
    return out
