"""The Redis ledger (holds in Redis, records written in batches): no overspend, no lost or double-counted record
across a gateway crash, a writer crash, or a second settle; and no database round trip on the request path."""
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, select

from billing import Billing, BudgetExceeded
from billing.models import budget_alerts, budget_spend
from tests.billing.test_gateway_budget import PROMPT, forget_keys
from tests.harness import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
SMALL = "ferryman-small"


@pytest.fixture
def prefix(redis_url):
    prefix = f"fm-test-{uuid.uuid4().hex}"
    yield prefix
    forget_keys(redis_url, prefix)


@pytest.fixture
def billing(pg_url, redis_url, prefix):
    b = Billing(pg_url, redis_url=redis_url, redis_prefix=prefix)
    b.create_schema()
    b.ensure_admin_defaults()
    yield b
    b.close()


def tenant_with_key(billing: Billing, limit_micros: int, alert_percent: int = 80):  # one threshold
    tenant = billing.create_tenant(f"acme-{uuid.uuid4().hex[:6]}")
    key, _ = billing.create_key(tenant["id"])
    billing.set_budget(tenant["id"], limit_micros=limit_micros, period="monthly", alert_percents=[alert_percent])
    return tenant, billing.authenticate(key), key


def spend_rows(billing: Billing) -> list:
    with billing.engine.connect() as conn:
        return conn.execute(select(budget_spend.c.spent_micros, budget_spend.c.reserved_micros)).all()


def redis_counters(billing: Billing, principal) -> dict:
    ref = principal.tenant_budget
    keys = billing.ledger.redis.keys(f"{billing.ledger.prefix}:budget:{ref.id}:*")
    return {k: int(v) for k, v in billing.ledger.redis.hgetall(keys[0]).items() if k != b"alerted_percent"}


def test_holds_never_pass_the_budget_and_a_second_settle_charges_nothing(billing):
    tenant, principal, _ = tenant_with_key(billing, limit_micros=3 * 200 + 50, alert_percent=30)
    holds = [billing.reserve(principal, f"r{i}", SMALL, 0, 250) for i in range(3)]  # 200 micro-USD each
    with pytest.raises(BudgetExceeded) as refused:
        billing.reserve(principal, "r3", SMALL, 0, 250)
    assert refused.value.retryable
    assert refused.value.reserved_micros == 600
    for hold in holds:
        billing.settle(hold, prompt_tokens=0, completion_tokens=100)  # 80 micro-USD
    again = billing.settle(holds[0], prompt_tokens=0, completion_tokens=250)
    assert again.request_id == "r0"
    writer = billing.writer()
    writer.drain()
    assert spend_rows(billing) == [(240, 0)]
    assert redis_counters(billing, principal) == {b"spent": 240, b"reserved": 0}
    assert sorted(r["cost_micros"] for r in billing.usage(tenant["id"])) == [80, 80, 80]
    with billing.engine.connect() as conn:  # the third settle crossed 30% of 650: one alert
        assert conn.execute(select(budget_alerts.c.spent_micros)).scalars().all() == [240]


def test_the_written_record_is_the_settled_one_field_for_field(billing):
    """Through the request path's calls (the ledger's reserve/settle on the pipelined client) and the writer's batch insert
    (one array per column on PostgreSQL): every field arrives as settled, NULLs and an opted-in prompt included."""
    from billing.models import usage_records

    tenant, _, key = tenant_with_key(billing, limit_micros=10**9)
    billing.update_tenant(tenant["id"], store_prompts=True)
    principal = billing.authenticate(key)

    async def serve_three():
        out = []
        for i, extra in enumerate([{}, {"difficulty": 0.25, "route": "large", "route_group": "auto",
                                        "latency_ms": 12.5, "prompt_text": "2 + 2 = ?"},
                                   {"status": "timeout", "estimated": True, "cached_tokens": 3}]):
            hold = await billing.ledger.reserve(principal, f"f{i}", SMALL, 10, 100)
            out.append(await billing.ledger.settle(hold, prompt_tokens=10, completion_tokens=7 + i, **extra))
        return out

    settled = asyncio.run(serve_three())
    billing.writer().drain()
    with billing.engine.connect() as conn:
        rows = {r.request_id: r._asdict() for r in conn.execute(select(usage_records))}
    for record in settled:
        row = rows[record.request_id]
        assert {k: row[k] for k in vars(record)} == vars(record)
    assert rows["f1"]["prompt_text"] == "2 + 2 = ?"
    assert rows["f0"]["difficulty"] is None


def test_a_writer_that_dies_between_commit_and_ack_double_counts_nothing(billing):
    tenant, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    for i in range(5):
        billing.settle(billing.reserve(principal, f"r{i}", SMALL, 10, 100), prompt_tokens=10, completion_tokens=50)
    dead = billing.writer()
    entries = dead.redis.xreadgroup("writers", dead.consumer, {billing.ledger.stream: ">"}, count=100)[0][1]
    dead.commit([__import__("billing.redis_ledger", fromlist=["_decode"])._decode(f) for _, f in entries])
    # ...and the process dies here: committed to the database, never acknowledged in Redis.
    assert billing.ledger.unwritten() == 5
    live = billing.writer()
    assert live.claim(0) == 5  # the same five entries, delivered again
    records = billing.usage(tenant["id"])
    assert len(records) == 5
    assert billing.ledger.unwritten() == 0
    assert spend_rows(billing) == [(sum(r["cost_micros"] for r in records), 0)]
    assert redis_counters(billing, principal)[b"spent"] == sum(r["cost_micros"] for r in records)


def test_entries_read_on_a_connection_that_failed_are_written_by_their_own_writer(billing):
    """A stalled path delivers a writer's timed-out read once it flows again: Redis hands the entries to a connection
    nobody reads. The writer reads its own unacknowledged entries again (Writer.own), not 30 s later (claim)."""
    tenant, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    for i in range(3):
        billing.settle(billing.reserve(principal, f"r{i}", SMALL, 10, 100), prompt_tokens=10, completion_tokens=50)
    writer = billing.writer()
    late = writer.redis.xreadgroup("writers", writer.consumer, {billing.ledger.stream: ">"}, count=100)  # to nobody
    assert len(late[0][1]) == 3 and writer.step(block_ms=None) == 0  # new entries only: these are not new
    assert writer.own() == 3
    assert len(billing.usage(tenant["id"])) == 3 and billing.ledger.unwritten() == 0
    assert writer.own() == 0


def test_a_gateway_that_starts_on_a_redis_that_lost_its_data_waits_for_the_others_in_flight(billing, pg_url,
                                                                                             redis_url, prefix):
    """Redis lost its data (its epoch is gone) as a new gateway starts: that gateway, the first to notice, has nothing
    in flight but the others may, so it refuses holds for the recovery window too, unless the ledger has no record
    yet (a new prefix: the first start is not kept waiting)."""
    from billing.rules import LedgerRecovering

    tenant, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    billing.settle(billing.reserve(principal, "r0", SMALL, 10, 100), prompt_tokens=10, completion_tokens=5)
    billing.writer().drain()  # the ledger has a record
    holding = billing.reserve(principal, "r1", SMALL, 10, 100)  # in flight in the running gateway
    billing.ledger.redis.delete(billing.ledger.epoch_key)  # ...as Redis loses its data
    fresh = Billing(pg_url, redis_url=redis_url, redis_prefix=prefix, recovery_s=30)
    try:
        with pytest.raises(LedgerRecovering):
            fresh.reserve(principal, "r2", SMALL, 10, 100)
    finally:
        fresh.close()
    billing.settle(holding, prompt_tokens=10, completion_tokens=5)  # the running gateway re-holds it, settles it once
    billing.writer().drain()
    assert billing.ledger.open_holds() == (0, 0) and len(billing.usage(tenant["id"])) == 2


def test_a_hold_that_vanished_with_a_rollback_of_redis_is_held_again_and_settled_once(billing):
    """Redis back from an older state with its epoch (AOF everysec after a power cut, a snapshot, a promoted
    replica): a request's hold is gone and it has no record. Its settlement holds it again and charges it once."""
    tenant, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    hold = billing.reserve(principal, "r0", SMALL, 10, 100)
    for key in billing.ledger._period_keys(hold):  # the older state lacks the hold, and what it reserved
        billing.ledger.redis.hincrby(key, "reserved", -hold.amount_micros)
    billing.ledger.redis.hdel(billing.ledger.holds_key, "r0")
    record = billing.settle(hold, prompt_tokens=10, completion_tokens=5)
    assert record.status == "ok" and record.cost_micros > 0
    assert billing.settle(hold, prompt_tokens=10, completion_tokens=5) == record  # a second settle: the same
    billing.writer().drain()
    assert [r["cost_micros"] for r in billing.usage(tenant["id"])] == [record.cost_micros]
    assert billing.ledger.open_holds() == (0, 0)
    assert redis_counters(billing, principal) == {b"spent": record.cost_micros, b"reserved": 0}


def test_expired_holds_are_reaped_once_as_zero_cost_records(billing, pg_url, redis_url, prefix):
    tenant, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    billing.reserve(principal, "orphan", SMALL, 10, 100)
    other = Billing(pg_url, redis_url=redis_url, redis_prefix=prefix)  # a second live replica
    later = billing.clock() + timedelta(hours=1)
    assert billing.reap_expired() == 0  # not expired yet
    assert billing.reap_expired(later) + other.reap_expired(later) == 1
    billing.writer().drain()
    [record] = billing.usage(tenant["id"])
    assert (record["request_id"], record["status"], record["cost_micros"]) == ("orphan", "expired", 0)
    assert redis_counters(billing, principal) == {b"spent": 0, b"reserved": 0}
    other.close()


def test_the_request_path_makes_no_database_round_trip(billing):
    _, principal, _ = tenant_with_key(billing, limit_micros=10**9)
    billing.settle(billing.reserve(principal, "warm", SMALL, 10, 100), prompt_tokens=10, completion_tokens=5)
    writer = billing.writer()
    writer.drain()  # the price is cached and the budget period seeded: the steady state
    checkouts, statements = [], []
    event.listen(billing.engine, "checkout", lambda *a: checkouts.append(1))
    event.listen(billing.engine, "before_cursor_execute", lambda *a: statements.append(1))
    for i in range(50):
        billing.settle(billing.reserve(principal, f"r{i}", SMALL, 10, 100), prompt_tokens=10, completion_tokens=5)
    assert (checkouts, statements) == ([], [])
    writer.drain()  # the 50 records: one transaction
    assert len(checkouts) == 1
    assert len(statements) <= 4


def start_gateway(pg_url: str, redis_url: str, prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.billing.gateway_process", str(port), pg_url, redis_url,
                             prefix], cwd=ROOT)
    wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=60)
    return proc, f"http://127.0.0.1:{port}"


async def client(url: str, key: str, n: int, results: list) -> None:
    body = {"model": SMALL, "prompt": PROMPT, "max_tokens": 50}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(n):
            try:
                r = await http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                results.append((url, r.status_code, r.headers.get("x-request-id")))
            except httpx.TransportError:
                results.append((url, None, None))  # the gateway died with this request in flight


async def burst(urls: list[str], key: str, proc_a: subprocess.Popen) -> list:
    results: list = []
    clients = [asyncio.create_task(client(urls[i % 2], key, 8, results)) for i in range(32)]
    while sum(1 for url, status, _ in results if url == urls[0] and status == 200) < 16:
        await asyncio.sleep(0.01)
    # Mid-burst: the killed gateway has answered its first 16 and is half-way through generating the next 16
    # (0.5 s each), so their holds are open and their answers unsent. (Killing as an answer lands can find the
    # next requests still unread in the socket, with nothing held.)
    await asyncio.sleep(0.25)
    os.kill(proc_a.pid, signal.SIGKILL)
    await asyncio.gather(*clients)
    return results


@pytest.mark.slow
def test_a_gateway_killed_mid_burst_loses_and_double_counts_nothing(billing, pg_url, redis_url, prefix):
    tenant, principal, key = tenant_with_key(billing, limit_micros=200 * 80 + 7)  # fits 200 of 256 requests
    proc_a, url_a = start_gateway(pg_url, redis_url, prefix)
    proc_b, url_b = start_gateway(pg_url, redis_url, prefix)
    try:
        results = asyncio.run(burst([url_a, url_b], key, proc_a))
    finally:
        proc_a.wait(10)
        proc_b.send_signal(signal.SIGTERM)  # a graceful stop: its writer writes what it settled
        proc_b.wait(60)
    # Recovery on a live replica: the dead one's holds expire and are reaped; its unacknowledged batch is claimed.
    assert billing.reap_expired(billing.clock() + timedelta(hours=1)) > 0
    billing.writer().drain()

    accepted = {rid for _, status, rid in results if status == 200}
    lost = sum(1 for url, status, _ in results if status is None)
    assert {status for _, status, _ in results} <= {200, 402, None}
    assert lost
    assert accepted
    records = {r["request_id"]: r for r in billing.usage(tenant["id"], limit=1000)}
    assert accepted <= set(records)  # every answered request is recorded (once: request_id is unique)
    unanswered = set(records) - accepted  # admitted by the killed gateway, its answer never sent
    assert 0 < len(unanswered) <= lost
    assert "expired" in {records[r]["status"] for r in unanswered}
    assert billing.ledger.open_holds() == (0, 0)
    assert billing.ledger.unwritten() == 0
    total = sum(r["cost_micros"] for r in records.values())
    assert spend_rows(billing) == [(total, 0)]  # the database's spend: each record counted exactly once
    assert redis_counters(billing, principal) == {b"spent": total, b"reserved": 0}
    assert total <= 200 * 80 + 7


def test_a_served_request_makes_no_database_round_trip_nor_thread_hop(pg_url, redis_url, prefix, monkeypatch):
    """Through the whole gateway on PostgreSQL + Redis: once the key, price and budget period are cached, a
    request reads nothing from the database and runs on the event loop (the money path is Redis alone)."""
    import gateway.ferry
    from tests.billing.helpers import gateway_app
    from tests.util import serve

    app, billing = gateway_app(pg_url, redis_url=redis_url, redis_prefix=prefix)
    tenant = billing.create_tenant("acme")
    key, _ = billing.create_key(tenant["id"])
    billing.set_budget(tenant["id"], limit_micros=10**9, period="monthly")
    body = {"model": SMALL, "prompt": PROMPT[:20], "max_tokens": 5}
    headers = {"Authorization": f"Bearer {key}"}
    hops, checkouts = [], []
    to_thread = asyncio.to_thread

    async def counted(fn, *args, **kwargs):
        hops.append(getattr(fn, "__name__", fn))
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(gateway.ferry.asyncio, "to_thread", counted)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/completions", json=body, headers=headers).status_code == 200  # warms the caches
        hops.clear()
        # The batch writer's own transactions (thread "ledger-writer") are off the request path.
        event.listen(billing.engine, "checkout",
                     lambda *a: threading.current_thread().name != "ledger-writer" and checkouts.append(1))
        for _ in range(5):
            assert client.post("/v1/completions", json=body, headers=headers).status_code == 200
        assert (hops, checkouts) == ([], [])
    billing.close()


def test_feedback_sent_before_the_writer_wrote_the_record_waits_for_it(pg_url, redis_url, prefix, monkeypatch):
    """A record reaches PostgreSQL through the batch writer: feedback on a request that just finished waits for it
    instead of answering 404; with nothing left to write, an unknown request is a 404 at once."""
    from billing.redis_ledger import Writer
    from tests.billing.helpers import gateway_app
    from tests.util import serve

    written = threading.Event()
    commit = Writer.commit

    def held_commit(self, batch):
        written.wait(10)
        commit(self, batch)

    monkeypatch.setattr(Writer, "commit", held_commit)
    app, billing = gateway_app(pg_url, redis_url=redis_url, redis_prefix=prefix)
    tenant = billing.create_tenant("acme")
    key, _ = billing.create_key(tenant["id"])
    headers = {"Authorization": f"Bearer {key}"}
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/completions", json={"model": SMALL, "prompt": PROMPT[:20], "max_tokens": 5},
                        headers=headers)
        request_id = r.headers["x-request-id"]
        assert billing.unwritten() == 1
        threading.Timer(0.3, written.set).start()
        t0 = time.monotonic()
        r = client.post("/v1/feedback", json={"request_id": request_id, "score": 0.5}, headers=headers)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 >= 0.25
        assert [x["feedback_score"] for x in billing.usage(tenant["id"])] == [0.5]
        assert billing.unwritten() == 0
        t0 = time.monotonic()
        r = client.post("/v1/feedback", json={"request_id": "req-none", "score": 0.5}, headers=headers)
        assert r.status_code == 404
        assert time.monotonic() - t0 < 0.75  # nothing unwritten: no wait for the writer (WRITER_WAIT_S, 1 s)
    billing.close()


def test_redis_cut_under_the_holds_answers_503_bills_nothing_and_recovers(pg_url, redis_url, prefix):
    """Holds in Redis over the pipelined connection (billing/resp.py): Redis cut mid-run -> 503 naming Redis, no
    hold, no record; Redis back -> the next request reconnects and is served and billed."""
    from urllib.parse import urlsplit

    from tests.billing.helpers import gateway_app
    from tests.gateway.test_hardening_outages import TcpProxy
    from tests.util import serve

    proxy = TcpProxy(urlsplit(redis_url).port)
    app, billing = gateway_app(pg_url, redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_prefix=prefix)
    tenant, principal, key = tenant_with_key(billing, limit_micros=10**9)
    body, headers = {"model": SMALL, "prompt": PROMPT[:20], "max_tokens": 5}, {"Authorization": f"Bearer {key}"}
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/v1/completions", json=body, headers=headers).status_code == 200
            proxy.cut()
            r = client.post("/v1/completions", json=body, headers=headers)
            assert r.status_code == 503
            assert "Redis" in r.json()["error"]["message"]
            assert r.headers["retry-after"]
            proxy.restore()
            r = client.post("/v1/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
        billing.writer().drain()
        records = billing.usage(tenant["id"])
        assert [r["status"] for r in records] == ["ok", "ok"]
        assert billing.ledger.open_holds() == (0, 0)
        assert redis_counters(billing, principal) == {b"spent": sum(r["cost_micros"] for r in records), b"reserved": 0}
    finally:
        proxy.close()
        billing.close()
