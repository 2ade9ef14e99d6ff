"""Logs an operator can use: one access-log line per request (JSON option) without the prompt; warnings when a
request falls back, a replica goes down or comes back, a breaker opens or closes; health probes logged only on
a change of state."""
from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from backends.base import BackendUnavailable
from backends.echo import EchoBackend
from backends.remote import RemoteBackend
from gateway.logs import JSONFormatter
from tests.gateway.conftest import make_gateway
from tests.gateway.test_alert_webhook import spend_past_the_threshold
from tests.harness import echo_backends, free_port, gateway_app
from tests.util import serve

SECRET_PROMPT = "the launch code is 0451"


def access_lines(caplog) -> list[dict]:
    return [json.loads(JSONFormatter().format(r)) for r in caplog.records if r.name == "ferryman.access"]


def test_one_json_access_line_per_request_with_who_what_cost_and_no_prompt(tmp_path, tokenizer, caplog):
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer)
    caplog.set_level(logging.INFO, logger="ferryman.access")
    with serve(app) as url:
        ok = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": "ferryman-small", "max_tokens": 3,
                              "messages": [{"role": "user", "content": SECRET_PROMPT}]})
        refused = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer fm-nobody"},
                             json={"model": "auto", "messages": [{"role": "user", "content": SECRET_PROMPT}]})
        httpx.get(f"{url}/health")
    assert ok.status_code == 200
    assert refused.status_code == 401
    lines = access_lines(caplog)
    assert [(line["path"], line["status"]) for line in lines] == [("/v1/chat/completions", 200),
                                                                  ("/v1/chat/completions", 401)]
    served, unauthorized = lines
    [record] = billing.usage(tenant_id)
    assert served["request_id"] == ok.headers["x-request-id"] == record["request_id"]
    assert served["tenant"] == "acme"
    assert served["model"] == "ferryman-small"
    assert served["outcome"] == "ok"
    assert (served["prompt_tokens"], served["completion_tokens"]) == (record["prompt_tokens"], 3)
    assert served["cost_usd"] == record["cost_micros"] / 1e6 == float(ok.headers["x-ferryman-cost-usd"])
    assert served["latency_ms"] > 0
    assert served["fallback_from"] is None
    assert unauthorized["tenant"] is None
    assert unauthorized["model"] is None  # refused before its body was read
    text = caplog.text + "".join(JSONFormatter().format(r) for r in caplog.records)
    assert SECRET_PROMPT not in text
    assert key not in text


class Down(EchoBackend):
    async def generate(self, request):
        raise BackendUnavailable("every replica is down")
        yield


def test_a_fallback_is_a_warning_and_in_the_access_line(tmp_path, tokenizer, caplog):
    # the embedded `auto` group: a short question goes to the small model first, the large one if it is down
    backends = echo_backends(tokenizer.decode) | {"ferryman-small": Down("ferryman-small")}
    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, backends=backends)
    _, key = wiring.tenant()
    caplog.set_level(logging.INFO)
    with serve(wiring.app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "ferryman.routing"]
    assert warnings == ["model ferryman-small unavailable (The model 'ferryman-small' is unavailable right now: "
                        "every replica is down); the request falls back to ferryman-large"]
    [line] = [x for x in access_lines(caplog) if x["path"] == "/v1/chat/completions"]
    assert line["fallback_from"] == "ferryman-small"
    assert line["model"] == "ferryman-large"
    assert line["route_group"] == "auto"


def test_replica_health_is_logged_only_when_it_changes_and_breakers_say_open_and_closed(caplog):
    caplog.set_level(logging.INFO, logger="ferryman")
    answers = iter([200, 200, 503, 503, 503, 200, 200])

    def handler(request):
        return httpx.Response(next(answers))

    async def probe_seven_times():
        backend = RemoteBackend("large", ["http://replica-1", "http://replica-2"])
        backend.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        for _ in range(7):
            await backend._check(backend.replicas[0])
        await backend.client.aclose()
        return backend

    backend = asyncio.run(probe_seven_times())
    assert [r.getMessage() for r in caplog.records] == [
        "replica http://replica-1 of large: health probe failed: health check: HTTP 503",
        "replica http://replica-1 of large: health probe answers again"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)

    caplog.clear()
    breaker = backend.replicas[1].breaker  # the breaker every remote model uses (backends/breaker.py)
    for _ in range(4):
        breaker.failed("HTTP 500")
    breaker.succeeded()
    breaker.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "replica http://replica-2 of large: circuit open for 5 s after 3 failures in a row: HTTP 500",
        "replica http://replica-2 of large: circuit closed (answered again)"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.slow
def test_engine_serve_logs_its_start_requests_at_debug_and_its_drain(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    err = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ferryman"), "engine", "serve", "--model",
                             str(root / "models" / "small"), "--name", "tiny", "--port", str(port)],
                            env={**os.environ, "FERRYMAN_LOG_LEVEL": "debug", "FERRYMAN_LOG_FORMAT": "json"},
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2})
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(x) for x in (tmp_path / "stderr").read_text().splitlines() if x.startswith("{")]
    replica = [x["message"] for x in lines if x["logger"] == "ferryman.replica"]
    assert replica[0].startswith(f"engine replica tiny on http://127.0.0.1:{port}: model ")
    assert "quantization none" in replica[0]
    assert " KV blocks of " in replica[0]
    assert any(m.startswith("request cmpl-") and "3 prompt tokens, max_tokens 2" in m for m in replica)
    assert {x["level"] for x in lines if x["message"].startswith("request cmpl-")} == {"debug"}
    assert replica[-2:] == ["draining: 0 request(s) in flight, 30 s grace", "drained, exiting"]


def test_an_upstreams_breaker_and_health_are_warnings_both_ways(caplog):
    from backends.breaker import Breaker

    caplog.set_level(logging.INFO, logger="ferryman.breaker")
    breaker = Breaker("upstream gpt", threshold=2, cooldown_s=5.0)
    for _ in range(3):
        breaker.failed("HTTP 502")
    breaker.succeeded()
    breaker.probed(False, "HTTP 503")
    breaker.probed(False, "HTTP 503")  # no change: no line
    breaker.probed(True)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "upstream gpt: circuit open for 5 s after 2 failures in a row: HTTP 502"),
        (logging.WARNING, "upstream gpt: circuit closed (answered again)"),
        (logging.WARNING, "upstream gpt: health probe failed: HTTP 503"),
        (logging.WARNING, "upstream gpt: health probe answers again")]


def test_a_budget_alert_is_one_warning(tmp_path, tokenizer, caplog):
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer)
    budget = billing.set_budget(tenant_id, limit_micros=2_000, alert_percents=[1])
    caplog.set_level(logging.INFO, logger="ferryman.billing")
    with serve(app) as url:
        spend_past_the_threshold(url, key, billing, tenant_id)
        for _ in range(3):  # more spend in the same period crosses nothing new
            r = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 4})
            assert r.status_code == 200
    [alert] = billing.list_alerts(tenant_id)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"budget {budget['id']} reached its 1% alert for {alert['period_key']}: "
        f"${alert['spent_micros'] / 1e6:.6f} spent of $0.002000"]
