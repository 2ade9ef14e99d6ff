"""The admin REST API and a tenant's own usage endpoint, over HTTP against a served gateway."""
import csv
import io

import httpx
import pytest

from tests.billing.helpers import ADMIN_KEY, gateway_app
from tests.util import serve

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gw(sqlite_url):
    app, billing = gateway_app(sqlite_url)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, billing
    billing.close()


def complete(client, key: str, max_tokens: int = 5, model: str = "ferryman-small") -> httpx.Response:
    return client.post("/v1/completions", headers=bearer(key),
                       json={"model": model, "prompt": "hello there", "max_tokens": max_tokens})


def make_tenant(client, name: str, **fields) -> tuple[int, str]:
    tenant = client.post("/admin/tenants", headers=ADMIN, json={"name": name, **fields})
    assert tenant.status_code == 201, tenant.text
    key = client.post(f"/admin/tenants/{tenant.json()['id']}/keys", headers=ADMIN, json={"name": "main"})
    assert key.status_code == 201 and key.json()["key"].startswith("fm-") and "key_hash" not in key.json()
    return tenant.json()["id"], key.json()["key"]


def test_admin_routes_need_the_admin_key(gw):
    client, _ = gw
    _, key = make_tenant(client, "acme")
    for headers in ({}, bearer(key), bearer("fm-admin-wrong")):
        for path in ("/admin/tenants", "/admin/usage", "/admin/reports/usage", "/admin/budgets", "/admin/prices"):
            answer = client.get(path, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/admin/tenants", headers=bearer(key), json={"name": "evil"}).status_code == 401
    assert [t["name"] for t in client.get("/admin/tenants", headers=ADMIN).json()] == ["acme"]


def test_tenant_lifecycle_keys_and_revocation(gw):
    client, _ = gw
    tenant_id, key = make_tenant(client, "acme", priority="interactive", rpm=100)
    assert complete(client, key).status_code == 200
    duplicate = client.post("/admin/tenants", headers=ADMIN, json={"name": "acme"})
    assert duplicate.status_code == 400 and "already exists" in duplicate.json()["error"]["message"]
    assert client.post("/admin/tenants", headers=ADMIN, json={"name": "x", "priority": "vip"}).status_code == 400
    assert client.post("/admin/tenants", headers=ADMIN, json={"name": "y", "rpm": 0}).status_code == 400
    assert client.get("/admin/tenants/999", headers=ADMIN).status_code == 404
    patched = client.patch(f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"large_share": 0.25})
    assert patched.json()["large_share"] == 0.25 and patched.json()["priority"] == "interactive"

    keys = client.get(f"/admin/tenants/{tenant_id}/keys", headers=ADMIN).json()
    assert [k["name"] for k in keys] == ["main"] and keys[0]["key_prefix"] == key[:10]
    revoked = client.delete(f"/admin/keys/{keys[0]['id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = complete(client, key)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    expired = client.post(f"/admin/tenants/{tenant_id}/keys", headers=ADMIN,
                          json={"name": "old", "expires_at": "2020-01-01T00:00:00Z"}).json()["key"]
    assert complete(client, expired).status_code == 401


def test_budgets_refuse_with_402_and_report_their_spend(gw):
    client, _ = gw
    tenant_id, key = make_tenant(client, "acme")
    # "hello there" is 11 tokens + BOS; on the small model 12 prompt + 10 out = 2.4 + 8 -> 11 micro-USD.
    budget = client.put("/admin/budgets", headers=ADMIN,
                        json={"tenant_id": tenant_id, "limit_micros": 25, "period": "daily"})
    assert budget.status_code == 200 and budget.json()["remaining_micros"] == 25
    assert complete(client, key, 10).status_code == 200
    assert complete(client, key, 10).status_code == 200
    refused = complete(client, key, 10)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert "budget" in refused.json()["error"]["message"] and "$0.000003 left" in refused.json()["error"]["message"]
    [b] = client.get("/admin/budgets", headers=ADMIN, params={"tenant_id": tenant_id}).json()
    assert (b["spent_micros"], b["reserved_micros"], b["remaining_micros"]) == (22, 0, 3)
    assert client.put("/admin/budgets", headers=ADMIN,
                      json={"tenant_id": tenant_id, "limit_micros": 25, "period": "weekly"}).status_code == 400
    assert client.delete(f"/admin/budgets/{b['id']}", headers=ADMIN).status_code == 204
    assert complete(client, key, 10).status_code == 200


def test_prices_are_editable_at_runtime(gw):
    client, _ = gw
    _, key = make_tenant(client, "acme")
    price = {"input_micros_per_m": 1_000_000, "cached_input_micros_per_m": 0, "output_micros_per_m": 2_000_000}
    assert client.put("/admin/prices/ferryman-small", headers=ADMIN, json=price).status_code == 200
    assert complete(client, key, 10).headers["x-ferryman-cost-usd"] == "0.000032"  # 12 * 1 + 10 * 2
    bad = client.put("/admin/prices/ferryman-small", headers=ADMIN, json={**price, "output_micros_per_m": -1})
    assert bad.status_code == 400
    models = {p["model"]: p for p in client.get("/admin/prices", headers=ADMIN).json()}
    assert models["ferryman-small"]["output_micros_per_m"] == 2_000_000


def test_reports_as_json_and_csv_agree_with_the_records(gw):
    client, billing = gw
    _, a = make_tenant(client, "acme")
    _, b = make_tenant(client, "globex")
    for key, model, n in ((a, "ferryman-small", 3), (a, "ferryman-large", 1), (b, "ferryman-small", 2)):
        for _ in range(n):
            assert complete(client, key, 4, model).status_code == 200
    report = client.get("/admin/reports/usage", headers=ADMIN).json()
    assert [(r["tenant"], r["model"], r["requests"]) for r in report["rows"]] == [
        ("acme", "ferryman-large", 1), ("acme", "ferryman-small", 3), ("globex", "ferryman-small", 2)]
    records = client.get("/admin/usage", headers=ADMIN).json()
    assert report["totals"]["cost_micros"] == sum(r["cost_micros"] for r in records) > 0
    # each request named its model: nothing was routed, so nothing was saved
    assert [r["baseline_cost_micros"] for r in records] == [None] * 6
    assert report["totals"]["savings_micros"] == 0
    by_model = client.get("/admin/reports/usage", headers=ADMIN, params={"group_by": "model"}).json()["rows"]
    assert [r["requests"] for r in by_model] == [1, 5]
    answer = client.get("/admin/reports/usage", headers=ADMIN, params={"format": "csv", "since": "2000-01-01"})
    assert answer.headers["content-type"].startswith("text/csv") and "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert sum(int(r["cost_micros"]) for r in rows) == report["totals"]["cost_micros"]
    assert client.get("/admin/reports/usage", headers=ADMIN, params={"group_by": "colour"}).status_code == 400
    assert client.get("/admin/reports/usage", headers=ADMIN, params={"since": "yesterday"}).status_code == 400
    assert client.get("/admin/reports/usage", headers=ADMIN, params={"since": "2999-01-01"}).json()["rows"] == []


def test_a_tenant_reads_its_own_usage_and_nothing_of_others(gw):
    client, _ = gw
    a_id, a = make_tenant(client, "acme")
    b_id, b = make_tenant(client, "globex")
    client.put("/admin/budgets", headers=ADMIN, json={"tenant_id": a_id, "limit_micros": 1_000_000})
    client.put("/admin/budgets", headers=ADMIN, json={"tenant_id": b_id, "limit_micros": 2_000_000})
    mine = [complete(client, a, 3).headers["x-request-id"] for _ in range(2)]
    theirs = complete(client, b, 3).headers["x-request-id"]
    own = client.get("/v1/usage", headers=bearer(a), params={"tenant_id": b_id}).json()
    assert own["tenant"] == "acme"
    assert sorted(r["request_id"] for r in own["records"]) == sorted(mine) and theirs not in str(own)
    assert {r["tenant_id"] for r in own["records"]} == {a_id}
    assert [x["limit_micros"] for x in own["budgets"]] == [1_000_000]
    assert own["totals"]["requests"] == 2 and own["totals"]["cost_micros"] == own["budgets"][0]["spent_micros"]
    assert client.get("/v1/usage").status_code == 401
    assert client.get("/admin/usage", headers=bearer(a)).status_code == 401


def test_rate_limits_answer_429_with_retry_after_and_openai_headers(gw):
    client, _ = gw
    _, key = make_tenant(client, "acme", rpm=2, tpm=1000)
    first = complete(client, key)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 12 - 5)
    complete(client, key)
    refused = complete(client, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_nul_bytes_and_ids_past_the_columns_are_4xx_error_objects_never_500(db_url):
    app, billing = gateway_app(db_url)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        tenant_id, _ = make_tenant(client, "acme")
        answers = [client.post("/admin/tenants", headers=ADMIN, json={"name": "ac\u0000me"}),
                   client.post(f"/admin/tenants/{tenant_id}/keys", headers=ADMIN, json={"name": "k\u0000"}),
                   client.patch(f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"allowed_models": ["a\u0000"]}),
                   client.put("/admin/prices/bad%00model", headers=ADMIN,
                              json={"input_micros_per_m": 1, "cached_input_micros_per_m": 1, "output_micros_per_m": 1})]
        for huge in (2**31, 2**63, 2**64 + 1, 10**30):
            answers += [client.get(f"/admin/tenants/{huge}", headers=ADMIN),
                        client.patch(f"/admin/tenants/{huge}", headers=ADMIN, json={"rpm": 5}),
                        client.post(f"/admin/tenants/{huge}/keys", headers=ADMIN, json={}),
                        client.get(f"/admin/tenants/{huge}/keys", headers=ADMIN),
                        client.patch(f"/admin/keys/{huge}", headers=ADMIN, json={"rpm": 5}),
                        client.delete(f"/admin/keys/{huge}", headers=ADMIN),
                        client.delete(f"/admin/budgets/{huge}", headers=ADMIN),
                        client.put("/admin/budgets", headers=ADMIN, json={"tenant_id": huge, "limit_micros": 1}),
                        client.put("/admin/budgets", headers=ADMIN,
                                   json={"tenant_id": tenant_id, "key_id": huge, "limit_micros": 1}),
                        client.get("/admin/budgets", headers=ADMIN, params={"tenant_id": huge}),
                        client.get("/admin/alerts", headers=ADMIN, params={"tenant_id": huge}),
                        client.get("/admin/usage", headers=ADMIN, params={"tenant_id": huge}),
                        client.get("/admin/reports/usage", headers=ADMIN, params={"tenant_id": huge})]
        for answer in answers:
            assert answer.status_code == 400, (answer.request.url, answer.status_code, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
        assert client.get("/admin/tenants/999", headers=ADMIN).status_code == 404
        assert [t["name"] for t in client.get("/admin/tenants", headers=ADMIN).json()] == ["acme"]
    billing.close()


def test_the_openapi_document_lists_each_admin_routes_errors_and_response_models(gw):
    client, _ = gw
    doc = client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        if not (path.startswith("/admin") or path == "/v1/usage"):
            continue
        for method, op in operations.items():
            assert {"401", "503"} <= set(op["responses"]), (method, path)
            ok = next(code for code in op["responses"] if code.startswith("2"))
            if "_id}" in path:  # an id in the path: out of range (400) or unknown (404)
                assert {"400", "404"} <= set(op["responses"]), (method, path)
            if ok != "204":
                assert op["responses"][ok]["content"]["application/json"]["schema"], (method, path)
    tenant = doc["components"]["schemas"]["TenantPublic"]["properties"]
    assert {"id", "name", "allowed_models", "store_prompts"} <= set(tenant)
    assert "key" in doc["components"]["schemas"]["KeyCreated"]["properties"]
    assert "key" not in doc["components"]["schemas"]["KeyPublic"]["properties"]
