"""The JSON the admin page reads beyond the admin API proper (/admin/live, /admin/spend), and how the page
itself is served: no browser needed."""
import math
import re

import httpx
import pytest

from gateway.live_view import LiveWindow, quantile, registry_snapshot
from gateway.api.ui import STATIC
from tests.ui.helpers import ADMIN


def chat(client: httpx.Client, key: str, text: str = "hi", max_tokens: int = 3) -> httpx.Response:
    return client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})


def test_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.95, buckets) == pytest.approx(0.75)
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.05)
    assert quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.95, {0.1: 1.0, 1.0: 1.0, math.inf: 10.0}) == 1.0  # beyond the last bucket: its bound


def test_live_window_keeps_a_baseline_about_one_window_old():
    window = LiveWindow(window_s=10)
    assert window.add(0.0, {"n": 0}) == (0.0, {"n": 0})
    assert window.add(4.0, {"n": 1})[0] == 0.0
    assert window.add(11.0, {"n": 2})[0] == 0.0  # the newest snapshot at least 10 s old
    assert window.add(15.0, {"n": 3})[0] == 4.0
    assert window.add(40.0, {"n": 4})[0] == 15.0  # a long pause: the last one before it, never nothing


def test_live_reports_rate_latency_errors_and_engines(bare_gateway):
    from backends.engine import metrics as engine

    url, billing = bare_gateway
    tenant = billing.create_tenant("live")
    key = billing.create_key(tenant["id"])[0]
    engine.KV_USAGE.labels("live-test-engine").set(0.375)
    engine.RUNNING.labels("live-test-engine").set(3)
    engine.WAITING.labels("live-test-engine").set(2)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/admin/live").status_code == 401
            first = client.get("/admin/live", headers=ADMIN).json()
            assert first["requests_per_s"] is None and first["window_s"] == 0
            before = registry_snapshot()["requests"]
            for i in range(8):
                assert chat(client, key, "x" * (10 + 60 * (i % 2))).status_code == 200  # both routes
            engine.GENERATED.labels("live-test-engine").inc(50)
            live = client.get("/admin/live", headers=ADMIN).json()
    finally:
        for gauge in (engine.KV_USAGE, engine.RUNNING, engine.WAITING, engine.GENERATED):
            gauge.remove("live-test-engine")
    assert live["requests_total"] - before == 8 and live["window_s"] > 0
    assert live["requests_per_s"] == pytest.approx(8 / live["window_s"], rel=1e-3)
    assert 0 < live["p95_latency_s"] <= 0.5 and live["error_share"] == 0.0
    row = next(e for e in live["engines"] if e["model"] == "live-test-engine")
    assert (row["kv_cache_usage"], row["running"], row["waiting"]) == (0.375, 3, 2)
    assert row["tokens_per_s"] == pytest.approx(50 / live["window_s"], rel=1e-3)


def test_spend_sets_each_tenant_beside_its_budget(bare_gateway):
    url, billing = bare_gateway
    capped, free = billing.create_tenant("capped"), billing.create_tenant("free")
    billing.set_budget(capped["id"], limit_micros=50_000, period="daily")
    keys = {t["id"]: billing.create_key(t["id"])[0] for t in (capped, free)}
    with httpx.Client(base_url=url, timeout=30) as client:
        costs = {t: sum(int(round(float(chat(client, k).headers["x-ferryman-cost-usd"]) * 1e6)) for _ in range(3))
                 for t, k in keys.items()}
        assert client.get("/admin/spend").status_code == 401
        rows = {r["tenant"]: r for r in client.get("/admin/spend", headers=ADMIN).json()}
    assert rows["capped"]["period"] == "daily" and rows["free"]["period"] == "monthly"
    assert rows["capped"]["requests"] == rows["free"]["requests"] == 3
    assert rows["capped"]["cost_micros"] == costs[capped["id"]] == rows["capped"]["budget"]["spent_micros"]
    assert rows["capped"]["budget"]["limit_micros"] == 50_000
    assert rows["free"]["cost_micros"] == costs[free["id"]] and rows["free"]["budget"] is None


def test_page_and_assets_are_served_with_a_strict_policy(bare_gateway):
    url, _ = bare_gateway
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/admin", "/admin/"):
            page = client.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert '<script src="/admin/ui/app.js"' in page.text
        assert client.get("/admin/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/admin/ui/style.css").headers["content-type"].startswith("text/css")
        for bad in ("/admin/ui/nope.js", "/admin/ui/..%2F..%2Fadmin.py", "/admin/ui/.hidden.js", "/admin/ui/index"):
            answer = client.get(bad)
            assert answer.status_code == 404 and "secret" not in answer.text
        assert client.get("/admin/tenants").status_code == 401  # the JSON API beside the page is untouched


def test_nothing_is_fetched_from_elsewhere():
    """No CDN, font service or external script: the page must work on a machine without internet."""
    for path in STATIC.iterdir():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
