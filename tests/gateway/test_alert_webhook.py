"""Budget alerts reach a webhook as Slack-compatible JSON, once per budget and period, through a real gateway and a
local HTTP receiver; a receiver that refuses gets the alert again later; replicas never send one alert twice."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from gateway import alerts
from tests.gateway.conftest import ADMIN_KEY, make_gateway
from tests.util import serve


class Receiver:
    """A webhook endpoint on a loopback port: keeps each JSON body; answers `refuse` with 500 first."""

    def __init__(self, refuse: int = 0):
        self.bodies: list[dict] = []
        self.refuse = refuse
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.bodies.append(body)
                status = 500 if len(receiver.bodies) <= receiver.refuse else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []
    yield lambda refuse=0: made.append(Receiver(refuse)) or made[-1]
    for r in made:
        r.close()


def until(predicate, timeout_s: float = 30.0):
    """Wait for what a background loop does; generous, since a loaded machine is slow, never a speed claim."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def spend_past_the_threshold(url: str, key: str, billing, tenant_id: int) -> None:
    while not billing.list_alerts(tenant_id):
        response = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 4})
        assert response.status_code == 200


def test_an_alert_is_posted_once_with_its_exact_figures(tmp_path, tokenizer, receiver):
    hook = receiver()
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer, alert_webhook_url=hook.url, alert_poll_s=0.05)
    billing.set_budget(tenant_id, limit_micros=2_000, alert_percents=[1])
    with serve(app) as url:
        spend_past_the_threshold(url, key, billing, tenant_id)
        until(lambda: hook.bodies)
        for _ in range(3):  # more spend in the same period crosses no new threshold
            httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 4})
        until(lambda: billing.list_alerts(tenant_id)[0]["sent_at"] is not None)
        time.sleep(0.5)  # ten more rounds of the sender: nothing more to send
        listed = httpx.get(f"{url}/admin/alerts", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    [alert] = billing.list_alerts(tenant_id)
    [body] = hook.bodies
    assert body["tenant"] == "acme"
    assert body["period_key"] == alert["period_key"]
    assert (body["spent_micros"], body["limit_micros"], body["alert_percent"]) == (alert["spent_micros"], 2_000, 1)
    assert "acme" in body["text"]
    assert f"$0.{alert['spent_micros']:06d} of its $0.002000 budget" in body["text"]
    assert listed[0]["tenant"] == "acme"
    assert listed[0]["sent_at"] is not None


def test_a_refused_alert_is_sent_again_once_its_claim_lapses(tmp_path, tokenizer, receiver, monkeypatch):
    monkeypatch.setattr(alerts, "CLAIM_S", 0.3)
    hook = receiver(refuse=1)
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer, alert_webhook_url=hook.url, alert_poll_s=0.05)
    billing.set_budget(tenant_id, limit_micros=2_000, alert_percents=[1])
    with serve(app) as url:
        spend_past_the_threshold(url, key, billing, tenant_id)
        until(lambda: billing.list_alerts(tenant_id)[0]["sent_at"] is not None)
    assert len(hook.bodies) == 2  # refused once, delivered once
    assert hook.bodies[0] == hook.bodies[1]


def test_two_replicas_never_claim_the_same_alert(tmp_path, tokenizer):
    _, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer)
    budget = billing.set_budget(tenant_id, limit_micros=100, alert_percents=[1])
    principal = billing.authenticate(key)
    billing.settle(billing.reserve(principal, "r1", "ferryman-small", 10, 10), prompt_tokens=10, completion_tokens=10)
    first, second = billing.claim_alerts(60.0), billing.claim_alerts(60.0)
    assert [a["budget_id"] for a in first] == [budget["id"]]
    assert second == []
    billing.mark_alert_sent(first[0]["id"])
    assert billing.claim_alerts(0.0) == []  # sent: never taken again, claim or no claim


@pytest.mark.slow
def test_each_threshold_set_through_the_api_is_posted_once(tmp_path, tokenizer, receiver):
    """Thresholds 25, 50 and 90% set with PUT /admin/budgets: spend runs until the budget refuses, and the receiver
    gets exactly one message per threshold, in order, each saying its threshold and the spend that reached it."""
    hook = receiver()
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer, alert_webhook_url=hook.url, alert_poll_s=0.05)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with serve(app) as url:
        old = httpx.put(f"{url}/admin/budgets", headers=admin,
                        json={"tenant_id": tenant_id, "limit_micros": 300, "alert_percent": 80})
        assert old.status_code == 400
        assert "alert_percent" in old.json()["error"]["message"]
        for bad in ([0], [101], [50, "x"], list(range(1, 13))):
            answer = httpx.put(f"{url}/admin/budgets", headers=admin,
                               json={"tenant_id": tenant_id, "limit_micros": 300, "alert_percents": bad})
            assert answer.status_code == 400, bad
        assert billing.list_budgets(tenant_id) == []  # refusals change nothing
        made = httpx.put(f"{url}/admin/budgets", headers=admin,
                         json={"tenant_id": tenant_id, "limit_micros": 300, "alert_percents": [90, 25, 50, 50]})
        assert made.json()["alert_percents"] == [25, 50, 90]
        while httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 4}).status_code == 200:
            pass
        until(lambda: len(billing.list_alerts(tenant_id)) == 3
              and all(a["sent_at"] for a in billing.list_alerts(tenant_id)))
        time.sleep(0.5)  # ten more rounds of the sender: nothing more to send
        listed = httpx.get(f"{url}/admin/alerts", headers=admin).json()
    assert [b["alert_percent"] for b in hook.bodies] == [a["alert_percent"] for a in listed] == [25, 50, 90]
    for body, alert in zip(hook.bodies, listed):
        assert body["spent_micros"] == alert["spent_micros"] >= 300 * alert["alert_percent"] / 100
        assert f"its {alert['alert_percent']}% alert" in body["text"]
    assert billing.list_budgets(tenant_id)[0]["spent_micros"] >= 270
