"""Rolling restarts lose nothing (issue 19, point 10), with real processes: a gateway serving slow streams
(echo backends at 50 ms a token) gets SIGTERM mid-stream."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from billing import Billing
from tests.harness import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

GATEWAY = """
import sys
from transformers import AutoTokenizer
from gateway.drain import serve
from tests.harness import echo_backends, gateway_app

url, port, grace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained("models/large")
backends = echo_backends(tokenizer.decode, 0.05)
wiring = gateway_app(url, tokenizer=tokenizer, backends=backends, admin_key="fm-admin-drain", shutdown_grace_s=grace)
serve(wiring.app, "127.0.0.1", port)
"""


class Gateway:
    def __init__(self, tmp_path, grace_s: float):
        self.db = f"sqlite:///{tmp_path / 'ledger.db'}"
        self.billing = Billing(self.db)
        self.billing.create_schema()
        self.billing.ensure_admin_defaults()
        tenant = self.billing.create_tenant("acme")
        self.tenant_id, self.key = tenant["id"], self.billing.create_key(tenant["id"], "test")[0]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-c", GATEWAY, self.db, str(port), str(grace_s)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway did not start: {self.process.communicate()[0] if self.process.poll() else ''}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def records(self) -> list[dict]:
        return self.billing.usage(self.tenant_id)


class Stream(threading.Thread):
    """A client reading one streamed chat completion to its end; `started` is set after the third event."""

    def __init__(self, gw: Gateway, max_tokens: int):
        super().__init__(daemon=True)
        self.gw, self.max_tokens = gw, max_tokens
        self.events, self.ended_cleanly, self.started, self.request_id = [], False, threading.Event(), None

    def run(self):
        body = {"model": "ferryman-small", "messages": [{"role": "user", "content": "hello there"}],
                "max_tokens": self.max_tokens, "stream": True}
        with httpx.stream("POST", self.gw.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {self.gw.key}"}) as r:
            self.request_id = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    if len(self.events) == 3:
                        self.started.set()
        self.ended_cleanly = True  # the chunked body ended properly: no dropped connection

    def tokens(self) -> int:
        return sum(1 for e in self.events if e != "[DONE]" and json.loads(e).get("choices")
                   and json.loads(e)["choices"][0]["delta"].get("content"))


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path, grace_s=4.0)
    yield gw
    gw.stop()


def test_sigterm_drains_streams_in_flight_refuses_new_work_settles_each_and_exits_0(gateway):
    """One stream fits the 4 s grace period and completes; one (20 s of tokens) does not: it ends with an
    error event at the deadline and pays for exactly what was sent. Each has exactly one ledger record."""
    gw = gateway
    short, long = Stream(gw, max_tokens=20), Stream(gw, max_tokens=400)
    for stream in (short, long):
        stream.start()
        assert stream.started.wait(30)
    t = time.perf_counter()
    gw.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(gw.url + "/ready")
    assert ready.status_code == 503
    assert "shutting down" in ready.json()["error"]["message"]
    assert httpx.get(gw.url + "/health").status_code == 200
    refused = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
                         json={"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "shutting_down"

    short.join(30)
    assert short.ended_cleanly
    assert short.events[-1] == "[DONE]"
    assert short.tokens() == 20
    long.join(30)
    assert long.ended_cleanly
    assert 3.5 < time.perf_counter() - t < 15
    error = json.loads(long.events[-1])["error"]
    assert error["code"] == "shutting_down"
    assert error["type"] == "server_error"
    assert gw.process.wait(30) == 0

    records = {r["request_id"]: r for r in gw.records()}
    assert set(records) == {short.request_id, long.request_id}  # the refused request left nothing
    assert records[short.request_id]["status"] == "ok"
    assert records[short.request_id]["completion_tokens"] == 20
    cut = records[long.request_id]
    assert cut["completion_tokens"] == long.tokens()
    assert 0 < long.tokens() < 400
    # cut by the restart (an error event, the gateway's failure): on record with its tokens, and free
    assert (cut["status"], cut["cost_micros"]) == ("error", 0)
    assert gw.billing.ledger_totals(gw.tenant_id)["open_reservations"] == 0
