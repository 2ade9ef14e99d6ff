"""Honest outages (issue 19, point 5): a dependency that is down answers 503 with Retry-After, never 500;
/health is liveness, /ready names what is down; the gateway recovers without a restart.

Outages are real: a dead port, and a TCP proxy the test cuts and restores in front of the local Redis and
PostgreSQL. Both skip (never fail) only when the local server itself cannot be reached."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from backends.echo import EchoBackend
from backends.remote import RemoteBackend
from billing.redis_limits import RedisRateLimiter
from gateway.app import create_app
from gateway.config import Settings
from gateway.shared_limits import RedisOutagePolicy
from tests.gateway.conftest import ADMIN_KEY, Gateway
from tests.harness import free_port, gateway_app
from tests.util import LengthRouter, serve

ROOT = Path(__file__).resolve().parents[2]
FERRYMAN = str(Path(sys.executable).parent / "ferryman")
REDIS_PORT, PG_PORT = 6379, 5432


class TcpProxy:
    """Forwards a loopback port to a local server until cut: then every connection is dropped and new ones are
    closed at once (what clients see when the server goes away), until restored. Or stalled: connections stay
    open, new ones are accepted, and nothing passes either way (a stalled network path), until restored."""

    def __init__(self, target_port: int):
        self.target_port, self.open, self.sockets = target_port, True, []
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            self.flowing.wait()  # stalled: accepted, but not connected onwards (the handshake goes unanswered)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket):
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                self.flowing.wait()  # stalled: what arrived is held; it passes, late, once restored
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.open = False
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets.clear()

    def stall(self):
        self.flowing.clear()

    def restore(self):
        self.open = True
        self.flowing.set()

    def close(self):
        self.cut()
        self.listener.close()


def reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def gateway_with(tokenizer, database_url: str, limiter=None, billing=None):
    wiring = gateway_app(database_url, tokenizer=tokenizer, limiter=limiter, billing=billing)
    tenant_id, key = wiring.tenant(f"acme-{uuid.uuid4().hex[:6]}", rpm=1000)
    with serve(wiring.app) as url:
        yield Gateway(url, wiring.billing, tenant_id, key, wiring.backends)


def chat(gw) -> httpx.Response:
    body = {"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {gw.api_key}"})


def assert_503(r: httpx.Response, code: str, names: str) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == code
    assert names in error["message"]


def assert_ready(gw, problem: str | None) -> None:
    assert httpx.get(gw.url + "/health").status_code == 200  # liveness never depends on the dependencies
    r = httpx.get(gw.url + "/ready", timeout=10)
    if problem is None:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 503
        assert "retry-after" in r.headers
        assert problem in r.json()["error"]["message"]


# --- Redis --------------------------------------------------------------------------------------------------

@pytest.fixture
def redis_port() -> int:
    if not reachable(REDIS_PORT):
        pytest.skip("Redis at 127.0.0.1:6379 is not reachable")
    return REDIS_PORT


def redis_limiter(port: int, policy: str) -> RedisOutagePolicy:
    return RedisOutagePolicy(RedisRateLimiter(f"redis://127.0.0.1:{port}/0", prefix=f"fm-test-{uuid.uuid4().hex}"),
                             policy)


def test_redis_at_a_dead_port_fails_closed_with_503(tmp_path, tokenizer):
    with gateway_with(tokenizer, f"sqlite:///{tmp_path / 'l.db'}", redis_limiter(free_port(), "closed")) as gw:
        assert_503(chat(gw), "rate_limiter_unavailable", "Redis")
        assert_ready(gw, "redis unreachable")
        assert gw.records() == []
        assert gw.billing.ledger_totals(gw.tenant_id)["open_reservations"] == 0


def test_redis_at_a_dead_port_falls_back_to_local_limits_when_configured(tmp_path, tokenizer):
    with gateway_with(tokenizer, f"sqlite:///{tmp_path / 'l.db'}", redis_limiter(free_port(), "local")) as gw:
        gw.billing.update_tenant(gw.tenant_id, rpm=2)
        gw.billing._invalidate()
        assert [chat(gw).status_code for _ in range(3)] == [200, 200, 429]  # the process's own limit holds
        assert len(gw.records()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["closed", "local"])
def test_redis_that_goes_away_mid_run_and_comes_back(tmp_path, tokenizer, redis_port, policy):
    proxy = TcpProxy(redis_port)
    try:
        with gateway_with(tokenizer, f"sqlite:///{tmp_path / 'l.db'}", redis_limiter(proxy.port, policy)) as gw:
            assert chat(gw).status_code == 200
            assert_ready(gw, None)
            proxy.cut()
            if policy == "closed":
                assert_503(chat(gw), "rate_limiter_unavailable", "Redis")
            else:
                assert chat(gw).status_code == 200
            assert_ready(gw, "redis unreachable")
            proxy.restore()
            assert chat(gw).status_code == 200
            assert_ready(gw, None)
            assert len(gw.records()) == (2 if policy == "closed" else 3)
            assert gw.billing.ledger_totals(gw.tenant_id)["open_reservations"] == 0
    finally:
        proxy.close()


# --- model backends -----------------------------------------------------------------------------------------

def test_ready_names_a_model_whose_replicas_are_all_down(tmp_path, tokenizer):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}", admin_key=ADMIN_KEY)
    dead = RemoteBackend("ferryman-large", [f"http://127.0.0.1:{free_port()}"], health_interval_s=0.1)
    backends = {"ferryman-small": EchoBackend("ferryman-small", tokenizer.decode), "ferryman-large": dead}
    app = create_app(settings, router=LengthRouter(), backends=backends, tokenizer=tokenizer)
    with serve(app) as url:
        deadline = time.time() + 10
        while time.time() < deadline and httpx.get(url + "/ready").status_code == 200:
            time.sleep(0.1)  # until the first health check has failed
        r = httpx.get(url + "/ready")
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        [problem] = r.json()["problems"]
        assert problem.startswith("model ferryman-large is down (")
        assert "down: health check" in problem
        assert r.json()["upstreams"]["ferryman-large"]["state"] == "down"
        assert httpx.get(url + "/health").status_code == 200


# --- PostgreSQL ----------------------------------------------------------------------------------------------

@pytest.fixture
def pg_schema():
    """A schema of its own on the local PostgreSQL (dropped afterwards); yields (admin URL, schema)."""
    for user in ("postgres", "root"):
        admin = f"postgresql+psycopg://{user}@127.0.0.1:{PG_PORT}/test"
        with contextlib.suppress(Exception):
            engine = create_engine(admin, connect_args={"connect_timeout": 2})
            with engine.begin() as conn:
                schema = f"fm_test_{uuid.uuid4().hex[:12]}"
                conn.execute(text(f"create schema {schema}"))
            break
    else:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (database test) is not reachable")
    yield user, schema
    with engine.begin() as conn:
        conn.execute(text(f"drop schema {schema} cascade"))
    engine.dispose()


def test_database_lost_at_run_time_answers_503_then_recovers_without_restart(tokenizer, pg_schema):
    user, schema = pg_schema
    proxy = TcpProxy(PG_PORT)
    url = f"postgresql+psycopg://{user}@127.0.0.1:{proxy.port}/test?options=-csearch_path%3D{schema}"
    try:
        with gateway_with(tokenizer, url, limiter=None) as gw:
            assert chat(gw).status_code == 200
            assert_ready(gw, None)
            proxy.cut()
            for _ in range(3):  # the key may still be cached: then the budget hold is what fails
                assert_503(chat(gw), "database_unavailable", "database")
            assert_ready(gw, "database unreachable")
            models = httpx.get(gw.url + "/v1/models", headers={"authorization": "Bearer fm-unknown"})
            assert models.status_code in (401, 503)
            proxy.restore()
            assert chat(gw).status_code == 200
            assert_ready(gw, None)
            records = gw.records()
            assert [r["status"] for r in records] == ["ok", "ok"]
            assert gw.billing.ledger_totals(gw.tenant_id)["open_reservations"] == 0
    finally:
        proxy.close()


# --- operators' start-up mistakes: one line, exit != 0 ------------------------------------------------------

def ferryman(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([FERRYMAN, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **env})


@pytest.mark.slow
def test_database_down_at_start_is_one_line_naming_the_url_without_its_password():
    url = f"postgresql+psycopg://root:hunter2@127.0.0.1:{free_port()}/test"
    done = ferryman("serve", "--port", str(free_port()), FERRYMAN_DATABASE_URL=url)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert url.replace("hunter2", "***") in lines[0]
    assert "hunter2" not in lines[0]


@pytest.mark.slow
def test_bad_settings_are_one_line_naming_each():
    done = ferryman("serve", FERRYMAN_PORT="eighty", FERRYMAN_REDIS_OUTAGE="maybe")
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ferryman: bad setting: "), lines
    assert "FERRYMAN_PORT='eighty'" in lines[0]
    assert "FERRYMAN_REDIS_OUTAGE='maybe'" in lines[0]
