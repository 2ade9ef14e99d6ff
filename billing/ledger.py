"""The money path: price, reserve, settle, release, reap; and a tenant's feedback on its own records.

Two short transactions per request:
- reserve: a conditional UPDATE per budget (`spent + reserved + amount <= limit`) plus a reservation row.
  The database checks and takes the hold in one statement, so any number of gateway replicas sharing
  the database can never reserve past a budget.
- settle: the usage record (unique by request id, so settling twice is a no-op), the reservation row
  deleted, the hold turned into spend; all in one transaction.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Callable

from sqlalchemy import BigInteger, Engine, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billing.auth import BudgetRef, Principal
from billing.db import Prepared
from billing.models import budget_alerts, budget_spend, budgets, prices, reservations, usage_records
from billing.pricing import FREE, Price, usd

log = logging.getLogger("ferryman.billing")

# Endings that are the server's fault: with no completion token produced, the tenant pays nothing.
SERVER_FAILURES = ("error", "timeout", "unavailable", "expired")
RETRY_AFTER_S = 2  # a hold lasts as long as its request: a few seconds is the usual wait for one to settle


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def period_key(period: str, now: datetime) -> str:
    return now.strftime("%Y-%m-%d" if period == "daily" else "%Y-%m")


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
        return _fits_later(self.limit_micros, self.spent_micros, self.reserved_micros, self.requested_micros)

    @property
    def retry_after_s(self) -> int | None:
        return RETRY_AFTER_S if self.retryable else None


class UnknownPrice(BillingError):
    pass


class DuplicateRequest(BillingError):
    pass


@dataclass(frozen=True)
class Reservation:
    request_id: str
    tenant_id: int
    key_id: int
    model: str
    amount_micros: int
    price: Price  # prices as admitted: a price edit mid-request cannot push the cost past the hold
    tenant_spend_id: int | None
    key_spend_id: int | None
    store_prompts: bool = False  # as the principal said at admission: settle keeps prompt_text only then

    @property
    def spend_ids(self) -> tuple[int, ...]:
        # Always tenant first, then key: one lock order on every replica means no deadlocks.
        return tuple(i for i in (self.tenant_spend_id, self.key_spend_id) if i is not None)


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


_amount = bindparam("amount", type_=BigInteger)
_spend = budget_spend.c

HOLD = (update(budget_spend)
        .where(_spend.budget_id == bindparam("budget"), _spend.period_key == bindparam("period"),
               _spend.spent_micros + _spend.reserved_micros + _amount
               <= select(budgets.c.limit_micros).where(budgets.c.id == bindparam("budget")).scalar_subquery())
        .values(reserved_micros=_spend.reserved_micros + _amount)
        .returning(_spend.id))

# Returns what the alert check needs, so the common case (no threshold crossed) costs no extra statement.
SPEND = (update(budget_spend).where(_spend.id == bindparam("spend"))
         .values(reserved_micros=_spend.reserved_micros - _amount,
                 spent_micros=_spend.spent_micros + bindparam("cost", type_=BigInteger))
         .returning(_spend.spent_micros, _spend.alerted,
                    select(budgets.c.limit_micros * budgets.c.alert_percent)
                    .where(budgets.c.id == _spend.budget_id).scalar_subquery()))

RELEASE = delete(reservations).where(reservations.c.request_id == bindparam("rid"))

CROSSED_ALERT = (update(budget_spend)
                 .where(_spend.id == bindparam("spend"), _spend.alerted.is_(False),
                        _spend.spent_micros * 100 >= select(budgets.c.limit_micros * budgets.c.alert_percent)
                        .where(budgets.c.id == _spend.budget_id).scalar_subquery())
                 .values(alerted=True)
                 .returning(_spend.budget_id, _spend.period_key, _spend.spent_micros,
                            select(budgets.c.limit_micros).where(budgets.c.id == _spend.budget_id).scalar_subquery()))


class _Full(Exception):
    """A budget cannot take the hold; turned into BudgetExceeded once the transaction is rolled back."""

    def __init__(self, budget_id: int, period_key: str):
        self.budget_id, self.period_key = budget_id, period_key


class Ledger:
    def __init__(self, engine: Engine, clock: Callable[[], datetime], cache_ttl_s: float, reservation_ttl_s: float):
        self.engine, self.clock, self.cache_ttl_s = engine, clock, cache_ttl_s
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        dialect = engine.dialect
        upsert = (postgresql if dialect.name == "postgresql" else sqlite).insert
        self._integrity_error = dialect.loaded_dbapi.IntegrityError
        self._hold_sql = Prepared(HOLD, dialect)
        self._spend_sql = Prepared(SPEND, dialect)
        self._release_sql = Prepared(RELEASE, dialect)
        self._crossed_sql = Prepared(CROSSED_ALERT, dialect)
        self._new_period = Prepared(upsert(budget_spend).on_conflict_do_nothing().returning(_spend.id),
                                    dialect, ["budget_id", "period_key", "spent_micros", "reserved_micros", "alerted"])
        self._new_record = Prepared(upsert(usage_records).on_conflict_do_nothing(index_elements=["request_id"])
                                    .returning(usage_records.c.id), dialect, list(UsageRecord.__dataclass_fields__))
        self._new_reservation = Prepared(reservations.insert(), dialect, [c.name for c in reservations.c])
        self._new_alert = Prepared(budget_alerts.insert(), dialect,
                                   ["budget_id", "period_key", "spent_micros", "limit_micros", "created_at"])
        self._prices: dict[str, Price] = {}
        self._prices_until = 0.0

    @contextmanager
    def _transaction(self):
        """A transaction on the driver's connection, for the Prepared statements of the money path."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            if self.engine.dialect.name == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")  # see billing.db: take the write lock up front
            yield cursor
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            connection.close()

    # --- prices ----------------------------------------------------------------------------------

    def prices_stale(self) -> bool:
        return time.monotonic() >= self._prices_until

    def price(self, model: str) -> Price:
        if self.prices_stale():
            with self.engine.connect() as conn:
                rows = conn.execute(select(prices.c.model, prices.c.input_micros_per_m,
                                           prices.c.cached_input_micros_per_m, prices.c.output_micros_per_m,
                                           prices.c.gpu_hour_micros)).all()
            self._prices = {r.model: Price(*r) for r in rows}
            self._prices_until = time.monotonic() + self.cache_ttl_s
        try:
            return self._prices[model]
        except KeyError:
            raise UnknownPrice(f"no price is set for model '{model}'") from None

    def forget_prices(self) -> None:
        self._prices_until = 0.0

    def cost_micros(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        return self.price(model).cost_micros(prompt_tokens, cached_tokens, completion_tokens)

    # --- the request path's calls ------------------------------------------------------------------------

    async def areserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                       max_tokens: int) -> Reservation:
        return await self.blocking(self.reserve, principal, request_id, model, prompt_tokens, max_tokens)

    async def asettle(self, res: Reservation, **usage) -> UsageRecord:
        return await self.blocking(self.settle, res, **usage)

    async def blocking(self, fn, *args, **kwargs):
        """A call that reads or writes this ledger's database, from the event loop."""
        # SQLite commits in microseconds, so a thread hop costs more than it saves; a networked database's
        # commit waits milliseconds, which must not stall every other request on the event loop.
        if self.engine.dialect.name == "sqlite":
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- reserve -----------------------------------------------------------------------------------

    def reserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                max_tokens: int) -> Reservation:
        """Hold the worst case (no cached tokens, every max token generated) on the tenant's and the key's budget.

        Raises BudgetExceeded, changing nothing, when either budget cannot cover it."""
        price = self.price(model)
        amount = price.cost_micros(prompt_tokens, 0, max_tokens)
        now = self.clock()
        try:
            with self._transaction() as cursor:
                spend = [None if ref is None else self._hold(cursor, ref, now, amount)
                         for ref in (principal.tenant_budget, principal.key_budget)]
                try:
                    self._new_reservation(
                        cursor, request_id=request_id, tenant_id=principal.tenant_id, key_id=principal.key_id,
                        model=model, amount_micros=amount, tenant_spend_id=spend[0], key_spend_id=spend[1],
                        created_at=now, expires_at=now + self.reservation_ttl)
                except self._integrity_error:
                    raise DuplicateRequest(f"request id '{request_id}' already has an open reservation") from None
        except _Full as full:
            raise self._exceeded(full.budget_id, full.period_key, amount, model, prompt_tokens, max_tokens) from None
        return Reservation(request_id, principal.tenant_id, principal.key_id, model, amount, price, spend[0], spend[1],
                           principal.store_prompts)

    def _hold(self, cursor, ref: BudgetRef, now: datetime, amount: int) -> int:
        budget_id, period = ref.id, ref.period
        key = period_key(period, now)
        row = self._hold_sql(cursor, budget=budget_id, period=key, amount=amount).fetchone()
        if row is None:
            # No hold: this period may have no row yet. Create it, or wait for the concurrent request that is creating
            # it (PostgreSQL: the insert waits on its key, then does nothing), and try once more; none: the budget is full.
            self._new_period(cursor, budget_id=budget_id, period_key=key, spent_micros=0, reserved_micros=0,
                             alerted=False)
            row = self._hold_sql(cursor, budget=budget_id, period=key, amount=amount).fetchone()
        if row is None:
            raise _Full(budget_id, key)
        return row[0]

    def _exceeded(self, budget_id: int, key: str, amount: int, model: str, prompt_tokens: int,
                  max_tokens: int) -> BudgetExceeded:
        with self.engine.connect() as conn:
            b = conn.execute(select(budgets.c.key_id, budgets.c.period, budgets.c.limit_micros)
                             .where(budgets.c.id == budget_id)).one()
            spent, reserved = conn.execute(select(_spend.spent_micros, _spend.reserved_micros).where(
                _spend.budget_id == budget_id, _spend.period_key == key)).first() or (0, 0)
        return exceeded("tenant" if b.key_id is None else "key", b.period, key, b.limit_micros, spent, reserved, amount,
                        model, prompt_tokens, max_tokens)

    # --- settle --------------------------------------------------------------------------------------

    def settle(self, res: Reservation, **usage) -> UsageRecord:
        """Charge the actual cost, release the rest of the hold, write the one usage record. Idempotent.

        A server-side failure (`SERVER_FAILURES`) that produced no completion token costs nothing; a client
        that went away pays for what was generated. `baseline_model`: what the route group's strongest tier
        would have charged for the same tokens is kept beside the cost, so savings are per record.
        A model with a GPU-hour price is billed its `gpu_seconds` at that price (the per-token cost is recorded
        beside it). `prompt_text` is kept only for tenants that opted in."""
        record = self.usage_record(res, **usage)  # `usage`: usage_record's keywords
        with self._transaction() as cursor:
            settled_before = self._new_record(cursor, **vars(record)).fetchone() is None
            if not settled_before:
                if self._release_sql(cursor, rid=res.request_id).rowcount != 1:
                    raise LookupError(f"request '{res.request_id}' has no open reservation to settle")
                for spend_id in res.spend_ids:
                    spent, alerted, threshold = self._spend_sql(
                        cursor, spend=spend_id, amount=res.amount_micros, cost=record.cost_micros).fetchone()
                    if not alerted and threshold is not None and spent * 100 >= threshold:
                        self._record_alerts(cursor, spend_id, record.created_at)
        return self._record(res.request_id) if settled_before else record

    def usage_record(self, res: Reservation, *, prompt_tokens: int, cached_tokens: int = 0, completion_tokens: int,
                     latency_ms: float | None = None, route: str | None = None, difficulty: float | None = None,
                     status: str = "ok", estimated: bool = False, route_group: str | None = None,
                     baseline_model: str | None = None, gpu_seconds: float | None = None,
                     prompt_text: str | None = None) -> UsageRecord:
        """The one record of a request and what it costs (see settle); writes nothing."""
        free = status in SERVER_FAILURES and completion_tokens == 0
        token_cost, gpu_cost = (None, None) if free else res.price.charge_micros(
            prompt_tokens, cached_tokens, completion_tokens, gpu_seconds)
        # Never charge past the quote the request was admitted on (the per-token worst case, also for GPU-second
        # prices): that is what keeps spend within budget.
        cost = 0 if free else min(token_cost if gpu_cost is None else gpu_cost, res.amount_micros)
        now = self.clock()
        return UsageRecord(
            request_id=res.request_id, tenant_id=res.tenant_id, key_id=res.key_id, model=res.model, route=route,
            difficulty=difficulty, status=status, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
            completion_tokens=completion_tokens, cost_micros=cost,
            baseline_cost_micros=None if free else self._baseline_cost(baseline_model, prompt_tokens, cached_tokens,
                                                                         completion_tokens),
            latency_ms=latency_ms, day=now.strftime("%Y-%m-%d"), created_at=now, estimated=estimated,
            route_group=route_group, gpu_seconds=gpu_seconds,
            prompt_text=_storable(prompt_text) if res.store_prompts else None, token_cost_micros=token_cost,
            gpu_cost_micros=gpu_cost)

    def _baseline_cost(self, model: str | None, prompt_tokens: int, cached_tokens: int,
                       completion_tokens: int) -> int | None:
        # An unpriced baseline must not fail a settlement: the record just has no savings figure.
        try:
            return None if model is None else self.cost_micros(model, prompt_tokens, cached_tokens, completion_tokens)
        except UnknownPrice:
            return None

    def _record_alerts(self, cursor, spend_id: int, now: datetime) -> None:
        # The conditional update lets exactly one settlement per period record the alert.
        for budget_id, key, spent, limit in self._crossed_sql(cursor, spend=spend_id).fetchall():
            self._new_alert(cursor, budget_id=budget_id, period_key=key, spent_micros=spent, limit_micros=limit,
                            created_at=now)
            log.warning("budget %s crossed its alert threshold for %s: %s spent of %s", budget_id, key, usd(spent),
                        usd(limit))

    def _record(self, request_id: str) -> UsageRecord:
        fields = [usage_records.c[f] for f in UsageRecord.__dataclass_fields__]
        with self.engine.connect() as conn:
            row = conn.execute(select(*fields).where(usage_records.c.request_id == request_id)).one()
        return UsageRecord(*row)

    def release(self, res: Reservation, status: str = "error") -> UsageRecord:
        """The request produced nothing: release the whole hold, recording a zero-cost request."""
        return self.settle(res, prompt_tokens=0, completion_tokens=0, status=status)

    def reap_expired(self, now: datetime | None = None) -> int:
        """Release reservations whose replica died before settling; returns how many. Safe on every replica."""
        now = now or self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(select(reservations).where(reservations.c.expires_at <= now).limit(1000)).all()
        for r in rows:
            self.release(Reservation(r.request_id, r.tenant_id, r.key_id, r.model, r.amount_micros, FREE,
                                     r.tenant_spend_id, r.key_spend_id), status="expired")
        return len(rows)

    # --- feedback --------------------------------------------------------------------------------

    def record_feedback(self, principal: Principal, request_id: str, score: float, comment: str | None = None) -> bool:
        """Store a tenant's score (0..1) on one of its own requests; False when it has no such request."""
        if not 0.0 <= score <= 1.0:
            raise ValueError("score must be between 0 and 1")
        if "\x00" in request_id:
            return False  # no request id holds a NUL byte (and PostgreSQL text cannot carry one)
        with self.engine.begin() as conn:
            return conn.execute(update(usage_records).where(
                usage_records.c.request_id == request_id, usage_records.c.tenant_id == principal.tenant_id
            ).values(feedback_score=score, feedback_comment=_storable(comment))).rowcount == 1


def exceeded(scope: str, period: str, key: str, limit: int, spent: int, reserved: int, amount: int, model: str,
             prompt_tokens: int, max_tokens: int) -> BudgetExceeded:
    """The refusal of a hold, written for the tenant: what it would cost, what is left, whether waiting helps."""
    left = max(0, limit - spent - reserved)
    advice = ("It fits once requests in flight settle: retry shortly, or lower max_tokens."
              if _fits_later(limit, spent, reserved, amount) else "Lower max_tokens or ask for a larger budget.")
    return BudgetExceeded(
        f"This request could cost up to {usd(amount)} ({prompt_tokens} prompt tokens + max_tokens {max_tokens} "
        f"on {model}), but the {'tenant' if scope == 'tenant' else 'API key'}'s {period} budget of {usd(limit)} for "
        f"{key} has {usd(left)} left ({usd(spent)} spent, {usd(reserved)} held by requests in flight). {advice}",
        scope=scope, period=period, period_key=key, limit_micros=limit, spent_micros=spent, reserved_micros=reserved,
        requested_micros=amount)


def _fits_later(limit: int, spent: int, reserved: int, requested: int) -> bool:
    return reserved > 0 and spent + requested <= limit


def _storable(text: str | None) -> str | None:
    """Tenant text as every database can keep it: PostgreSQL text cannot hold a NUL byte."""
    return None if text is None else text.replace("\x00", "\ufffd")
