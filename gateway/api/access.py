"""People's admin keys (`admin` only), the caller's own role (`/admin/me`), and the audit log (gateway/api/deps.py
says who may call which route)."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse

from billing.audit import MAX_PAGE, to_csv
from billing.operators import MAX_ID
from gateway.admin_schemas import AdminKeyCreate, AdminKeyCreated, AdminKeyPublic, AuditPage, Me
from gateway.api.deps import READ, Admin, AnyRole, Finance
from gateway.errors import APIError, invalid, responses

router = APIRouter()


# --- who am I ---------------------------------------------------------------------------------------

@router.get("/admin/me", responses=READ)
def me(billing: AnyRole) -> Me:
    """The caller's name and role: the admin page shows the tabs that role may use."""
    return Me(name=billing.actor.name, role=billing.actor.role)


# --- admin keys ----------------------------------------------------------------------------------------

@router.get("/admin/admin-keys", responses=READ)
def list_admin_keys(billing: Admin) -> list[AdminKeyPublic]:
    return billing.admins.list()


@router.post("/admin/admin-keys", status_code=201, responses=responses(400, 401, 403, 503))
def create_admin_key(body: AdminKeyCreate, billing: Admin) -> AdminKeyCreated:
    """A person's key with one role. The secret is in the answer this once; only its hash is kept."""
    try:
        secret, key = billing.admins.create(body.name, body.role)
    except ValueError as exc:
        raise invalid(str(exc), "name") from None
    return AdminKeyCreated(**key, key=secret)


@router.delete("/admin/admin-keys/{key_id}", responses=responses(400, 401, 403, 404, 503))
def revoke_admin_key(key_id: Annotated[int, Path(ge=1, le=MAX_ID)], billing: Admin) -> AdminKeyPublic:
    """Refused from the next request on, on every replica."""
    try:
        return billing.admins.revoke(key_id)
    except LookupError as exc:
        raise APIError(404, str(exc), "invalid_request_error", "not_found") from None


# --- the audit log ------------------------------------------------------------------------------------

Text = Annotated[str | None, Query(min_length=1, max_length=160)]


@router.get("/admin/audit", response_model=None, responses={
    **responses(400, 401, 403, 503), 200: {"model": AuditPage, "content": {"text/csv": {}},
                                           "description": "JSON, or CSV (every matching entry) with format=csv"}})
def audit(billing: Finance, actor: Text = None, action: Text = None, target: Text = None, since: date | None = None,
          until: date | None = None, before_id: int | None = Query(None, ge=1, le=MAX_ID),
          limit: int = Query(100, ge=1, le=MAX_PAGE),
          format: Literal["json", "csv"] = "json") -> AuditPage | PlainTextResponse:
    """Every change, newest first, a page at a time; filter by who (actor), what (action: one like
    `tenant.update`, or a kind like `tenant`), which object (target: `tenant:3`) and UTC days."""
    if any("\x00" in (v or "") for v in (actor, action, target)):
        raise invalid("filters may not contain NUL bytes")
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    if format == "csv":
        return PlainTextResponse(to_csv(billing.audit(**filters, limit=None)), media_type="text/csv",
                                 headers={"content-disposition": 'attachment; filename="ferryman-audit.csv"'})
    rows = billing.audit(**filters, before_id=before_id, limit=limit + 1)  # one more: is there an older page?
    return AuditPage(entries=rows[:limit], next_before_id=rows[limit - 1]["id"] if len(rows) > limit else None)
