"""`ferryman serve --workers N`: several gateway processes on one port, one ledger, limits in Redis."""
from __future__ import annotations

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
from gateway import workers
from gateway.catalog import Catalog
from gateway.config import Settings
from tests.gateway.test_proxy_wire import CountingUpstream
from tests.harness import free_port

pytestmark = pytest.mark.slow

REDIS = "redis://127.0.0.1:6379/0"


def _catalog(kind: str) -> Catalog:
    entry = ({"name": "m", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"} if kind == "openai" else
             {"name": "m", "kind": "engine", "path": "models/small"})
    return Catalog.model_validate({"models": [entry]})


def test_workers_refuse_per_process_state():
    with_redis, without = Settings(redis_url=REDIS), Settings(redis_url=None)
    assert "in-process engines (m)" in workers.refusal(with_redis, _catalog("engine"), 2)
    assert "FERRYMAN_REDIS_URL" in workers.refusal(without, _catalog("openai"), 2)
    assert workers.refusal(with_redis, _catalog("openai"), 2) is None
    assert workers.refusal(without, _catalog("engine"), 1) is None  # one process: anything goes


@pytest.mark.redis
def test_two_workers_serve_one_port_and_one_ledger(tmp_path):
    _, billing, key, port, proc = _two_workers(tmp_path)
    try:
        _wait_ready(port, proc)
        for i in range(40):  # a fresh connection each, so the kernel spreads them over both workers
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "up", "messages": [{"role": "user", "content": f"q{i}"}]}, timeout=30)
            assert r.status_code == 200, r.text
        deadline = time.time() + 10  # records reach the database through each worker's batch writer
        while len(billing.usage(limit=100)) < 40 and time.time() < deadline:
            time.sleep(0.05)
        assert len(billing.usage(limit=100)) == 40
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.mark.redis
def test_a_dead_worker_is_replaced_and_sigterm_drains_every_worker(tmp_path):
    """A worker SIGKILLed is started again. SIGTERM to `serve --workers 2` with a request in flight: new requests get 503 + Retry-After (not a
    connection left waiting on a socket nobody accepts), the one in flight is answered and billed, exit 0."""
    upstream, billing, key, port, proc = _two_workers(tmp_path)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    ask = {"headers": {"authorization": f"Bearer {key}"}, "timeout": 60,
           "json": {"model": "up", "messages": [{"role": "user", "content": "slow"}]}}
    in_flight = {}
    try:
        _wait_ready(port, proc)
        first = _workers(proc.pid)
        os.kill(first[0], signal.SIGKILL)  # a worker that dies is started again
        deadline = time.time() + 120
        while not (len(now := _workers(proc.pid)) == 2 and first[0] not in now) and time.time() < deadline:
            time.sleep(0.2)
        _wait_ready(port, proc)
        assert len(now) == 2 and first[0] not in now, (first, now)
        upstream.delay_s = 4.0
        asking = threading.Thread(target=lambda: in_flight.update(r=httpx.post(url, **ask)))
        asking.start()
        deadline = time.time() + 30
        while not upstream.bodies and time.time() < deadline:
            time.sleep(0.05)
        assert upstream.bodies, "the request never reached the upstream"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = httpx.post(url, **{**ask, "timeout": 10})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers["retry-after"]
        asking.join(60)
        assert in_flight["r"].status_code == 200, in_flight["r"].text
        assert proc.wait(60) == 0
        assert [r["status"] for r in billing.usage(limit=10)] == ["ok"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _two_workers(tmp_path):
    """`ferryman serve --workers 2` over a SQLite ledger with one tenant's key, in front of a CountingUpstream."""
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
           "FERRYMAN_REDIS_PREFIX": f"fm-test-{tmp_path.name}"}  # its own keys: Redis holds its budget holds too
    ferryman = Path(sys.executable).parent / "ferryman"
    proc = subprocess.Popen([str(ferryman), "serve", "--workers", "2", "--port", str(port),
                             "--config", str(tmp_path / "catalog.yaml")], env=env, stdout=subprocess.DEVNULL)
    return upstream, billing, key, port, proc


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker is a child too, but no worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300  # each worker imports the gateway afresh (spawn)
    while time.time() < deadline:
        assert proc.poll() is None, "ferryman serve --workers exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200 and len(_workers(proc.pid)) == 2:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("workers did not start")
