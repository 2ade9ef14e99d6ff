"""`POST /v1/feedback`: a tenant grades one of its own answers; the grade joins that request's usage record,
where `ferryman router train --from-ledger` finds it."""
from __future__ import annotations

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from gateway import metrics
from gateway.errors import APIError, responses

router = APIRouter()


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=200, description="The x-request-id of the answer graded")
    score: float = Field(ge=0.0, le=1.0, description="How good the answer was: 0 useless, 1 perfect")
    comment: str | None = Field(None, max_length=4000)


class FeedbackResponse(BaseModel):
    object: str = "feedback"
    request_id: str
    score: float


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=responses(400, 401, 404, 503))
async def feedback(body: FeedbackRequest, request: Request, authorization: str | None = Header(None)):
    ferry = request.app.state.ferry
    principal = await ferry.authenticate(authorization)
    found = await ferry.ledger(ferry.billing.record_feedback, principal, body.request_id, body.score, body.comment)
    if not found:  # another tenant's request reads exactly like no request: ids are not to be probed
        raise APIError(404, f"No request '{body.request_id}' of yours was found.", "invalid_request_error",
                       "request_not_found", "request_id")
    metrics.FEEDBACK.labels(str(principal.tenant_id)).observe(body.score)
    ferry.routing.live.record_feedback(ANY_GROUP, str(principal.tenant_id), body.score)
    return FeedbackResponse(request_id=body.request_id, score=body.score)


ANY_GROUP = ""  # feedback names a request, not its route group: it is kept per tenant


class RouterTarget(BaseModel):
    group: str
    tenant_id: str
    target_share: float | None  # strongest-tier share the tenant's target asks for
    realised_share: float | None  # over the window
    window: int  # scores in the window
    feedback_quality: float | None  # the tenant's mean feedback score, recent answers


@router.get("/admin/router/targets", response_model=list[RouterTarget], responses=responses(401, 503))  # 503: draining
async def router_targets(request: Request, authorization: str | None = Header(None)):
    """Per route group and tenant: does the live window hold the tenant's target, and what do tenants say."""
    ferry = request.app.state.ferry
    ferry.check_admin(authorization)
    live = ferry.routing.live
    return [RouterTarget(group=g, tenant_id=t, target_share=w.target, realised_share=w.realised_share(),
                         window=len(w.scores), feedback_quality=live.window(ANY_GROUP, t).feedback_quality())
            for (g, t), w in list(live.windows.items()) if g != ANY_GROUP]
