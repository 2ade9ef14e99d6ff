"""`GET /metrics`: the Prometheus scrape, closed like the admin API."""
from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import metrics
from gateway.api.deps import check_role
from gateway.errors import responses
from gateway.ferry import bearer_is

router = APIRouter()


@router.get("/metrics", responses=responses(401, 403))
async def prometheus_metrics(request: Request, authorization: str | None = Header(None)):
    """Closed like the admin API: an admin or operator key, or FERRYMAN_METRICS_KEY for the monitoring."""
    key = request.app.state.settings.metrics_key
    if not (key and bearer_is(authorization, key)):
        ferry = request.app.state.ferry
        check_role(await ferry.ledger(ferry.admin_actor, authorization), ("operator",), request)
    return Response(generate_latest(metrics.registry()), media_type=CONTENT_TYPE_LATEST)
