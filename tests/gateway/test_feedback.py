"""POST /v1/feedback: a tenant grades its own requests only; the grade lands on the usage record."""
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.gateway.conftest import ADMIN_KEY


def complete(gw, key=None, prompt="hello"):
    r = httpx.post(f"{gw.url}/v1/completions", headers={"Authorization": f"Bearer {key or gw.api_key}"},
                   json={"model": "auto", "prompt": prompt, "max_tokens": 3})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def feedback(gw, key, **body):
    return httpx.post(f"{gw.url}/v1/feedback", headers={"Authorization": f"Bearer {key}"}, json=body)


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_feedback_is_stored_with_the_usage_record(gateway):
    request_id = complete(gateway)
    per_group = {"group": "auto", "tenant": ""}  # every tenant together: per-tenant series are off by default
    before = sample("ferryman_feedback_score_count", **per_group), sample("ferryman_feedback_score_sum", **per_group)
    r = feedback(gateway, gateway.api_key, request_id=request_id, score=0.75, comment="close, but terse")
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "feedback", "request_id": request_id, "score": 0.75}
    [record] = [x for x in gateway.records() if x["request_id"] == request_id]
    assert record["feedback_score"] == 0.75
    assert record["feedback_comment"] == "close, but terse"
    assert record["route_group"] == "auto"
    metrics = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    labels = 'group="auto",tenant=""'
    assert f"ferryman_feedback_score_count{{{labels}}} {before[0] + 1}" in metrics
    assert f"ferryman_feedback_score_sum{{{labels}}} {before[1] + 0.75}" in metrics
    assert 'tenant="acme"' not in metrics
    assert f'tenant="{gateway.tenant_id}"' not in metrics


def test_another_tenants_request_is_a_404_and_changes_nothing(gateway):
    request_id = complete(gateway)
    other = gateway.billing.create_tenant("rival")
    rival_key, _ = gateway.billing.create_key(other["id"], "k")
    r = feedback(gateway, rival_key, request_id=request_id, score=0.0)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "request_not_found"
    assert feedback(gateway, gateway.api_key, request_id="req-none", score=1.0).status_code == 404
    [record] = [x for x in gateway.records() if x["request_id"] == request_id]
    assert record["feedback_score"] is None


def test_bad_feedback_is_refused(gateway):
    request_id = complete(gateway)
    for body in ({"request_id": request_id, "score": 1.5}, {"request_id": request_id}, {"score": 0.5}):
        r = feedback(gateway, gateway.api_key, **body)
        assert r.status_code == 400
        assert "error" in r.json()
    assert feedback(gateway, "fm-wrong", request_id=request_id, score=0.5).status_code == 401


@contextmanager
def general_gateway(tmp_path, tokenizer, metrics_tenants=False, **target):
    """A served gateway routing `auto` with the shipped general router; one tenant with the given target."""
    from classifier.router import Router
    from tests.harness import gateway_app
    from tests.util import serve

    wiring = gateway_app(f"sqlite:///{tmp_path / 'l.db'}", tokenizer=tokenizer, router=Router.load("general"),
                         admin_key=ADMIN_KEY, metrics_tenants=metrics_tenants)
    tenant = wiring.billing.create_tenant("acme", **target)
    key, _ = wiring.billing.create_key(tenant["id"], "k")
    with serve(wiring.app) as url:
        yield SimpleNamespace(url=url, api_key=key), wiring.billing, tenant


def targets(url):
    return httpx.get(f"{url}/admin/router/targets", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()


def test_admin_sees_realised_share_against_target_and_feedback(tmp_path, tokenizer):
    with general_gateway(tmp_path, tokenizer, metrics_tenants=True, large_share=0.25) as (gw, billing, tenant):
        url, key = gw.url, gw.api_key
        ids = [complete(gw, prompt=f"What is {i} times {i * 7}?") for i in range(8)]
        pinned = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "ferryman-small", "prompt": "hi", "max_tokens": 3}).headers["x-request-id"]
        for request_id, score in ((ids[0], 0.5), (ids[1], 0.25), (pinned, 1.0)):
            assert feedback(gw, key, request_id=request_id, score=score).status_code == 200
        [row] = targets(url)
        assert httpx.get(f"{url}/admin/router/targets").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert row["group"] == "auto"
    assert row["tenant_id"] == str(tenant["id"])
    assert row["window"] == 8
    routed = [r["route"] for r in billing.usage(tenant["id"]) if r["route_group"] == "auto"]
    assert row["target_share"] == 0.25
    assert row["realised_share"] == routed.count("ferryman-large") / 8
    assert len(routed) == 8
    # the pinned request's grade belongs to no route group: not in the group's quality
    assert (row["feedback_quality"], row["feedback_count"]) == (0.375, 2)
    labels = 'group="auto",tenant="acme"'  # FERRYMAN_METRICS_TENANTS=true: the tenant's name, never its id
    assert f"ferryman_router_strong_share_target{{{labels}}} 0.25" in metrics
    assert f"ferryman_router_strong_share{{{labels}}} {row['realised_share']}" in metrics
    assert f"ferryman_router_feedback_quality{{{labels}}} 0.375" in metrics
    assert 'ferryman_feedback_score_count{group="",tenant="acme"}' in metrics


def test_feedback_joins_its_groups_window_marked_by_the_tier_that_answered(tmp_path, tokenizer):
    from tests.gateway.conftest import make_gateway
    from tests.util import serve

    app, _, tenant_id, key, _ = make_gateway(tmp_path, tokenizer)
    with serve(app) as url:
        gw = SimpleNamespace(url=url, api_key=key)
        small, large = complete(gw, prompt="short"), complete(gw, prompt="a long question " * 5)  # LengthRouter
        for request_id, score in ((small, 0.25), (large, 1.0)):
            assert feedback(gw, key, request_id=request_id, score=score).status_code == 200
    window = app.state.ferry.routing.live.window("auto", str(tenant_id))
    assert list(window.feedback) == [(False, 0.25), (True, 1.0)]  # what a quality_floor's correction reads


@pytest.mark.slow
def test_feedback_on_weak_answers_raises_a_quality_floors_strong_share(tmp_path, tokenizer):
    from classifier.live import FEEDBACK_SHIFT, LiveTargets, MIN_STRONG_FEEDBACK, MIN_WEAK_FEEDBACK
    from classifier.router import Router

    calibrated = LiveTargets.share_for(Router.load("general"), 0.95, None)
    with general_gateway(tmp_path, tokenizer, quality_floor=0.95) as (gw, billing, tenant):
        for i in range(160):
            complete(gw, prompt=f"Question {i}: what is {i * 37} plus {i * i}?" + " Show every step." * (i % 4))
        [before] = targets(gw.url)
        graded = {"ferryman-small": 0, "ferryman-large": 0}
        for record in billing.usage(tenant["id"], limit=1000):  # tenants rate the small model's answers poorly
            graded[record["model"]] += 1
            score = 0.9 if record["model"] == "ferryman-large" else 0.3
            assert feedback(gw, gw.api_key, request_id=record["request_id"], score=score).status_code == 200
        assert graded["ferryman-small"] >= MIN_WEAK_FEEDBACK
        assert graded["ferryman-large"] >= MIN_STRONG_FEEDBACK
        complete(gw, prompt="One more question, routed with the feedback in hand.")
        [after] = targets(gw.url)
    assert before["target_share"] == pytest.approx(calibrated)
    # weak answers keep a third of the strong quality: the floor would need 92.5% strong, held to calibrated + 0.25
    assert after["target_share"] == pytest.approx(min(1.0, calibrated + FEEDBACK_SHIFT))
    assert after["feedback_count"] == 160
