"""Killing a real engine replica mid-stream: the tenant sees one uninterrupted, identical answer, billed once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from backends.echo import EchoBackend
from backends.remote import RemoteBackend
from tests.harness import free_port, gateway_app, wait_healthy
from tests.util import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "small"
# Greedy, the bundled small model runs this line of The Tempest on to max_tokens: long enough to kill inside.
PROMPT = "Enter PROSPERO and MIRANDA\n\nMIRANDA. If by your art, my dearest father, you have"



def _start_replica(port: int) -> subprocess.Popen:
    ferryman = Path(sys.executable).parent / "ferryman"
    return subprocess.Popen([str(ferryman), "engine", "serve", "--model", str(MODEL), "--name", "ferryman-large",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def replicas():
    ports = [free_port(), free_port()]
    procs = {p: _start_replica(p) for p in ports}
    try:
        for port, proc in procs.items():
            wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def gateway(replicas, tmp_path):
    with gateway_before(replicas, tmp_path) as gw:
        yield gw


@contextmanager
def gateway_before(replicas, tmp_path):
    urls = [f"http://127.0.0.1:{p}" for p in replicas]
    large = RemoteBackend("ferryman-large", urls, health_interval_s=0.2)
    from transformers import AutoTokenizer

    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=AutoTokenizer.from_pretrained(MODEL),
                         backends={"ferryman-small": EchoBackend("ferryman-small"), "ferryman-large": large})
    tenant_id, key = wiring.tenant()
    with serve(wiring.app) as url:
        yield url, key, wiring.billing, tenant_id, large


def _body(stream: bool) -> dict:
    return {"model": "ferryman-large", "prompt": PROMPT, "max_tokens": 300, "temperature": 0, "stream": stream}


def test_replica_killed_mid_stream_answer_continues_identically(gateway, replicas):
    url, key, billing, tenant_id, large = gateway
    headers = {"authorization": f"Bearer {key}"}
    reference = httpx.post(url + "/v1/completions", json=_body(False), headers=headers, timeout=120).json()
    expected = reference["choices"][0]["text"]
    assert reference["usage"]["completion_tokens"] >= 40, "need a long answer to kill a replica inside it"

    pieces, killed = [], None
    with httpx.stream("POST", url + "/v1/completions", json=_body(True), headers=headers, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            pieces.append(json.loads(line[6:])["choices"][0]["text"])
            if len(pieces) == 5:
                [serving] = [rep for rep in large.replicas if rep.in_flight]
                killed = int(serving.url.rsplit(":", 1)[1])
                replicas[killed].send_signal(signal.SIGKILL)
    assert killed is not None
    assert replicas[killed].wait(5) == -signal.SIGKILL
    assert "".join(pieces) == expected  # one uninterrupted stream, token for token the same answer
    assert sum(rep.breaker.failures for rep in large.replicas) == 1
    records = billing.usage(tenant_id)
    assert len(records) == 2
    assert {r["status"] for r in records} == {"ok"}
    assert records[0]["completion_tokens"] == reference["usage"]["completion_tokens"]  # billed once, in full


def test_request_not_yet_started_is_retried_on_a_live_replica(gateway, replicas):
    url, key, billing, tenant_id, large = gateway
    first = next(iter(replicas))
    replicas[first].kill()
    replicas[first].wait()
    headers = {"authorization": f"Bearer {key}"}
    for _ in range(4):
        r = httpx.post(url + "/v1/completions", json={**_body(False), "max_tokens": 5}, headers=headers, timeout=60)
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] >= 1
    dead = next(rep for rep in large.replicas if rep.url.endswith(f":{first}"))
    assert dead.breaker.failures >= 1 or not dead.breaker.healthy
    assert len(billing.usage(tenant_id)) == 4


@pytest.fixture
def lone_replica():
    port = free_port()
    proc = _start_replica(port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield {port: proc}
    finally:
        proc.kill()
        proc.wait()


def test_the_last_replica_killed_after_one_token_ends_in_an_error_event_and_costs_nothing(lone_replica, tmp_path):
    """No replica is left to continue on: the client gets an SSE error event, so the request is recorded failed, at
    zero (docs/BILLING.md: the bill matches what the client saw; it once billed 12 + 1 tokens)."""
    with gateway_before(lone_replica, tmp_path) as (url, key, billing, tenant_id, large):
        events = the_stream_killed_after_one_token(url, key, billing, tenant_id, lone_replica)
    error = json.loads(events[-1])["error"]
    assert error["type"] == "server_error"
    assert "[DONE]" not in events
    [record] = billing.usage(tenant_id)
    assert record["status"] in ("unavailable", "error")
    assert record["completion_tokens"] >= 1
    assert record["cost_micros"] == 0
    assert billing.ledger_totals(tenant_id) == {
        "spent_micros": 0, "reserved_micros": 0, "open_reservations": 0}


def the_stream_killed_after_one_token(url, key, billing, tenant_id, replica) -> list[str]:
    billing.set_budget(tenant_id, limit_micros=1_000_000)
    events = []
    with httpx.stream("POST", url + "/v1/completions", json=_body(True), headers={"authorization": f"Bearer {key}"},
                      timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 1:
                    next(iter(replica.values())).send_signal(signal.SIGKILL)
    deadline = time.time() + 10
    while billing.ledger_totals(tenant_id)["open_reservations"] and time.time() < deadline:
        time.sleep(0.05)
    return events
