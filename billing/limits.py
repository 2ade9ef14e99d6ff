"""Rate limits: token buckets for requests and tokens per minute, and a cap on requests in flight.

Each scope of a principal (its tenant, its key) has up to two buckets, holding at most a minute's
allowance and refilling continuously. A request is admitted only if every bucket and every
concurrency cap allows it, and then takes from all of them at once; a refused request takes nothing.
`RateLimiter` keeps buckets in this process; `billing.redis_limits.RedisRateLimiter` keeps them in
Redis, checked and taken by one Lua script, so that several gateway replicas share one limit. Both
offer the same public API: `admit`, `release`, `close`; this module imports nothing of Redis.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from billing.auth import Principal

SLOT_TTL_S = 900.0  # a replica that dies mid-request leaks its slots in Redis at most this long after the last admit


class RateLimited(Exception):
    def __init__(self, message: str, retry_after_s: float, headers: dict[str, str]):
        super().__init__(message)
        self.retry_after_s, self.headers = retry_after_s, headers


@dataclass(frozen=True)
class Check:
    kind: str  # "requests" | "tokens"
    key: str
    capacity: int  # per minute
    cost: int

    def wait_s(self, level: float) -> float:
        return max(0.0, (self.cost - level) * 60.0 / self.capacity)


def checks(principal: Principal, tokens: int) -> list[Check]:
    out = []
    for lim in principal.limits:
        if lim.rpm:
            out.append(Check("requests", f"{lim.scope}:rpm", lim.rpm, 1))
        if lim.tpm:
            out.append(Check("tokens", f"{lim.scope}:tpm", lim.tpm, tokens))
    return out


def headers(found: list[Check], levels: list[float]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, from the tightest bucket of each kind."""
    out = {}
    for kind in ("requests", "tokens"):
        pairs = [(level, c) for c, level in zip(found, levels) if c.kind == kind]
        if pairs:
            level, c = min(pairs, key=lambda p: p[0] / p[1].capacity)
            out[f"x-ratelimit-limit-{kind}"] = str(c.capacity)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
            out[f"x-ratelimit-reset-{kind}"] = duration((c.capacity - level) * 60.0 / c.capacity)
    return out


def duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: '120ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.3g}s"


def refusal(found: list[Check], levels: list[float], full: list[str]) -> RateLimited:
    waits = [(c.wait_s(level), c) for c, level in zip(found, levels) if level < c.cost]
    hdrs = headers(found, levels)
    if any(c.cost > c.capacity for _, c in waits):
        c = next(c for _, c in waits if c.cost > c.capacity)
        return RateLimited(f"Request too large for {c.key.rsplit(':', 1)[0]}: it may use {c.cost} tokens "
                           f"(prompt + max_tokens) but the limit is {c.capacity} tokens per minute. "
                           f"Lower max_tokens or shorten the prompt.", 60.0, hdrs)
    if waits:
        wait, c = max(waits, key=lambda w: w[0])
        return RateLimited(f"Rate limit reached for {c.key.rsplit(':', 1)[0]} on {c.kind} per minute: "
                           f"limit {c.capacity}. Please try again in {duration(wait)}.", wait, hdrs)
    return RateLimited(f"Too many requests in flight for {', '.join(full)}. Please retry when one finishes.",
                       1.0, hdrs)


class RateLimiter:
    """In-process limits: exact for one gateway process (`RedisRateLimiter` shares them across replicas)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, at)
        self._inflight: dict[str, int] = {}

    async def admit(self, principal: Principal, tokens: int) -> dict[str, str]:
        """Take one request and `tokens` tokens from every bucket and a slot; the x-ratelimit-* headers.

        Raises RateLimited (taking nothing) when any limit would be passed."""
        now = self.clock()
        found = checks(principal, tokens)
        levels = [self._level(c, now) for c in found]
        full = [lim.scope for lim in principal.limits
                if lim.max_concurrent and self._inflight.get(lim.scope, 0) >= lim.max_concurrent]
        if full or any(level < c.cost for c, level in zip(found, levels)):
            raise refusal(found, levels, full)
        for c, level in zip(found, levels):
            self._buckets[c.key] = (level - c.cost, now)
        for lim in principal.limits:
            if lim.max_concurrent:
                self._inflight[lim.scope] = self._inflight.get(lim.scope, 0) + 1
        return headers(found, [level - c.cost for c, level in zip(found, levels)])

    async def release(self, principal: Principal) -> None:
        for lim in principal.limits:
            if lim.max_concurrent and self._inflight.get(lim.scope, 0) > 0:
                self._inflight[lim.scope] -= 1

    def in_flight(self, scope: str) -> int:
        """Requests of `scope` this limiter admitted and has not released yet."""
        return self._inflight.get(scope, 0)

    async def ping(self) -> None:
        """Nothing to reach: the buckets live in this process."""

    async def close(self) -> None:
        """Nothing to close: the buckets live in this process."""

    def _level(self, c: Check, now: float) -> float:
        level, at = self._buckets.get(c.key, (float(c.capacity), now))
        return min(float(c.capacity), level + max(0.0, now - at) * c.capacity / 60.0)
