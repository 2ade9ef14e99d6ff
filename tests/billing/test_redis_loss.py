"""Redis losing its data is survivable and loud (issue 26, point 1; docs/SECURITY.md "Redis losing its data").

Two gateways (PostgreSQL + a private Redis without persistence) serve one tenant under concurrent load while the
Redis is killed (SIGKILL: its data is gone) and started again empty, twice. Then the client-received costs (the
x-ferryman-cost-usd header of every 200), the usage records in PostgreSQL and the budget counters (PostgreSQL and
Redis) are compared: only records settled just before a kill (the unwritten batch) may be missing; the budget is
exceeded by at most what those lost records cost; /ready says 503 while Redis is away and while budgets re-seed;
holds are refused (503 ledger_recovering) until then; the writers remake their consumer group and keep writing."""
from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import redis
from sqlalchemy import select

from billing.models import budget_spend
from tests.billing.helpers import gateway_app
from tests.util import serve

pytestmark = pytest.mark.slow

PREFIX = "fm-loss"
RECOVERY_S = 2.0  # holds refused this long after a loss is noticed (FERRYMAN_REDIS_RECOVERY_S)
DOWN_S = 1.0  # how long Redis stays dead before it comes back empty
COST = 11  # micro-USD: 12 prompt tokens ("hello there" + BOS) x 0.2 + 10 completion x 0.8, rounded up; = its hold
LIMIT = 240 * COST + 5  # the tenant's budget: 240 requests
BODY = {"model": "ferryman-small", "prompt": "hello there", "max_tokens": 10}  # echo: 10 tokens x 10 ms


class RedisServer:
    """A private redis-server without persistence on a port of its own: killed, it comes back empty."""

    def __init__(self, tmp_path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                     "--dir", str(tmp_path)]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client, deadline = redis.Redis(port=self.port, socket_timeout=1), time.time() + 10
        while True:
            try:
                client.ping()
                return client.close()
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class Answer:
    gateway: int
    sent: float
    received: float
    status: int
    code: str | None = None
    request_id: str | None = None
    cost_micros: int = 0


class Load:
    """Workers sending completions to the gateways in turn, each answer noted, until stopped."""

    def __init__(self, urls: list[str], key: str, workers: int = 6):
        self.urls, self.key, self.answers = urls, key, []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self, i: int) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as client:
            n = i
            while not self.stopping.is_set():
                gateway, n = n % len(self.urls), n + 1
                sent = time.time()
                r = client.post(self.urls[gateway] + "/v1/completions", json=BODY)
                answer = Answer(gateway, sent, time.time(), r.status_code)
                if r.status_code == 200:
                    answer.request_id = r.headers["x-request-id"]
                    answer.cost_micros = round(float(r.headers["x-ferryman-cost-usd"]) * 1e6)
                else:
                    answer.code = r.json()["error"]["code"]
                    if r.status_code in (402, 503):
                        time.sleep(0.05)  # a refused client backs off a little, as told
                self.answers.append(answer)

    def served(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    def wait_for(self, what, timeout_s: float = 30) -> None:
        deadline = time.time() + timeout_s
        while not what():
            assert time.time() < deadline, "the load did not get there in time"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(60)


class ReadyProbe:
    """Polls each gateway's /ready, as a load balancer would; keeps (time, gateway, status, message)."""

    def __init__(self, urls: list[str]):
        self.urls, self.seen = urls, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopping.is_set():
                for i, url in enumerate(self.urls):
                    r = client.get(url + "/ready")
                    self.seen.append((time.time(), i, r.status_code, r.text))
                time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)


@dataclass
class Loss:
    snapshot_at: float
    killed_at: float
    unwritten: set[str]  # request ids settled in the stream just before the kill (the database may lack them)
    back_at: float = 0.0
    ready_at: float = 0.0  # when holds are taken again (the new epoch says)


def lose_data(server: RedisServer) -> Loss:
    client, snapshot_at = redis.Redis(port=server.port, socket_timeout=1), time.time()
    unwritten = {json.loads(fields[b"record"])["request_id"] for _, fields in client.xrange(f"{PREFIX}:ledger:settled")}
    client.close()
    server.kill()
    loss = Loss(snapshot_at, time.time(), unwritten)
    time.sleep(DOWN_S)
    server.start()
    loss.back_at = time.time()
    client, deadline = redis.Redis(port=server.port, socket_timeout=1), time.time() + 10
    while (epoch := client.get(f"{PREFIX}:ledger:epoch")) is None:  # the first gateway to notice writes it
        assert time.time() < deadline, "no gateway noticed that Redis lost its data"
        time.sleep(0.01)
    client.close()
    loss.ready_at = int(epoch.split()[1]) / 1000
    return loss


def test_redis_losing_its_data_twice_under_load_loses_at_most_the_unwritten_batch(pg_url, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "ferryman.billing")
    server = RedisServer(tmp_path)
    gateways = [gateway_app(pg_url, delay_s=0.01, redis_url=server.url, redis_prefix=PREFIX, recovery_s=RECOVERY_S)
                for _ in range(2)]
    billing = gateways[0][1]
    tenant = billing.create_tenant("acme")
    key, _ = billing.create_key(tenant["id"])
    budget = billing.set_budget(tenant["id"], limit_micros=LIMIT, period="monthly")
    started = time.time()
    try:
        with serve(gateways[0][0]) as url_a, serve(gateways[1][0]) as url_b:
            probe, load = ReadyProbe([url_a, url_b]), Load([url_a, url_b], key)
            losses = []
            for share in (0.25, 0.5):  # a loss a quarter and half-way into the budget, each under full load
                load.wait_for(lambda: sum(a.cost_micros for a in load.served()) >= share * LIMIT)
                losses.append(lose_data(server))
                load.wait_for(lambda: any(a.sent > losses[-1].ready_at for a in load.served()))
            # The rest of the budget, until it is spent (a 402 that says no retry helps).
            load.wait_for(lambda: any(a.code == "budget_exceeded" for a in load.answers))
            load.stop()
            probe.stop()
        for _, b in gateways:  # what either writer left pending (both stopped, each flushed its own)
            b.writer().drain()
        elapsed = time.time() - started

        answers = load.answers
        assert {(a.status, a.code) for a in answers} <= {
            (200, None), (402, "budget_held"), (402, "budget_exceeded"), (503, "rate_limiter_unavailable"),
            (503, "ledger_recovering")}
        served = {a.request_id: a for a in load.served()}
        records = {r["request_id"]: r for r in billing.usage(tenant["id"], limit=100_000)}

        # Records: what a client was charged is recorded at that cost, except the batch unwritten at a kill.
        lost = [a for rid, a in served.items() if rid not in records]
        # The stream held only the batch the writer was about to write (~100 ms of settlements; 1 s on a loaded box).
        oldest = max((loss.snapshot_at - served[rid].received for loss in losses for rid in loss.unwritten
                      if rid in served), default=0.0)
        assert oldest < 1.0
        for a in lost:  # in that batch, or settled in the moment between looking at the stream and the kill
            assert any(a.request_id in loss.unwritten or loss.snapshot_at <= a.received <= loss.killed_at + 0.5
                       for loss in losses), a
        for rid, r in records.items():
            if rid in served:
                assert (r["status"], r["cost_micros"]) == ("ok", served[rid].cost_micros)
            else:  # a request answered 503: its hold, if taken at all, went back at no cost
                assert (r["status"], r["cost_micros"]) == ("unavailable", 0), r

        # Budget: exceeded by at most what the lost records cost (the re-seed could not see them).
        charged = sum(a.cost_micros for a in served.values())
        lost_micros = sum(a.cost_micros for a in lost)
        overspend = charged - LIMIT
        assert overspend <= lost_micros
        total = sum(r["cost_micros"] for r in records.values())
        with billing.engine.connect() as conn:
            assert conn.execute(select(budget_spend.c.spent_micros, budget_spend.c.reserved_micros).where(
                budget_spend.c.budget_id == budget["id"])).all() == [(total, 0)]
        ledger = billing.ledger
        [period] = ledger.redis.keys(f"{ledger.prefix}:budget:{budget['id']}:*")
        counters = {k: int(v) for k, v in ledger.redis.hgetall(period).items() if k != b"alerted_percent"}
        assert counters == {b"spent": total, b"reserved": 0}  # re-seeded from the database: every view agrees
        assert ledger.open_holds() == (0, 0) and ledger.unwritten() == 0

        # Loud: /ready fails while Redis is away and while budgets re-seed; holds are refused until then.
        for loss in losses:
            during = [(t, i, status, text) for t, i, status, text in probe.seen if loss.killed_at <= t <= loss.ready_at]
            assert any(status == 503 and "redis unreachable" in text for t, _, status, text in during
                       if t < loss.back_at)
            for gateway in (0, 1):
                assert any(status == 503 and "lost the ledger's data" in text for t, i, status, text in during
                           if i == gateway and t > loss.back_at)
            assert any(a.code == "ledger_recovering" and loss.back_at <= a.received for a in answers)
            noticed = loss.ready_at - RECOVERY_S  # the epoch was written then: every hold after it is refused
            assert not [a for a in served.values() if noticed <= a.sent and a.received <= loss.ready_at]
        # Ready until the first kill (answers noted before it began: the probe's thread may note a later one first).
        assert not [seen for seen in probe.seen if seen[0] < losses[0].snapshot_at and seen[2] != 200]

        # The writers remade their consumer group once per loss each, and kept writing (no NOGROUP loop).
        remade = [r for r in caplog.records if "lost the settled stream" in r.getMessage()]
        assert len(remade) <= 2 * len(losses) * len(gateways)
        print(f"\n{len(answers)} answers ({len(served)} served) in {elapsed:.1f} s; unwritten at the kills: "
              f"{[len(loss.unwritten) for loss in losses]} (the oldest {oldest * 1000:.0f} ms old); records lost: {len(lost)} ({lost_micros} µ$); budget "
              f"{LIMIT} µ$, charged {charged} µ$ (over by {max(0, overspend)}); holds refused for "
              f"{[round(loss.ready_at - loss.back_at, 2) for loss in losses]} s after Redis came back; writer "
              f"group remade {len(remade)} times")
    finally:
        server.kill()
        for _, b in gateways:
            b.close()
