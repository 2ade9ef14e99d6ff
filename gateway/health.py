"""Liveness, readiness, rolling restarts, and what rate limiting does while Redis is down.

- `/health` is liveness: the process answers. It stays 200 while dependencies are down or while draining, so
  an orchestrator does not kill a gateway that is merely waiting for its database.
- `/ready` is readiness: the ledger database answers, Redis answers (when configured), each remote model is up
  (its health probes pass, its circuit breaker is closed, its key is accepted), and the gateway is not draining.
  Otherwise 503, naming what is wrong, with Retry-After. Either way `upstreams` lists each model's state.
- SIGTERM drains (`serve`): /ready turns 503, new requests get 503 + Retry-After, requests in flight finish
  within `shutdown_grace_s`; streams still running then end with an SSE error event and are settled as
  failed, at no cost (docs/BILLING.md); the process exits 0 once nothing is in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import AsyncIterator

import uvicorn
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from billing import RateLimiter
from gateway import http_limits
from gateway.errors import REDIS_DOWN, unavailable

log = logging.getLogger("ferryman")
router = APIRouter()
CHECK_TIMEOUT_S = 2.0


class Drain:
    """The gateway's restart state, shared by the drain gate (middleware), /ready and the streams in flight."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        self.deadline: float | None = None  # event-loop time at which streams still running are cut
        self.waits: set[asyncio.Timeout] = set()  # streams waiting for their next delta

    def begin(self) -> None:
        """Called on the event loop (a loop signal handler)."""
        if not self.draining:
            self.draining, self.deadline = True, time.monotonic() + self.grace_s
            log.info("draining: %d request(s) in flight, %.0f s grace", self.in_flight, self.grace_s)
            for wait in self.waits:  # a stream silent since before the signal is cut on time too
                wait.reschedule(self.deadline)

    def past_deadline(self) -> bool:
        """Whether streams still running are being cut now (the request's failure is then the gateway's)."""
        return self.draining and time.monotonic() >= self.deadline

    async def guard(self, deltas: AsyncIterator) -> AsyncIterator:
        """Pass a generation through; past the drain deadline, stop it (it settles as failed) and raise 503."""
        it = aiter(deltas)
        while True:
            try:
                async with asyncio.timeout_at(self.deadline) as wait:
                    self.waits.add(wait)
                    try:
                        delta = await anext(it)
                    finally:
                        self.waits.discard(wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not wait.expired():  # the generation's own timeout: it speaks for itself
                    raise
                raise unavailable("The gateway restarted before this answer was complete; retry the request.",
                                  "shutting_down") from None
            yield delta


@router.get("/health", responses={200: {"description": "The process is alive."}})
async def health():
    return {"status": "ok"}


@router.get("/ready", responses={200: {"description": "Ready for traffic."},
                                 503: {"description": "Draining, or a dependency is down (the body says which)."}})
async def ready(request: Request):
    problems = await readiness_problems(request.app)
    ferry = getattr(request.app.state, "ferry", None)
    upstreams = {name: backend_state(b) for name, b in ferry.backends.items()} if ferry else {}
    if not problems:
        return {"status": "ready", "upstreams": upstreams}
    refusal = unavailable("Not ready: " + "; ".join(problems), "not_ready")
    return JSONResponse({**refusal.body(), "status": "not ready", "problems": problems, "upstreams": upstreams}, 503,
                        refusal.headers)


async def readiness_problems(app) -> list[str]:
    if app.state.drain.draining:
        return ["the gateway is shutting down"]
    ferry = getattr(app.state, "ferry", None)
    if ferry is None:
        return ["the gateway is starting"]
    checks = {"database": _database(ferry.billing), "redis": _redis(ferry.limiter)}
    problems = [f"{name} unreachable ({error})" for name, error in zip(checks, await asyncio.gather(*checks.values()))
                if error]
    if not problems and hasattr(ferry.billing.ledger, "problem"):  # budget holds in Redis: lost data is a problem
        problems += await _ledger_problem(ferry.billing.ledger)
    states = {name: backend_state(b) for name, b in ferry.backends.items()}
    return problems + [f"model {name} is {state['state']} ({state.get('reason', '')})"
                       for name, state in states.items() if state["state"] != "up"]


async def _database(billing) -> str | None:
    def ping():
        with billing.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return await _error_of(asyncio.to_thread(ping))


async def _redis(limiter) -> str | None:
    shared = getattr(limiter, "shared", limiter)
    return await _error_of(shared.redis.call("PING")) if hasattr(shared, "redis") else None


async def _ledger_problem(ledger) -> list[str]:
    """The Redis ledger's: lost data (holds refused while budgets re-seed), or Redis unreachable (the rate limiter
    may be the process's own, so its check above does not cover the ledger's Redis)."""
    try:
        problem = await asyncio.wait_for(ledger.problem(), CHECK_TIMEOUT_S)
    except Exception as exc:  # a readiness probe reports any failure; it never raises
        return [f"redis unreachable ({exc.__class__.__name__})"]
    return [problem] if problem else []


async def _error_of(check) -> str | None:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except Exception as exc:  # a readiness probe reports any failure; it never raises
        return exc.__class__.__name__
    return None


def backend_state(backend) -> dict:
    """A remote model's state as its health probes and circuit breaker see it (up, open, down, with the reason);
    in-process engines are up once started (a scale-to-zero engine loads on demand)."""
    state = getattr(backend, "state", None)
    return state() if state else {"state": "up"}


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

    async def close(self) -> None:
        await self.shared.close()


def serve(app, host: str, port: int) -> None:
    """Run the gateway until SIGTERM/SIGINT, drain, and return (exit 0). A second signal stops at once."""
    config = http_limits.uvicorn_config(app, app.state.settings, host=host, port=port, log_level="warning",
                                        timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.drain).run()


class DrainingServer(uvicorn.Server):
    """uvicorn alone stops listening at once and re-raises SIGTERM (exit 143); a gateway drains first."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def on_signal(self) -> None:
        if self.drain.draining:
            self.should_exit = True
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        # In flight reaches 0 by the deadline: streams past it end themselves (Drain.guard) and settle. A request
        # stuck elsewhere (say, on a dead database) gets a little longer, then uvicorn cancels it.
        if self.drain.draining and (self.drain.in_flight == 0 or time.monotonic() > self.drain.deadline + 10):
            return True
        return await super().on_tick(counter)
