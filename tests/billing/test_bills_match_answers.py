"""The bill matches what the client saw (issue 26, point 6; docs/BILLING.md "Failures are free, disconnects are
not"): a client that hangs up on a whole-answer request stops its generation and pays for the tokens generated
until then; a ledger (Redis) that stalls as an answer ends does not turn the delivered answer into an error event,
and the answer is billed once, when Redis wakes. (A stream that ends in an error event is free:
test_gateway_bills.py.)"""
import json
import os
import signal
import socket
import subprocess
import time
import uuid

import httpx
import pytest

from tests.billing.helpers import gateway_app
from tests.billing.test_gateway_bills import Scripted, records, small_cost
from tests.harness import free_port
from tests.util import serve


class Counting(Scripted):
    """Counts the tokens the backend really produced, so a test sees whether a generation stopped."""

    def __init__(self, name: str):
        super().__init__(name)
        self.produced = 0

    async def generate(self, request):
        async for delta in super().generate(request):
            self.produced += 1
            yield delta


def counting_gateway(db_url: str, **kwargs):
    backends = {name: Counting(name) for name in ("ferryman-small", "ferryman-large")}
    app, billing = gateway_app(db_url, backends=backends, **kwargs)
    tenant = billing.create_tenant("acme")
    billing.set_budget(tenant["id"], limit_micros=1_000_000)
    return app, billing, tenant["id"], billing.create_key(tenant["id"])[0], backends["ferryman-small"]


def wait_settled(billing, tenant_id: int, n: int) -> None:
    deadline = time.time() + 20
    while (billing.ledger_totals(tenant_id)["open_reservations"] or len(records(billing)) < n) and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_a_client_that_hangs_up_on_a_whole_answer_stops_its_generation_and_pays_what_was_generated(sqlite_url):
    app, billing, tenant_id, key, backend = counting_gateway(sqlite_url)
    body = json.dumps({"model": "ferryman-small", "prompt": "slow", "max_tokens": 60}).encode()  # 60 x 50 ms = 3 s
    with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                      + b"\r\n\r\n" + body)
            time.sleep(0.5)  # about ten tokens in, the client goes away without reading anything
        wait_settled(billing, tenant_id, 1)
        produced = backend.produced
        time.sleep(1.0)
        assert backend.produced == produced  # the generation stopped: nothing more was made for nobody
    [left] = records(billing).values()
    assert left["status"] == "cancelled"
    assert 1 <= left["completion_tokens"] <= produced < 40
    assert left["cost_micros"] == small_cost(5, left["completion_tokens"]) > 0
    assert left["request_id"] in backend.aborted  # the engine was told to stop, not just left unread
    assert billing.ledger_totals(tenant_id) == {"spent_micros": left["cost_micros"], "reserved_micros": 0,
                                                "open_reservations": 0}
    billing.close()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own (no persistence), so pausing it stalls nobody else."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_a_ledger_that_stalls_as_a_stream_ends_keeps_the_answer_whole_and_bills_it_once(sqlite_url, own_redis):
    proc, redis_url = own_redis
    app, billing, tenant_id, key, _ = counting_gateway(sqlite_url, redis_url=redis_url,
                                                      redis_prefix=f"fm-test-{uuid.uuid4().hex}")
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "ferryman-small", "prompt": "slow", "max_tokens": 20, "stream": True,
                                 "stream_options": {"include_usage": True}}) as r:
            lines = r.iter_lines()
            events = [next(lines)]
            os.kill(proc.pid, signal.SIGSTOP)  # Redis stalls (connections accepted, nothing answered) mid-stream
            try:
                started = time.time()
                events += [line for line in lines if line]  # the stream ends (1 s) and settles while Redis sleeps
            finally:
                time.sleep(max(0.0, 4.0 - (time.time() - started)))
                os.kill(proc.pid, signal.SIGCONT)
        wait_settled(billing, tenant_id, 1)
        deadline = time.time() + 20
        while not records(billing) and time.time() < deadline:
            time.sleep(0.1)
    assert not any('"error"' in e for e in events)
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][6:])["usage"]
    assert usage["completion_tokens"] == 20
    [record] = records(billing).values()  # once: the stalled settlement and its retry are one
    assert record["status"] == "ok"
    assert record["cost_micros"] == small_cost(5, 20) == round(usage["cost_usd"] * 1e6)
    assert billing.ledger_totals(tenant_id)["spent_micros"] == record["cost_micros"]
    billing.close()
