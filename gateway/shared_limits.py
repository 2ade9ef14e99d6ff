"""Shared (Redis) rate limits, and what admission does while Redis is down (FERRYMAN_REDIS_OUTAGE)."""
from __future__ import annotations

import contextlib
import logging

from billing import RateLimiter
from gateway.errors import REDIS_DOWN

log = logging.getLogger("ferryman")


class RedisOutagePolicy:
    """Shared (Redis) rate limits with a documented answer for when Redis is down.

    "closed" (default): admission fails with 503 + Retry-After (no request runs unmetered).
    "local": each gateway process falls back to its own in-process limits until Redis answers again, so the
    fleet admits up to (replicas x limit) meanwhile. Releasing a slot never fails a request: a slot Redis
    could not hear about expires on its own (billing.limits.SLOT_TTL_S)."""

    def __init__(self, shared, policy: str):
        self.shared, self.policy, self.local = shared, policy, RateLimiter()

    async def admit(self, principal, tokens: int) -> dict[str, str]:
        try:
            return await self.shared.admit(principal, tokens)
        except REDIS_DOWN as exc:
            if self.policy != "local":
                raise
            log.warning("Redis unreachable (%s): admitting on this process's own limits", exc.__class__.__name__)
            return await self.local.admit(principal, tokens)

    async def release(self, principal) -> None:
        if any(self.local.in_flight(lim.scope) for lim in principal.limits):
            return await self.local.release(principal)
        with contextlib.suppress(*REDIS_DOWN):
            await self.shared.release(principal)

    async def ping(self) -> None:
        """Raises when the shared limits' Redis does not answer (the readiness probe)."""
        await self.shared.ping()

    async def close(self) -> None:
        await self.shared.close()
