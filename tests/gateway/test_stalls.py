"""Every dependency has a deadline (issue 26, point 2; docs/SECURITY.md "Deadlines"): a PostgreSQL or Redis that
stalls (connections accepted, nothing passes either way; not refused) answers the requests that need it 503 with
Retry-After within a bounded time, bills none of them, and serves and bills again once the path flows.

The stall is a TCP proxy in front of the local server (tests/gateway/test_hardening_outages.py's TcpProxy). The
deadlines are set small here; the bounds asserted are generous for a loaded 2-core box."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from billing import Billing
from billing.db import Deadlines
from tests.gateway.test_hardening_outages import (PG_PORT, REDIS_PORT, TcpProxy, assert_503, chat, gateway_with,
                                                  pg_schema)  # noqa: F401 (a fixture)

# PostgreSQL: connect (its floor is 2 s: libpq counts whole seconds), statement, pool checkout, and the client's own
# deadline on each use of a connection (the watchdog's: a stalled path is never caught server-side).
DEADLINES = Deadlines(connect_s=2.0, statement_s=1.0, checkout_s=1.0, use_s=1.5)
REDIS_TIMEOUT_S = 1.0
STALLED = 4  # requests sent at once while the path is stalled


def stalled_requests(gw) -> list[tuple[httpx.Response, float]]:
    """STALLED requests at once; each one's answer and how long it took."""
    def timed(_):
        started = time.monotonic()
        return chat(gw), time.monotonic() - started

    with ThreadPoolExecutor(STALLED) as pool:
        return list(pool.map(timed, range(STALLED)))


def served_again(gw, within_s: float = 15) -> httpx.Response:
    """The first request served after the path flows again (a pooled connection cut meanwhile is replaced)."""
    deadline = time.time() + within_s
    while (r := chat(gw)).status_code != 200 and time.time() < deadline:
        time.sleep(0.2)
    return r


def ready_status(gw) -> tuple[int, str, float]:
    started = time.monotonic()
    r = httpx.get(gw.url + "/ready", timeout=30)
    return r.status_code, r.text, time.monotonic() - started


@pytest.fixture
def pg_url_via(pg_schema):
    """(URL through a TcpProxy in front of the local PostgreSQL, in a schema of its own; the proxy)."""
    user, schema = pg_schema
    proxy = TcpProxy(PG_PORT)
    yield f"postgresql+psycopg://{user}@127.0.0.1:{proxy.port}/test?options=-csearch_path%3D{schema}", proxy
    proxy.close()


@pytest.mark.slow
def test_a_stalled_postgresql_answers_503_within_its_deadlines_and_bills_nothing(tokenizer, pg_url_via):
    url, proxy = pg_url_via
    billing = Billing(url, deadlines=DEADLINES, cache_ttl_s=0.5)  # the key's cache runs out during the stall
    with gateway_with(tokenizer, url, billing=billing) as gw:
        billing.set_budget(gw.tenant_id, limit_micros=10**6)  # its counters are part of what must stay right
        assert chat(gw).status_code == 200
        proxy.stall()
        time.sleep(0.6)  # past the key's cache: authenticating needs the database too
        answers = stalled_requests(gw)
        ready = ready_status(gw)
        proxy.restore()
        # Each needs the database twice (the key, then the hold): two deadlines of one use plus a reconnect each.
        bound = 2 * (DEADLINES.use_s + DEADLINES.connect_s) + DEADLINES.checkout_s + 5
        for r, took in answers:
            assert_503(r, "database_unavailable", "database")
            assert took < bound, (took, bound)
        assert ready[0] == 503 and "database unreachable" in ready[1] and ready[2] < 10
        r = served_again(gw)
        assert r.status_code == 200, r.text
        deadline = time.time() + 10
        while gw.billing.ledger_totals(gw.tenant_id)["open_reservations"] and time.time() < deadline:
            time.sleep(0.2)  # a hold taken as its answer was lost is released at no cost once the database answers
        records = gw.records()
        billed = [x for x in records if x["cost_micros"]]
        assert [x["status"] for x in billed] == ["ok", "ok"]  # the request before the stall and the one after
        assert {x["status"] for x in records} <= {"ok", "unavailable"}
        assert gw.billing.ledger_totals(gw.tenant_id) == {"spent_micros": sum(x["cost_micros"] for x in billed),
                                                          "reserved_micros": 0, "open_reservations": 0}
        print(f"\nPostgreSQL stalled: {STALLED} requests answered 503 in "
              f"{min(t for _, t in answers):.1f}-{max(t for _, t in answers):.1f} s (bound {bound:.1f} s), "
              f"/ready in {ready[2]:.1f} s")
    billing.close()


@pytest.mark.slow
def test_a_stalled_redis_answers_503_within_its_timeout_bills_nothing_and_its_late_scripts_do_nothing(
        tokenizer, pg_url_via):
    pg_url, _ = pg_url_via  # (the database path is not stalled here)
    proxy = TcpProxy(REDIS_PORT)
    prefix = f"fm-test-{uuid.uuid4().hex}"
    billing = Billing(pg_url, redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_prefix=prefix,
                      redis_timeout_s=REDIS_TIMEOUT_S, deadlines=DEADLINES)
    direct = redis.Redis(port=REDIS_PORT)
    try:
        with gateway_with(tokenizer, pg_url, billing=billing) as gw:
            assert chat(gw).status_code == 200
            proxy.stall()
            answers = stalled_requests(gw)
            ready = ready_status(gw)
            proxy.restore()  # what the stalled requests sent reaches Redis now, after their deadline
            bound = REDIS_TIMEOUT_S + 5
            for r, took in answers:
                assert_503(r, "rate_limiter_unavailable", "Redis")
                assert took < bound, (took, bound)
            assert ready[0] == 503 and "redis unreachable" in ready[1] and ready[2] < 10
            r = served_again(gw)
            assert r.status_code == 200, r.text
            time.sleep(1.5)  # the background releases of the refused requests' holds get their turn
            assert billing.ledger.open_holds() == (0, 0)  # the late scripts found their deadline passed
            deadline = time.time() + 10
            while len(gw.records()) < 2 and time.time() < deadline:
                time.sleep(0.1)  # the batch writer
            records = gw.records()
            assert [x["status"] for x in records] == ["ok", "ok"]  # the refused ones left nothing, not even a hold
        print(f"\nRedis stalled: {STALLED} requests answered 503 in "
              f"{min(t for _, t in answers):.1f}-{max(t for _, t in answers):.1f} s (bound {bound:.1f} s), "
              f"/ready in {ready[2]:.1f} s")
    finally:
        proxy.close()
        for k in direct.scan_iter(f"{prefix}:*"):
            direct.delete(k)
        direct.close()
        billing.close()


CACHE_S = 3.0  # the key's and the prices' cache: requests in the stall's first seconds need no database


@pytest.mark.slow
def test_a_stalled_postgresql_under_the_redis_ledger_answers_503_and_loses_nothing_accepted(tokenizer, pg_url_via):
    # Scaled out (holds in Redis, records written to PostgreSQL in batches): while PostgreSQL stalls, a request the
    # caches can serve is held and settled in Redis and its record waits in the stream; one that needs the database
    # (its key, past the cache) gets 503 within the deadlines and leaves nothing. Once PostgreSQL flows, every
    # answered request's record is written with the cost its client was told.
    url, proxy = pg_url_via
    prefix = f"fm-test-{uuid.uuid4().hex}"
    billing = Billing(url, redis_url=f"redis://127.0.0.1:{REDIS_PORT}/0", redis_prefix=prefix,
                      redis_timeout_s=REDIS_TIMEOUT_S, deadlines=DEADLINES, cache_ttl_s=CACHE_S)
    direct = redis.Redis(port=REDIS_PORT)
    try:
        with gateway_with(tokenizer, url, billing=billing) as gw:
            billing.set_budget(gw.tenant_id, limit_micros=10**6)
            served = [chat(gw)]
            proxy.stall()
            stalled_at = time.monotonic()
            served += [chat(gw) for _ in range(3)]
            cached_s = time.monotonic() - stalled_at
            time.sleep(max(0.0, CACHE_S + 0.5 - cached_s))  # past the caches: the key needs the database
            answers = stalled_requests(gw)
            ready = ready_status(gw)
            waiting = direct.xlen(f"{prefix}:ledger:settled")  # the settled records the writer could not write
            proxy.restore()
            bound = 2 * (DEADLINES.use_s + DEADLINES.connect_s) + DEADLINES.checkout_s + 5
            assert waiting >= 3
            for r in served:
                assert r.status_code == 200, r.text
            for r, took in answers:
                assert_503(r, "database_unavailable", "database")
                assert took < bound, (took, bound)
            assert ready[0] == 503 and "database unreachable" in ready[1] and ready[2] < 10
            served.append(served_again(gw))
            assert served[-1].status_code == 200, served[-1].text
            deadline = time.time() + 15
            while len(gw.records()) < len(served) and time.time() < deadline:
                time.sleep(0.2)  # the batch writer retries what the stall held up
            told = {r.headers["x-request-id"]: round(float(r.headers["x-ferryman-cost-usd"]) * 1e6) for r in served}
            records = gw.records()
            assert {x["request_id"]: x["cost_micros"] for x in records} == told
            assert {x["status"] for x in records} == {"ok"}
            assert billing.ledger.open_holds() == (0, 0)
            assert gw.billing.ledger_totals(gw.tenant_id) == {"spent_micros": sum(told.values()),
                                                              "reserved_micros": 0, "open_reservations": 0}
        print(f"\nPostgreSQL stalled under the Redis ledger: 3 requests served from the caches, {STALLED} answered "
              f"503 in {min(t for _, t in answers):.1f}-{max(t for _, t in answers):.1f} s (bound {bound:.1f} s), "
              f"{len(records)} records written after it")
    finally:
        for k in direct.scan_iter(f"{prefix}:*"):
            direct.delete(k)
        direct.close()
        billing.close()
