"""Admin routes about routing: which router artifact scores each route group's prompts, and each group and
tenant's live window on this replica (does it hold the tenant's target, what do tenants' grades say)."""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from gateway.api.deps import Operator
from gateway.errors import responses

router = APIRouter()


class RouterTarget(BaseModel):
    group: str
    tenant_id: str
    target_share: float | None  # strongest-tier share the tenant's target asks for (a floor: feedback-corrected)
    realised_share: float | None  # over the window
    window: int  # scores in the window
    feedback_quality: float | None  # mean feedback score on the group's recent answers to the tenant
    feedback_count: int  # grades behind it


@router.get("/admin/router/targets", response_model=list[RouterTarget],
            responses=responses(401, 403, 503))  # 503: draining
async def router_targets(request: Request, _: Operator):
    """Per route group and tenant, this replica's window: does it hold the tenant's target, what do tenants say."""
    ferry = request.app.state.ferry
    return [RouterTarget(group=g, tenant_id=t, target_share=w.target, realised_share=w.realised_share(),
                         window=len(w.scores), feedback_quality=w.feedback_quality(), feedback_count=len(w.feedback))
            for (g, t), w in list(ferry.routing.live.windows.items())]


class RouterGroup(BaseModel):
    group: str
    policy: str
    router: str  # the artifact that scores the group's prompts: `general`, `bundled`, a path; `injected` in tests
    unfamiliar: str  # where a prompt unlike the router's training prompts goes: strongest, cheapest, score
    trained_on: list[str]  # the artifact's training files, as its meta records them ([] when it does not)
    examples: int | None  # labelled prompts it was trained on


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
