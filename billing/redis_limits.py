"""The same limits as `RateLimiter`, kept in Redis so every gateway replica draws from one set of buckets."""
from __future__ import annotations

import time
from typing import Callable

from billing import resp
from billing.limits import SLOT_TTL_S, checks, headers, refusal
from billing.auth import Principal

# KEYS: n bucket keys, then the concurrency keys.  ARGV: now_ms, n, then capacity and cost per bucket,
# then max and ttl_ms per concurrency key.  Returns {admitted, full flags..., levels...} as strings
# (Redis would truncate Lua numbers to integers).
ADMIT = """
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local levels, short = {}, false
for i = 1, n do
  local cap, cost = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level, at = tonumber(state[1]) or cap, tonumber(state[2]) or now
  level = math.min(cap, level + math.max(0, now - at) * cap / 60000)
  levels[i] = level
  if level < cost then short = true end
end
local full = {}
for j = n + 1, #KEYS do
  local max = tonumber(ARGV[3 + 2 * n + 2 * (j - n - 1)])
  full[j - n] = (tonumber(redis.call('GET', KEYS[j]) or '0') >= max) and '1' or '0'
  if full[j - n] == '1' then short = true end
end
local out = {short and '0' or '1'}
for j = 1, #full do out[#out + 1] = full[j] end
if not short then
  for i = 1, n do
    levels[i] = levels[i] - tonumber(ARGV[2 + 2 * i])
    redis.call('HSET', KEYS[i], 'level', tostring(levels[i]), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], 120000)
  end
  for j = n + 1, #KEYS do
    redis.call('INCR', KEYS[j])
    redis.call('PEXPIRE', KEYS[j], tonumber(ARGV[4 + 2 * n + 2 * (j - n - 1)]))
  end
end
for i = 1, n do out[#out + 1] = tostring(levels[i]) end
return out
"""

RELEASE = """
for i = 1, #KEYS do
  if redis.call('DECR', KEYS[i]) <= 0 then redis.call('DEL', KEYS[i]) end
end
return 0
"""


class RedisRateLimiter:
    """`RateLimiter`'s public API (admit, release, close) with the buckets and slots in Redis."""

    def __init__(self, url: str, prefix: str = "ferryman", clock: Callable[[], float] = time.time,
                 timeout_s: float = 2.0):
        # Wall-clock time, not monotonic: every replica must agree on what "now" is for a shared bucket.
        self.clock = clock
        self.redis = resp.Redis(url, timeout_s)  # connect and every answer: a stalled Redis fails, never hangs
        self.prefix = prefix
        self._admit, self._release = resp.Script(ADMIT), resp.Script(RELEASE)

    async def admit(self, principal: Principal, tokens: int) -> dict[str, str]:
        found = checks(principal, tokens)
        capped = [lim for lim in principal.limits if lim.max_concurrent]
        if not found and not capped:
            return {}
        args = [round(self.clock() * 1000), len(found)]
        for c in found:
            args += [c.capacity, c.cost]
        for lim in capped:
            args += [lim.max_concurrent, round(SLOT_TTL_S * 1000)]
        keys = [f"{self.prefix}:{c.key}" for c in found] + [f"{self.prefix}:{lim.scope}:inflight" for lim in capped]
        reply = [r.decode() for r in await self.redis.script(self._admit, keys, args)]
        full = [lim.scope for lim, flag in zip(capped, reply[1:]) if flag == "1"]
        levels = [float(x) for x in reply[1 + len(capped):]]
        if reply[0] != "1":
            raise refusal(found, levels, full)
        return headers(found, levels)

    async def release(self, principal: Principal) -> None:
        keys = [f"{self.prefix}:{lim.scope}:inflight" for lim in principal.limits if lim.max_concurrent]
        if keys:
            await self.redis.script(self._release, keys, [])

    async def ping(self) -> None:
        """Raises when Redis does not answer (the readiness probe)."""
        await self.redis.call("PING")

    async def close(self) -> None:
        await self.redis.close()
