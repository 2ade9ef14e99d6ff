"""Liveness and readiness.

- `/health` is liveness: the process answers. It stays 200 while dependencies are down or while draining, so
  an orchestrator does not kill a gateway that is merely waiting for its database.
- `/ready` is readiness: the ledger database answers, Redis answers (when configured), each remote model is up
  (its health probes pass, its circuit breaker is closed, its key is accepted), and the gateway is not draining
  (gateway/drain.py). Otherwise 503, naming what is wrong, with Retry-After. Either way `upstreams` lists each
  model's state.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway.errors import unavailable

router = APIRouter()
CHECK_TIMEOUT_S = 2.0


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
    return await _error_of(limiter.ping())


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
