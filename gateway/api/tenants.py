"""Tenants and their API keys (admin routes; each open to the roles of gateway/api/deps.py)."""
from __future__ import annotations


from fastapi import APIRouter

from gateway.admin_schemas import KeyCreate, KeyCreated, KeyPublic, KeyUpdate, TenantCreate, TenantPublic, TenantUpdate
from gateway.api.deps import LIST, ONE, READ, WRITE, AnyRole, Operator, RowId, answers, utc

router = APIRouter()


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
    name, fields["expires_at"] = fields.pop("name"), utc(fields["expires_at"])
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
        fields["expires_at"] = utc(fields["expires_at"])
    with answers():
        return billing.update_key(key_id, **fields)


@router.delete("/admin/keys/{key_id}", responses=ONE)
def revoke_key(key_id: RowId, billing: Operator) -> KeyPublic:
    """Revoked at once on this replica, within the key cache's few seconds on the others."""
    with answers():
        return billing.revoke_key(key_id)
