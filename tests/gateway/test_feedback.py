"""POST /v1/feedback: a tenant grades its own requests only; the grade lands on the usage record."""
from types import SimpleNamespace

import httpx


def complete(gw, key=None, prompt="hello"):
    r = httpx.post(f"{gw.url}/v1/completions", headers={"Authorization": f"Bearer {key or gw.api_key}"},
                   json={"model": "auto", "prompt": prompt, "max_tokens": 3})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def feedback(gw, key, **body):
    return httpx.post(f"{gw.url}/v1/feedback", headers={"Authorization": f"Bearer {key}"}, json=body)


def test_feedback_is_stored_with_the_usage_record(gateway):
    request_id = complete(gateway)
    r = feedback(gateway, gateway.api_key, request_id=request_id, score=0.75, comment="close, but terse")
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "feedback", "request_id": request_id, "score": 0.75}
    [record] = [x for x in gateway.records() if x["request_id"] == request_id]
    assert record["feedback_score"] == 0.75 and record["feedback_comment"] == "close, but terse"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'ferryman_feedback_score_count{{tenant="{gateway.tenant_id}"}} 1.0' in metrics


def test_another_tenants_request_is_a_404_and_changes_nothing(gateway):
    request_id = complete(gateway)
    other = gateway.billing.create_tenant("rival")
    rival_key, _ = gateway.billing.create_key(other["id"], "k")
    r = feedback(gateway, rival_key, request_id=request_id, score=0.0)
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    assert feedback(gateway, gateway.api_key, request_id="req-none", score=1.0).status_code == 404
    [record] = [x for x in gateway.records() if x["request_id"] == request_id]
    assert record["feedback_score"] is None


def test_bad_feedback_is_refused(gateway):
    request_id = complete(gateway)
    for body in ({"request_id": request_id, "score": 1.5}, {"request_id": request_id}, {"score": 0.5}):
        r = feedback(gateway, gateway.api_key, **body)
        assert r.status_code == 400 and "error" in r.json()
    assert feedback(gateway, "fm-wrong", request_id=request_id, score=0.5).status_code == 401


def test_admin_sees_realised_share_against_target_and_feedback(tmp_path, tokenizer):
    from backends.echo import EchoBackend
    from billing import Billing, RateLimiter
    from classifier.router import Router
    from gateway.app import create_app
    from gateway.config import Settings
    from tests.gateway.conftest import ADMIN_KEY
    from tests.util import serve

    config = Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}", admin_key=ADMIN_KEY)
    billing = Billing(config.database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    tenant = billing.create_tenant("acme", large_share=0.25)
    key, _ = billing.create_key(tenant["id"], "k")
    backends = {n: EchoBackend(n, tokenizer.decode, 0.0) for n in ("ferryman-small", "ferryman-large")}
    app = create_app(config, billing=billing, limiter=RateLimiter(), router=Router.load("general"),
                     backends=backends, tokenizer=tokenizer)
    with serve(app) as url:
        gw = SimpleNamespace(url=url, api_key=key)
        ids = [complete(gw, prompt=f"What is {i} times {i * 7}?") for i in range(8)]
        assert feedback(gw, key, request_id=ids[0], score=0.5).status_code == 200
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        [row] = httpx.get(f"{url}/admin/router/targets", headers=admin).json()
        assert httpx.get(f"{url}/admin/router/targets").status_code == 401
    assert row["group"] == "auto" and row["tenant_id"] == str(tenant["id"]) and row["window"] == 8
    assert row["target_share"] == 0.25 and 0.0 <= row["realised_share"] <= 1.0
    assert row["feedback_quality"] == 0.5
