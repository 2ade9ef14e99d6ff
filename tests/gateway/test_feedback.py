"""POST /v1/feedback: a tenant grades its own requests only; the grade lands on the usage record."""
import httpx


def complete(gw, key=None):
    r = httpx.post(f"{gw.url}/v1/completions", headers={"Authorization": f"Bearer {key or gw.api_key}"},
                   json={"model": "auto", "prompt": "hello", "max_tokens": 3})
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
