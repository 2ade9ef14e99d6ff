"""The ledger contract: what a ledger does (`Ledger`) and the money rules every ledger applies.

Pure: no database, no Redis, no clock of its own. The SQL ledger (billing.ledger) and the Redis ledger
(billing.redis_ledger) store holds and records differently; what a hold costs, what a request is charged, when a
failure is free, what the baseline says, when an alert fires and how a refusal reads are decided here, once.

The rules:
- worst case: a hold is the request's price with no cached token and every max token generated.
- charge: the GPU-hour price where the model has one (never past the per-token figure the hold quoted, or the
  tokens' own cost where that is higher), else the per-token prices. The true cost, also past the hold: an upstream
  that generates more than it was asked (or a template longer than allowed for) is billed what it produced, and
  `overrun_micros` says by how much the charge passed the hold (the gateway logs and counts it).
- budgets: a hold must fit (`spent + reserved + hold <= limit`), and an overrun is spend like any other, so a budget
  passes its limit only by the overrun of a request admitted while it still fitted, and then takes no hold.
- free failures: a request that ends in a server-side failure (`SERVER_FAILURES`: the gateway, a backend or a
  dependency failed; the client got an error, an SSE error event once streaming) costs nothing, however many tokens
  were generated before it; a client that went away (`cancelled`) pays for what was generated.
- baseline: the same tokens at the route group's strongest tier's price, kept beside the cost (savings per record);
  none when that model has no price.
- period: a request belongs to the budget period (and the report day) it was admitted in, so a budget's spend for a
  period is exactly the sum of that period's records, also for a request that settles after midnight.
- alerts: when spend reaches each of the budget's alert shares of its limit, once per threshold and period.
- refusals: a hold that does not fit is refused with what it would cost, what is left, and whether waiting helps.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol

from billing.auth import Principal
from billing.pricing import Price, usd

# Endings that are the server's fault: the client was told the request failed, so it pays nothing.
SERVER_FAILURES = ("error", "timeout", "unavailable", "expired")
RETRY_AFTER_S = 2  # a hold lasts as long as its request: a few seconds is the usual wait for one to settle


class BillingError(Exception):
    """Base of billing's refusals; the message is written for the tenant or operator to read."""


class BudgetExceeded(BillingError):
    def __init__(self, message: str, *, scope: str, period: str, period_key: str, limit_micros: int,
                 spent_micros: int, reserved_micros: int, requested_micros: int):
        super().__init__(message)
        self.scope, self.period, self.period_key = scope, period, period_key
        self.limit_micros, self.spent_micros = limit_micros, spent_micros
        self.reserved_micros, self.requested_micros = reserved_micros, requested_micros

    @property
    def retryable(self) -> bool:
        """The request fits once the holds of requests in flight settle: worth retrying, unlike a spent budget."""
        return fits_later(self.limit_micros, self.spent_micros, self.reserved_micros, self.requested_micros)

    @property
    def retry_after_s(self) -> int | None:
        return RETRY_AFTER_S if self.retryable else None


class LedgerRecovering(BillingError):
    """Redis lost the ledger's data: holds are refused until budgets are re-seeded (billing.redis_ledger)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownPrice(BillingError):
    pass


class DuplicateRequest(BillingError):
    pass


@dataclass(frozen=True)
class Reservation:
    """A request's hold on its budgets; each ledger adds where it keeps it (billing.ledger, billing.redis_ledger)."""

    request_id: str
    tenant_id: int
    key_id: int
    model: str
    amount_micros: int
    price: Price  # prices as admitted: a price edit mid-request cannot push the cost past the hold
    day: str  # the UTC day it was admitted: its record's day, so it counts in the period it held on
    store_prompts: bool = False  # as the principal said at admission: settle keeps prompt_text only then


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    tenant_id: int
    key_id: int
    model: str
    route: str | None
    difficulty: float | None
    status: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_micros: int
    baseline_cost_micros: int | None
    latency_ms: float | None
    day: str
    created_at: datetime
    estimated: bool = False
    route_group: str | None = None
    gpu_seconds: float | None = None
    prompt_text: str | None = None
    token_cost_micros: int | None = None  # the tokens at the per-token prices
    gpu_cost_micros: int | None = None  # the GPU-seconds at the GPU-hour price; None: the model has none

    @property
    def savings_micros(self) -> int:
        return 0 if self.baseline_cost_micros is None else self.baseline_cost_micros - self.cost_micros


class Ledger(Protocol):
    """What the gateway needs of a ledger; every call is awaited on the event loop. Operator commands and tests
    reach the same calls through billing.Billing's synchronous methods."""

    async def reserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                      max_tokens: int) -> Reservation:
        """Hold the worst case on the tenant's and the key's budget, both or neither; BudgetExceeded changes nothing."""

    async def settle(self, res: Reservation, **usage) -> UsageRecord:
        """Charge the actual cost, release the rest of the hold, keep the one record (`usage`: `usage_record`'s
        keywords). Idempotent: a second settle, or one after the hold was reaped, charges nothing and returns the
        record stored first."""

    async def release(self, res: Reservation, status: str = "error") -> UsageRecord:
        """The request produced nothing: settle it at no cost."""

    async def reap(self, now: datetime | None = None) -> int:
        """Settle as 'expired', at no cost, the holds whose replica died before settling them; how many."""

    async def record(self, request_id: str) -> UsageRecord | None:
        """The stored record of a settled request; None when it has none (yet)."""

    async def holds(self, tenant_id: int | None = None) -> tuple[int, int]:
        """(open holds, micro-USD they hold on tenant budgets), optionally for one tenant."""

    async def abandon(self, request_id: str) -> bool:
        """A reserve whose answer never came (the ledger missed its deadline): if the hold was taken after all,
        settle it at no cost as 'unavailable' (once: settling is idempotent); whether there was one."""


# --- the rules --------------------------------------------------------------------------------------------

def period_key(period: str, now: datetime) -> str:
    day = now.date().isoformat()  # 'YYYY-MM-DD', cheaper than strftime on every hold
    return day if period == "daily" else day[:7]


def period_days(key: str) -> tuple[str, str]:
    """The first and last `day` values (inclusive, compared as text) of a period key: '2026-12' holds
    '2026-12-01'..'2026-12-31', and '~' sorts after every digit; a day's key holds only that day."""
    return key, key + "~"


def worst_case(price: Price, prompt_tokens: int, max_tokens: int) -> int:
    return price.cost_micros(prompt_tokens, 0, max_tokens)


def usage_record(res: Reservation, now: datetime, baseline: Price | None, *, prompt_tokens: int,
                 cached_tokens: int = 0, completion_tokens: int, latency_ms: float | None = None,
                 route: str | None = None, difficulty: float | None = None, status: str = "ok",
                 estimated: bool = False, route_group: str | None = None, gpu_seconds: float | None = None,
                 prompt_text: str | None = None, escalated: bool = False) -> UsageRecord:
    """The one record of a request and what it is charged. `baseline`: the price of the route group's strongest
    tier (None: no baseline). `escalated`: a cascade's first try whose answer went to the strongest tier: that
    tier alone would not have made this call, so its baseline is 0 and its cost shows as a loss.
    `prompt_text` is kept only for tenants that opted in."""
    free = status in SERVER_FAILURES
    token_cost, gpu_cost = (None, None) if free else res.price.charge_micros(
        prompt_tokens, cached_tokens, completion_tokens, gpu_seconds)
    # The tokens are billed as counted, past the hold too (the upstream was paid for them); a GPU-second price is
    # capped at the per-token quote, so a slow step never costs more than the tokens would have.
    cost = 0 if free else token_cost if gpu_cost is None else min(gpu_cost, max(token_cost, res.amount_micros))
    baseline_cost = None if free or baseline is None else baseline.cost_micros(prompt_tokens, cached_tokens,
                                                                                completion_tokens)
    if escalated and not free:
        baseline_cost = 0
    return UsageRecord(
        request_id=res.request_id, tenant_id=res.tenant_id, key_id=res.key_id, model=res.model, route=route,
        difficulty=difficulty, status=status, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
        completion_tokens=completion_tokens, cost_micros=cost, baseline_cost_micros=baseline_cost,
        latency_ms=latency_ms, day=res.day, created_at=now, estimated=estimated, route_group=route_group,
        gpu_seconds=gpu_seconds, prompt_text=storable(prompt_text) if res.store_prompts else None,
        token_cost_micros=token_cost, gpu_cost_micros=gpu_cost)


def overrun_micros(res: Reservation, record: UsageRecord) -> int:
    """How far a request's charge passed its hold: 0 unless it produced more than the hold allowed for."""
    return max(0, record.cost_micros - res.amount_micros)


def reaped_record(res: Reservation, now: datetime) -> UsageRecord:
    """The record of a hold whose replica died: nothing is known of its tokens, so it costs nothing."""
    return usage_record(res, now, None, prompt_tokens=0, completion_tokens=0, status="expired")


def baseline_price(price_of: Callable[[str], Price], model: str | None) -> Price | None:
    """The baseline model's price; an unpriced baseline must not fail a settlement: the record just has no savings."""
    try:
        return None if model is None else price_of(model)
    except UnknownPrice:
        return None


def alerts_due(spent_micros: int, limit_micros: int, percents, alerted_percent: int) -> list[int]:
    """The thresholds (percent of the limit, ascending) this period's spend has reached and that have not alerted
    yet. Spend only grows within a period, so `alerted_percent`, the highest one alerted, says which did. The Redis
    ledger's settle script applies the same rule in Lua (billing/redis_ledger.py)."""
    return [p for p in percents if p > alerted_percent and spent_micros * 100 >= limit_micros * p]


def exceeded(scope: str, period: str, key: str, limit: int, spent: int, reserved: int, amount: int, model: str,
             prompt_tokens: int, max_tokens: int) -> BudgetExceeded:
    """The refusal of a hold, written for the tenant: what it would cost, what is left, whether waiting helps."""
    left = max(0, limit - spent - reserved)
    advice = ("It fits once requests in flight settle: retry shortly, or lower max_tokens."
              if fits_later(limit, spent, reserved, amount) else "Lower max_tokens or ask for a larger budget.")
    return BudgetExceeded(
        f"This request could cost up to {usd(amount)} ({prompt_tokens} prompt tokens + max_tokens {max_tokens} "
        f"on {model}), but the {'tenant' if scope == 'tenant' else 'API key'}'s {period} budget of {usd(limit)} for "
        f"{key} has {usd(left)} left ({usd(spent)} spent, {usd(reserved)} held by requests in flight). {advice}",
        scope=scope, period=period, period_key=key, limit_micros=limit, spent_micros=spent, reserved_micros=reserved,
        requested_micros=amount)


def fits_later(limit: int, spent: int, reserved: int, requested: int) -> bool:
    return reserved > 0 and spent + requested <= limit


def storable(text: str | None) -> str | None:
    """Tenant text as every database can keep it: PostgreSQL text cannot hold a NUL byte."""
    return None if text is None else text.replace("\x00", "\ufffd")
