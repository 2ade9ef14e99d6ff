"""`POST /v1/feedback`: a tenant grades one of its own answers; the grade joins that request's usage record,
where `ferryman router train --from-ledger` finds it."""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Header, Request

from gateway import metrics
from gateway.admin_schemas import FeedbackRequest, FeedbackResponse
from gateway.errors import APIError, responses

router = APIRouter()
# With holds in Redis a settled request's record reaches the database through the batch writer, within ~100 ms:
# feedback that comes sooner waits for it (on the event loop, holding no thread) rather than answering 404.
WRITER_WAIT_S = 1.0


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=responses(400, 401, 404, 503))
async def feedback(body: FeedbackRequest, request: Request, authorization: str | None = Header(None)):
    ferry = request.app.state.ferry
    principal = await ferry.authenticate(authorization)
    graded = await ferry.ledger(grade, ferry.billing, principal, body.request_id, body.score, body.comment)
    deadline = time.monotonic() + WRITER_WAIT_S
    while graded is None and ferry.billing.unwritten() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        graded = await ferry.ledger(grade, ferry.billing, principal, body.request_id, body.score, body.comment)
    if graded is None:  # another tenant's request reads exactly like no request: ids are not to be probed
        raise APIError(404, f"No request '{body.request_id}' of yours was found.", "invalid_request_error",
                       "request_not_found", "request_id")
    group, model = graded
    tenant, per_tenant = str(principal.tenant_id), ferry.routing.tenant_metrics
    metrics.FEEDBACK.labels(group or "", principal.tenant_name if per_tenant else "").observe(body.score)
    entry = ferry.catalog.route(group) if group else None
    if entry and entry.strongest():  # a named model or a group that does not route by cost has no target
        live = ferry.routing.live
        # The grade counts for the tier of the model that answered, whatever its place in the catalog's lists.
        live.record_feedback(group, tenant, strong=model == entry.strongest(), score=body.score)
        if per_tenant:
            quality = live.window(group, tenant).feedback_quality()
            metrics.FEEDBACK_QUALITY.labels(group, principal.tenant_name).set(quality)
    return FeedbackResponse(request_id=body.request_id, score=body.score)


def grade(billing, principal, request_id: str, score: float, comment: str | None) -> tuple[str | None, str | None] | None:
    """Store the grade on the tenant's record; the record's route group and the model that answered, or None when
    the tenant has no such request. Blocking: it writes the ledger."""
    if not billing.record_feedback(principal, request_id, score, comment):
        return None
    return billing.answered_by(principal, request_id)
