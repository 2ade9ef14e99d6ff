"""Roles on the admin API, over HTTP, on SQLite and PostgreSQL: every /admin route x every role answers as the table
below says (2xx or 403), and a route the table does not list fails the test, so no new route goes without its role.
Refusals change nothing; every change names its maker in the audit log."""
import csv
import io
import uuid
from itertools import count

import httpx
import pytest

from billing.audit import Actor
from billing.auth import hash_key
from tests.billing.helpers import ADMIN_KEY, gateway_app
from tests.util import serve

A, O, F = "admin", "operator", "finance"
ROLES = (A, O, F)
_n = count()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_n)}-{uuid.uuid4().hex[:6]}"


def tenant(billing) -> int:
    return billing.create_tenant(fresh("t"))["id"]


def key(billing) -> int:
    return billing.create_key(tenant(billing))[1]["id"]


def budget(billing) -> int:
    return billing.set_budget(tenant(billing), limit_micros=1000)["id"]


PRICE = {"input_micros_per_m": 1, "cached_input_micros_per_m": 1, "output_micros_per_m": 2}

# (method, path): (the roles it lets in, a function of the ledger giving (path, json body) of a request that succeeds)
TABLE = {
    ("GET", "/admin/me"): ({A, O, F}, lambda b: ("/admin/me", None)),
    ("GET", "/admin/tenants"): ({A, O, F}, lambda b: ("/admin/tenants", None)),
    ("POST", "/admin/tenants"): ({A, O}, lambda b: ("/admin/tenants", {"name": fresh("t")})),
    ("GET", "/admin/tenants/{tenant_id}"): ({A, O, F}, lambda b: (f"/admin/tenants/{tenant(b)}", None)),
    ("PATCH", "/admin/tenants/{tenant_id}"): ({A, O}, lambda b: (f"/admin/tenants/{tenant(b)}", {"rpm": 60})),
    ("GET", "/admin/tenants/{tenant_id}/keys"): ({A, O}, lambda b: (f"/admin/tenants/{tenant(b)}/keys", None)),
    ("POST", "/admin/tenants/{tenant_id}/keys"): ({A, O}, lambda b: (f"/admin/tenants/{tenant(b)}/keys", {})),
    ("PATCH", "/admin/keys/{key_id}"): ({A, O}, lambda b: (f"/admin/keys/{key(b)}", {"rpm": 5})),
    ("DELETE", "/admin/keys/{key_id}"): ({A, O}, lambda b: (f"/admin/keys/{key(b)}", None)),
    ("GET", "/admin/budgets"): ({A, O, F}, lambda b: ("/admin/budgets", None)),
    ("PUT", "/admin/budgets"): ({A, O}, lambda b: ("/admin/budgets", {"tenant_id": tenant(b), "limit_micros": 9})),
    ("DELETE", "/admin/budgets/{budget_id}"): ({A, O}, lambda b: (f"/admin/budgets/{budget(b)}", None)),
    ("GET", "/admin/alerts"): ({A, O, F}, lambda b: ("/admin/alerts", None)),
    ("GET", "/admin/prices"): ({A, O, F}, lambda b: ("/admin/prices", None)),
    ("PUT", "/admin/prices/{model}"): ({A, O}, lambda b: (f"/admin/prices/{fresh('m')}", PRICE)),
    ("GET", "/admin/usage"): ({A, F}, lambda b: ("/admin/usage", None)),
    ("GET", "/admin/reports/usage"): ({A, F}, lambda b: ("/admin/reports/usage?format=csv", None)),
    ("GET", "/admin/spend"): ({A, F}, lambda b: ("/admin/spend", None)),
    ("GET", "/admin/live"): ({A, O}, lambda b: ("/admin/live", None)),
    ("GET", "/admin/router/targets"): ({A, O}, lambda b: ("/admin/router/targets", None)),
    ("GET", "/admin/router/groups"): ({A, O}, lambda b: ("/admin/router/groups", None)),
    ("GET", "/admin/admin-keys"): ({A}, lambda b: ("/admin/admin-keys", None)),
    ("POST", "/admin/admin-keys"): ({A}, lambda b: ("/admin/admin-keys", {"name": fresh("p"), "role": "finance"})),
    ("DELETE", "/admin/admin-keys/{key_id}"): (
        {A}, lambda b: (f"/admin/admin-keys/{b.admins.create(fresh('p'), 'finance')[1]['id']}", None)),
    ("GET", "/admin/audit"): ({A, F}, lambda b: ("/admin/audit?format=csv", None)),
}


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def gw(db_url):
    app, billing = gateway_app(db_url)
    keys = {role: billing.admins.create(f"{role}-person", role)[0] for role in ROLES}
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, billing, keys
    billing.close()


@pytest.mark.slow
def test_every_admin_route_answers_each_role_as_the_table_says(gw):
    client, billing, keys = gw
    routes = {(method.upper(), path) for path, item in client.get("/openapi.json").json()["paths"].items()
              if path.startswith("/admin") for method in item}
    assert routes == set(TABLE), "a new /admin route needs its roles (gateway/api/deps.py) and a row here"
    tenant_key = billing.create_key(tenant(billing))[0]
    for (method, _), (allowed, request) in sorted(TABLE.items()):
        for role in ROLES:
            path, body = request(billing)
            entries = len(billing.audit(limit=None))
            answer = client.request(method, path, headers=bearer(keys[role]), json=body)
            if role in allowed:
                assert answer.status_code in (200, 201, 204), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role, answer.text)
                assert answer.json()["error"]["code"] == "role_not_allowed"
                assert f"'{role}-person' has the {role} role" in answer.json()["error"]["message"]
                assert len(billing.audit(limit=None)) == entries  # a refusal changes nothing
        path, body = request(billing)
        assert client.request(method, path, headers=bearer(ADMIN_KEY), json=body).status_code in (200, 201, 204)
        for stranger in ({}, bearer(tenant_key), bearer("fm-admin-not-a-key")):
            answer = client.request(method, path, headers=stranger, json=body)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "invalid_api_key"


def test_metrics_are_open_to_admins_and_operators_only(gw):
    client, _, keys = gw
    assert client.get("/metrics", headers=bearer(keys[A])).status_code == 200
    assert client.get("/metrics", headers=bearer(keys[O])).status_code == 200
    refused = client.get("/metrics", headers=bearer(keys[F]))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "role_not_allowed"


def test_changes_are_audited_as_their_makers_and_finance_reads_the_log(gw):
    client, billing, keys = gw
    made = client.post("/admin/tenants", headers=bearer(keys[O]), json={"name": "acme", "rpm": 10}).json()
    client.patch(f"/admin/tenants/{made['id']}", headers=bearer(ADMIN_KEY), json={"rpm": 20})
    assert client.get("/admin/me", headers=bearer(keys[F])).json() == {"name": "finance-person", "role": "finance"}
    assert client.get("/admin/me", headers=bearer(ADMIN_KEY)).json() == {"name": "env:FERRYMAN_ADMIN_KEY",
                                                                         "role": "admin"}

    page = client.get("/admin/audit", headers=bearer(keys[F]), params={"target": f"tenant:{made['id']}"}).json()
    assert [(e["actor"], e["actor_role"], e["action"]) for e in page["entries"]] == [
        ("env:FERRYMAN_ADMIN_KEY", "admin", "tenant.update"), ("operator-person", "operator", "tenant.create")]
    assert page["entries"][0]["before"] == {"rpm": 10}
    assert page["entries"][0]["after"] == {"rpm": 20}
    assert page["next_before_id"] is None

    first = client.get("/admin/audit", headers=bearer(keys[A]), params={"limit": 2}).json()
    rest = client.get("/admin/audit", headers=bearer(keys[A]),
                      params={"limit": 1000, "before_id": first["next_before_id"]}).json()
    every = [e["id"] for e in first["entries"] + rest["entries"]]
    assert every == sorted(every, reverse=True)
    assert len(every) == len(billing.audit(limit=None))
    assert rest["next_before_id"] is None

    exported = client.get("/admin/audit", headers=bearer(keys[F]), params={"format": "csv", "action": "tenant"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["actor"], r["action"]) for r in rows] == [("operator-person", "tenant.create"),
                                                         ("env:FERRYMAN_ADMIN_KEY", "tenant.update")]
    for bad in ({"limit": 0}, {"limit": 10_001}, {"before_id": 0}, {"since": "yesterday"}, {"actor": "a\x00b"},
                {"format": "xml"}):
        answer = client.get("/admin/audit", headers=bearer(keys[A]), params=bad)
        assert answer.status_code == 400, (bad, answer.text)


def test_people_get_admin_keys_stored_hashed_and_revoked_at_once(gw):
    client, billing, keys = gw
    created = client.post("/admin/admin-keys", headers=bearer(keys[A]), json={"name": "erin", "role": "operator"})
    assert created.status_code == 201
    secret = created.json()["key"]
    assert client.get("/admin/me", headers=bearer(secret)).json() == {"name": "erin", "role": "operator"}
    listed = client.get("/admin/admin-keys", headers=bearer(keys[A])).json()
    assert [k["name"] for k in listed] == ["admin-person", "operator-person", "finance-person", "erin"]
    assert "key" not in listed[-1]
    assert "key_hash" not in listed[-1]
    assert billing.admins.authenticate(secret) == Actor("erin", "operator")
    assert hash_key(secret) != secret

    for body in ({"name": "erin", "role": "finance"}, {"name": "x", "role": "root"}, {"name": "env:me", "role": "admin"},
                 {"name": "", "role": "admin"}):
        answer = client.post("/admin/admin-keys", headers=bearer(keys[A]), json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert client.delete("/admin/admin-keys/999", headers=bearer(keys[A])).status_code == 404

    revoked = client.delete(f"/admin/admin-keys/{created.json()['id']}", headers=bearer(keys[A]))
    assert revoked.json()["revoked_at"] is not None
    refused = client.get("/admin/me", headers=bearer(secret))
    assert refused.status_code == 401
    assert [(e["actor"], e["action"]) for e in billing.audit(action="admin_key", limit=2)] == [
        ("admin-person", "admin_key.revoke"), ("admin-person", "admin_key.create")]


def test_finance_reads_usage_records_without_what_tenants_wrote(gw):
    client, billing, keys = gw
    made = billing.create_tenant(fresh("t"), store_prompts=True)
    principal = billing.authenticate(billing.create_key(made["id"])[0])
    billing.settle(billing.reserve(principal, "p1", "ferryman-small", 10, 10), prompt_tokens=10, completion_tokens=5,
                   prompt_text="our merger plan with globex")
    assert billing.record_feedback(principal, "p1", 0.5, "it leaked the merger plan")
    params = {"tenant_id": made["id"]}
    [seen] = client.get("/admin/usage", headers=bearer(keys[A]), params=params).json()
    [redacted] = client.get("/admin/usage", headers=bearer(keys[F]), params=params).json()
    assert (seen["prompt_text"], seen["feedback_comment"]) == ("our merger plan with globex", "it leaked the merger plan")
    assert redacted["prompt_text"] is None
    assert redacted["feedback_comment"] is None
    assert {k: v for k, v in redacted.items() if k not in ("prompt_text", "feedback_comment")} == {
        k: v for k, v in seen.items() if k not in ("prompt_text", "feedback_comment")}
    assert redacted["cost_micros"] > 0
    assert redacted["feedback_score"] == 0.5
    assert client.get("/admin/usage", headers=bearer(keys[O]), params=params).status_code == 403
