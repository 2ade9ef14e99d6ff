"""200 concurrent requests through two gateway replicas sharing one ledger, against a budget that fits about 50.

Every layer is real (HTTP, auth, limits, reservation, routing, streaming, settle, record); only the model is
an instant echo. Some clients hang up mid-stream, so settlement on disconnect is part of the count.
"""
import asyncio
import time
import uuid

import httpx
import pytest

from billing.reports import totals
from tests.billing.helpers import gateway_app
from tests.util import serve

PROMPT = list(range(10, 210))  # 200 token ids
MAX_TOKENS = 50
WORST = 200 * 200_000 // 1_000_000 + MAX_TOKENS * 800_000 // 1_000_000  # 80 micro-USD on the small model
LIMIT = 50 * WORST + 7


async def one(client: httpx.AsyncClient, key: str, i: int) -> tuple[int, str | None]:
    body = {"model": "ferryman-small", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": i % 4 == 0}
    headers = {"Authorization": f"Bearer {key}"}
    if not body["stream"]:
        answer = await client.post("/v1/completions", json=body, headers=headers)
        return answer.status_code, answer.headers.get("x-request-id")
    async with client.stream("POST", "/v1/completions", json=body, headers=headers) as answer:
        if i % 8 == 0:  # hang up after the first event: the gateway must still settle exactly once
            async for _ in answer.aiter_lines():
                break
        else:
            await answer.aread()
        return answer.status_code, answer.headers.get("x-request-id")


async def storm(urls: list[str], key: str, n: int) -> list[tuple[int, str | None]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    clients = [httpx.AsyncClient(base_url=url, timeout=60, limits=limits) for url in urls]
    try:
        return await asyncio.gather(*[one(clients[i % 2], key, i) for i in range(n)])
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.slow
def test_two_gateways_never_spend_past_the_budget(db_url):
    two_gateways_never_spend_past_the_budget(db_url)


@pytest.mark.slow
def test_two_gateways_with_holds_in_redis_never_spend_past_the_budget(pg_url, redis_url):
    prefix = f"fm-test-{uuid.uuid4().hex}"
    try:
        two_gateways_never_spend_past_the_budget(pg_url, redis_url, prefix)
    finally:
        forget_keys(redis_url, prefix)


def forget_keys(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)
    r.close()


def two_gateways_never_spend_past_the_budget(db_url: str, redis_url: str | None = None, prefix: str = "") -> None:
    app_a, billing_a = gateway_app(db_url, delay_s=0.002, redis_url=redis_url, redis_prefix=prefix)
    app_b, billing_b = gateway_app(db_url, delay_s=0.002, redis_url=redis_url, redis_prefix=prefix)
    tenant = billing_a.create_tenant("acme")
    key, _ = billing_a.create_key(tenant["id"])
    billing_a.set_budget(tenant["id"], limit_micros=LIMIT, period="monthly")

    with serve(app_a) as url_a, serve(app_b) as url_b:
        results = asyncio.run(storm([url_a, url_b], key, 200))
        deadline = time.time() + 20  # hung-up streams settle when the server notices the disconnect
        while billing_a.ledger_totals(tenant["id"])["open_reservations"] and time.time() < deadline:
            time.sleep(0.05)
    # Leaving `serve` stopped both gateways; each writer wrote what its process settled before it stopped.
    assert redis_url is None or billing_a.ledger.unwritten() == 0

    statuses = sorted({s for s, _ in results})
    accepted = {rid for s, rid in results if s == 200}
    assert statuses == [200, 402]
    assert len(accepted) >= 50
    ledger = billing_a.ledger_totals(tenant["id"])
    assert ledger["spent_micros"] <= LIMIT
    assert (ledger["reserved_micros"], ledger["open_reservations"]) == (0, 0)
    records = billing_b.usage(tenant["id"], limit=1000)
    assert sorted(r["request_id"] for r in records) == sorted(accepted)
    assert {r["status"] for r in records} <= {"ok", "cancelled"}
    report = totals(billing_b.report(tenant_id=tenant["id"]))
    assert report["requests"] == len(accepted)
    assert report["cost_micros"] == ledger["spent_micros"] == sum(r["cost_micros"] for r in records)
    billing_a.close(), billing_b.close()


def test_two_gateways_share_one_rate_limit_through_redis(sqlite_url, redis_url):
    import uuid

    import redis

    from billing.redis_limits import RedisRateLimiter

    prefix = f"fm-test-{uuid.uuid4().hex}"
    app_a, billing_a = gateway_app(sqlite_url, limiter=RedisRateLimiter(redis_url, prefix))
    app_b, billing_b = gateway_app(sqlite_url, limiter=RedisRateLimiter(redis_url, prefix))
    tenant = billing_a.create_tenant("acme", rpm=6)
    key, _ = billing_a.create_key(tenant["id"])
    body = {"model": "ferryman-small", "prompt": [5, 6, 7], "max_tokens": 2}
    try:
        with serve(app_a) as url_a, serve(app_b) as url_b:
            answers = [httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
                       for url in [url_a, url_b] * 5]
    finally:
        r = redis.Redis.from_url(redis_url)
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)
    assert [a.status_code for a in answers] == [200] * 6 + [429] * 4
    assert answers[5].headers["x-ratelimit-remaining-requests"] == "0"
    assert answers[6].headers["x-ratelimit-limit-requests"] == "6"
    assert int(answers[6].headers["retry-after"]) >= 1
    assert len(billing_b.usage(tenant["id"])) == 6
    billing_a.close(), billing_b.close()
