"""/metrics: closed by default, every refusal counted by reason and requested model, the Live page's error share
counting them, and with `serve --workers 2` one scrape summing both workers."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.base import BackendUnavailable
from backends.echo import EchoBackend
from billing import Billing
from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.test_proxy_wire import CountingUpstream
from tests.gateway.test_workers import REDIS, _wait_ready
from tests.harness import free_port, gateway_app
from tests.util import serve

METRICS_KEY = "fm-metrics-test-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Down(EchoBackend):
    async def generate(self, request):
        raise BackendUnavailable("every replica is down")
        yield


def scrape(url: str, key: str = METRICS_KEY) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def refused(samples: dict, reason: str, model: str) -> float:
    return samples.get(("ferryman_rejected_total", (("model", model), ("reason", reason))), 0.0)


@pytest.fixture
def gateway(tmp_path, tokenizer):
    backends = {"ferryman-small": EchoBackend("ferryman-small", tokenizer.decode, delay_s=0.01),
                "ferryman-large": Down("ferryman-large")}
    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, backends=backends,
                         metrics_key=METRICS_KEY)
    with serve(wiring.app) as url:
        yield url, wiring.billing


def test_metrics_are_closed_to_tenants_and_open_to_the_metrics_key_and_the_admin_key(gateway):
    url, billing = gateway
    tenant_key, _ = billing.create_key(billing.create_tenant("acme")["id"])
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {tenant_key}"}).status_code == 401
    assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer fm-metrics-test-kex"}).status_code == 401
    assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).status_code == 200
    assert httpx.get(f"{url}/metrics", headers=ADMIN).status_code == 200


def ask(url: str, key: str, model: str = "ferryman-small", max_tokens: int = 4, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
                            "stream": stream})


@pytest.mark.slow
def test_every_refusal_is_counted_by_reason_and_model_and_in_the_live_error_share(gateway):
    url, billing = gateway
    keys = {}
    for name in ("limited", "broke", "held", "narrow", "plain"):
        tenant = billing.create_tenant(name)
        keys[name] = billing.create_key(tenant["id"], "k", rpm=1 if name == "limited" else None)[0]
        if name == "broke":
            billing.set_budget(tenant["id"], limit_micros=0)
        if name == "held":
            held_tenant = tenant["id"]
        if name == "narrow":
            billing.update_tenant(tenant["id"], allowed_models=["ferryman-small"])
    httpx.get(f"{url}/admin/live", headers=ADMIN)  # the live view's baseline
    before = scrape(url)

    assert ask(url, keys["limited"]).status_code == 200
    assert ask(url, keys["limited"]).status_code == 429
    assert ask(url, keys["broke"]).status_code == 402
    # one long stream holds the budget; the same request again fits only once it settles: 402 budget_held
    billing.set_budget(held_tenant, limit_micros=10**9)
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['held']}"},
                      json={"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 300, "stream": True}, timeout=30) as stream:
        lines = stream.iter_lines()
        next(lines)
        [budget] = billing.list_budgets(held_tenant)
        billing.set_budget(held_tenant, limit_micros=budget["reserved_micros"] + 1)
        held = ask(url, keys["held"], max_tokens=300)
        for _ in lines:
            pass
    assert held.status_code == 402
    assert held.json()["error"]["code"] == "budget_held"
    assert ask(url, keys["narrow"], model="ferryman-large").status_code == 403
    assert ask(url, keys["plain"], max_tokens=10**6).status_code == 400
    assert ask(url, keys["plain"], model="no-such-model").status_code == 404
    assert httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['plain']}"},
                      content=b"{not json").status_code == 400
    assert ask(url, keys["plain"], model="ferryman-large").status_code == 503  # its only backend is down
    assert ask(url, "fm-wrong").status_code == 401

    after = scrape(url)
    counted = {(reason, model): refused(after, reason, model) - refused(before, reason, model) for reason, model in (
        ("rate_limited", "ferryman-small"), ("budget_exceeded", "ferryman-small"), ("budget_held", "ferryman-small"),
        ("forbidden_model", "ferryman-large"), ("bad_request", "ferryman-small"), ("bad_request", ""),
        ("unavailable", "ferryman-large"), ("unauthorized", ""))}
    assert counted == {("rate_limited", "ferryman-small"): 1, ("budget_exceeded", "ferryman-small"): 1,
                       ("budget_held", "ferryman-small"): 1, ("forbidden_model", "ferryman-large"): 1,
                       ("bad_request", "ferryman-small"): 1, ("bad_request", ""): 2,
                       ("unavailable", "ferryman-large"): 1, ("unauthorized", ""): 1}  # no key: the body is never read
    assert "no-such-model" not in httpx.get(f"{url}/metrics", headers=ADMIN).text  # labels stay bounded

    live = httpx.get(f"{url}/admin/live", headers=ADMIN).json()
    # settled: 2 ok, 1 `unavailable` (the down model's try); refused: the 9 above
    assert live["error_share"] == pytest.approx(10 / 12)


@pytest.mark.slow
@pytest.mark.redis
def test_one_scrape_sums_both_workers(tmp_path):
    upstream = CountingUpstream()
    (tmp_path / "catalog.yaml").write_text(f"models:\n  - name: up\n    kind: openai\n"
                                           f"    base_url: http://127.0.0.1:{upstream.port}/v1\n"
                                           f"    price: {{input: 1.0, cached_input: 0.5, output: 2.0}}\n")
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    billing = Billing(database)
    billing.create_schema()
    billing.ensure_admin_defaults()
    key, _ = billing.create_key(billing.create_tenant("two-workers")["id"], "test")
    port = free_port()
    env = {**os.environ, "FERRYMAN_DATABASE_URL": database, "FERRYMAN_REDIS_URL": REDIS,
           "FERRYMAN_REDIS_PREFIX": f"fm-test-{tmp_path.name}", "FERRYMAN_METRICS_KEY": METRICS_KEY}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ferryman = Path(sys.executable).parent / "ferryman"
    proc = subprocess.Popen([str(ferryman), "serve", "--workers", "2", "--port", str(port),
                             "--config", str(tmp_path / "catalog.yaml")], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(port, proc)
        for i in range(24):  # a fresh connection each, so the kernel spreads them over both workers
            r = ask(url, key, model="up")
            assert r.status_code == 200, r.text
        for _ in range(4):
            assert ask(url, key, model="no-such-model").status_code == 404
        totals = []
        for _ in range(6):  # each scrape lands on either worker: every one must show all of them
            samples = scrape(url)
            totals.append((samples[("ferryman_requests_total", (("route", "up"), ("status", "ok")))],
                           refused(samples, "bad_request", "")))
        # each worker keeps its own keep-alive connection to the upstream: two or more means both served
        assert upstream.connections >= 2
        assert totals == [(24.0, 4.0)] * 6
    finally:
        proc.terminate()
        proc.wait(60)
