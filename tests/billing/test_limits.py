"""Token buckets and concurrency caps, in-process and in Redis, driven by a fake clock (no sleeps)."""
import asyncio
import uuid

import pytest

from billing import Limit, Principal, RateLimited, RateLimiter
from billing.redis_limits import RedisRateLimiter


class FakeClock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def principal(tenant: Limit | None = None, key: Limit | None = None) -> Principal:
    return Principal(tenant_id=1, tenant_name="acme", key_id=7, priority="standard", quality_floor=None,
                     large_share=None, limits=tuple(x for x in (tenant, key) if x), tenant_budget=None,
                     key_budget=None, expires_at=None)


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request):
    """A factory of limiters sharing one fake clock; Redis ones share one fresh key prefix."""
    clock = FakeClock()
    if request.param == "memory":
        limiter = RateLimiter(clock)
        yield clock, lambda: limiter
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"fm-test-{uuid.uuid4().hex}"
    yield clock, lambda: RedisRateLimiter(url, prefix, clock=clock)
    import redis

    r = redis.Redis.from_url(url)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)


def run(coro):
    return asyncio.run(coro)


def test_requests_per_minute_refill_continuously(make_limiter):
    clock, make = make_limiter
    p = principal(key=Limit("key:7", rpm=60, tpm=None, max_concurrent=None))

    async def scenario():
        limiter = make()
        for i in range(60):
            headers = await limiter.admit(p, 10)
        assert headers["x-ratelimit-limit-requests"] == "60" and headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(p, 10)
        assert refused.value.retry_after_s == pytest.approx(1.0)
        assert "requests per minute" in str(refused.value)
        clock.t += 0.5
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(p, 10)
        assert refused.value.retry_after_s == pytest.approx(0.5)
        clock.t += 0.5
        await limiter.admit(p, 10)
        clock.t += 600  # a long quiet spell fills the bucket to one minute's worth, no more
        for i in range(60):
            await limiter.admit(p, 10)
        with pytest.raises(RateLimited):
            await limiter.admit(p, 10)

    run(scenario())


def test_tokens_per_minute_and_request_too_large(make_limiter):
    clock, make = make_limiter
    p = principal(tenant=Limit("tenant:1", rpm=None, tpm=1000, max_concurrent=None))

    async def scenario():
        limiter = make()
        headers = await limiter.admit(p, 700)
        assert headers["x-ratelimit-remaining-tokens"] == "300"
        assert headers["x-ratelimit-reset-tokens"] == "42s"  # 700 tokens at 1000/min
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(p, 400)
        assert refused.value.retry_after_s == pytest.approx(6.0)
        assert refused.value.headers["x-ratelimit-remaining-tokens"] == "300"
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(p, 1001)
        assert "Request too large" in str(refused.value)
        clock.t += 6
        await limiter.admit(p, 400)

    run(scenario())


def test_a_refused_request_takes_nothing_from_any_bucket(make_limiter):
    clock, make = make_limiter
    p = principal(tenant=Limit("tenant:1", rpm=5, tpm=None, max_concurrent=None),
                  key=Limit("key:7", rpm=None, tpm=6000, max_concurrent=None))

    async def scenario():
        limiter = make()
        await limiter.admit(p, 6000)  # the key's tokens are gone; the tenant has 4 requests left
        for _ in range(3):
            with pytest.raises(RateLimited):
                await limiter.admit(p, 50)
        clock.t += 0.5  # 50 tokens back
        headers = await limiter.admit(p, 50)
        assert headers["x-ratelimit-remaining-requests"] == "3"

    run(scenario())


def test_concurrency_cap_holds_until_release(make_limiter):
    _, make = make_limiter
    p = principal(tenant=Limit("tenant:1", rpm=None, tpm=None, max_concurrent=2))

    async def scenario():
        limiter = make()
        assert await limiter.admit(p, 1) == {}
        await limiter.admit(p, 1)
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(p, 1)
        assert "in flight" in str(refused.value) and refused.value.retry_after_s > 0
        await limiter.release(p)
        await limiter.admit(p, 1)

    run(scenario())


def test_no_limits_admit_everything():
    async def scenario():
        limiter = RateLimiter()
        for _ in range(1000):
            assert await limiter.admit(principal(), 10**6) == {}

    run(scenario())


def test_two_redis_limiters_share_one_limit(redis_url):
    """Two gateway replicas: the limit holds across both, whichever replica a request lands on."""
    prefix = f"fm-test-{uuid.uuid4().hex}"
    p = principal(tenant=Limit("tenant:1", rpm=40, tpm=None, max_concurrent=3))

    async def scenario():
        clock = FakeClock()
        a, b = RedisRateLimiter(redis_url, prefix, clock=clock), RedisRateLimiter(redis_url, prefix, clock=clock)
        results = await asyncio.gather(*[(a if i % 2 else b).admit(p, 1) for i in range(100)],
                                       return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, Exception)]
        assert len(admitted) == 3  # the concurrency cap bites first
        assert all(isinstance(r, RateLimited) for r in results if isinstance(r, Exception))
        for _ in range(3):
            await a.release(p)
        admitted = 0
        for i in range(100):
            try:
                await (a if i % 2 else b).admit(p, 1)
                await (b if i % 2 else a).release(p)
                admitted += 1
            except RateLimited:
                pass
        assert admitted == 37  # 40 per minute, 3 taken above
        await a.close(), await b.close()

    try:
        run(scenario())
    finally:
        import redis

        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(f"{prefix}:*"):
            r.delete(key)
