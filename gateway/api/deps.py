"""What the routes share: who may call which admin route (the guards), path and query parameters, the error
statuses each kind of admin route answers, and the helpers that turn billing's answers into HTTP ones.

Every /admin route takes one of the guards below as a parameter; each names the roles it lets in besides `admin`,
which may do everything. The roles:

- `admin`: everything, including admin keys.
- `operator`: tenants, keys, rate limits, budgets and prices; the live view and /metrics. No spend, usage records
  or reports.
- `finance`: reads spend, budgets, reports and their CSV, usage records without what tenants wrote (prompt text,
  feedback comments: null), prices, tenants, and the audit log; changes nothing.

tests/billing/test_roles.py calls every /admin route with every role against its own copy of this table, so a new
route cannot go without one.
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from billing import Billing
from billing.audit import Actor
from billing.operators import MAX_ID
from gateway.errors import APIError, invalid, responses
from gateway.ferry import Ferry

def ferry_of(request: Request) -> Ferry:
    return request.app.state.ferry


def allow(*roles: str):
    """A guard: the caller's admin key (401 without one) with `admin` or one of `roles` (403 otherwise). It hands the
    route the ledger as the caller, so every change the route makes is recorded in the audit log as theirs."""
    def guard(request: Request, authorization: str | None = Header(None)) -> Billing:
        ferry = request.app.state.ferry
        actor = ferry.admin_actor(authorization)
        check_role(actor, roles, request)
        return ferry.billing.acting(actor)
    return guard


def check_role(actor: Actor, roles: tuple[str, ...], request: Request) -> None:
    if actor.role != "admin" and actor.role not in roles:
        needed = " or ".join(("admin", *roles))
        raise APIError(403, f"The admin key '{actor.name}' has the {actor.role} role; {request.method} "
                            f"{request.url.path} needs {needed}.", "invalid_request_error", "role_not_allowed")


Admin = Annotated[Billing, Depends(allow())]
Operator = Annotated[Billing, Depends(allow("operator"))]  # admin or operator
Finance = Annotated[Billing, Depends(allow("finance"))]  # admin or finance
AnyRole = Annotated[Billing, Depends(allow("operator", "finance"))]

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


def utc(moment: datetime | None) -> datetime | None:
    """Naive UTC, as the ledger stores it; a timestamp without zone is taken as UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def day(value: date | None) -> str | None:
    return value.isoformat() if value else None
