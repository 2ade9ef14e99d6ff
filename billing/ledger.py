"""The SQL ledger: holds, spend and records in one database (SQLite or PostgreSQL), one transaction per step.

It implements billing.rules.Ledger; what is charged and when is decided there. Two short transactions per request:
- reserve: a conditional UPDATE per budget (`spent + reserved + amount <= limit`) plus a reservation row.
  The database checks and takes the hold in one statement, so any number of gateway replicas sharing
  the database can never reserve past a budget.
- settle: the usage record (unique by request id, so settling twice is a no-op), the reservation row
  deleted, the hold turned into spend; all in one transaction.

A budget period's counters start at the sum of that period's records (`NEW_PERIOD`), so a budget made or changed
part-way through a period starts with the spend already made. Also here, because the Redis ledger and the operator
commands read the same tables: the price cache (`Prices`), a request's stored record, a period's first row.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Callable

from sqlalchemy import BigInteger, Engine, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billing import rules
from billing.auth import BudgetRef, Principal
from billing.db import Prepared
from billing.models import budget_alerts, budget_spend, budgets, prices, reservations, usage_records
from billing.pricing import FREE, Price, usd
from billing.rules import DuplicateRequest, Reservation, UnknownPrice, UsageRecord

log = logging.getLogger("ferryman.billing")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class SqlHold(Reservation):
    """A hold in the database: the budget_spend rows it holds on."""

    tenant_spend_id: int | None = None
    key_spend_id: int | None = None

    @property
    def spend_ids(self) -> tuple[int, ...]:
        # Always tenant first, then key: one lock order on every replica means no deadlocks.
        return tuple(i for i in (self.tenant_spend_id, self.key_spend_id) if i is not None)


_amount = bindparam("amount", type_=BigInteger)
_spend = budget_spend.c
_u = usage_records.c

HOLD = (update(budget_spend)
        .where(_spend.budget_id == bindparam("budget"), _spend.period_key == bindparam("period"),
               _spend.spent_micros + _spend.reserved_micros + _amount
               <= select(budgets.c.limit_micros).where(budgets.c.id == bindparam("budget")).scalar_subquery())
        .values(reserved_micros=_spend.reserved_micros + _amount)
        .returning(_spend.id))

# Returns what the alert check needs, so the common case (no threshold crossed) costs no extra statement. The row
# stays locked to this transaction from here, so the alerted_percent it returns is the one to raise.
SPEND = (update(budget_spend).where(_spend.id == bindparam("spend"))
         .values(reserved_micros=_spend.reserved_micros - _amount,
                 spent_micros=_spend.spent_micros + bindparam("cost", type_=BigInteger))
         .returning(_spend.budget_id, _spend.period_key, _spend.spent_micros, _spend.alerted_percent,
                    *[select(column).where(budgets.c.id == _spend.budget_id).scalar_subquery()
                      for column in (budgets.c.limit_micros, budgets.c.alert_percents)]))

RELEASE = delete(reservations).where(reservations.c.request_id == bindparam("rid"))

ALERTED = update(budget_spend).where(_spend.id == bindparam("spend")).values(alerted_percent=bindparam("percent"))


def records_spend(budget_id, first_day, last_day):
    """The sum of the records a budget covers (its tenant's or its key's) between two days: its spend, by definition."""
    b = budgets.c
    return (select(func.coalesce(func.sum(_u.cost_micros), 0)).select_from(usage_records)
            .join(budgets, and_(b.id == budget_id, _u.tenant_id == b.tenant_id,
                                or_(b.key_id.is_(None), _u.key_id == b.key_id)))
            .where(_u.day >= first_day, _u.day <= last_day).scalar_subquery())


def _new_period(upsert, recount: bool = False):
    """A budget period's first row, its spend the records already in that period (budget made or changed late).
    `recount`: a row there already is set to its records too (it went stale while the budget counted another kind
    of period, e.g. daily -> monthly -> daily on one day)."""
    insert = upsert(budget_spend).values(
        budget_id=bindparam("budget"), period_key=bindparam("period"), reserved_micros=0, alerted_percent=0,
        spent_micros=records_spend(bindparam("budget"), bindparam("first_day"), bindparam("last_day")))
    if recount:
        return insert.on_conflict_do_update(index_elements=["budget_id", "period_key"],
                                            set_={"spent_micros": insert.excluded.spent_micros})
    return insert.on_conflict_do_nothing()


def open_period(conn, budget_id: int, key: str, recount: bool = False) -> bool:
    """Make a budget period's row now if it has none (a budget just made or changed; the Redis writer); whether it
    made (or, with `recount`, set) one."""
    upsert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    first, last = rules.period_days(key)
    # RETURNING, not rowcount: PostgreSQL's driver reports -1 rows for an INSERT it returns from (SQLAlchemy adds
    # RETURNING id itself), which made the Redis writer add a new period's first batch twice.
    return conn.execute(_new_period(upsert, recount).returning(budget_spend.c.id),
                        {"budget": budget_id, "period": key, "first_day": first, "last_day": last}).first() is not None


async def blocking(engine: Engine, fn, *args, **kwargs):
    """A call that reads or writes `engine`'s database, from the event loop."""
    # SQLite commits in microseconds, so a thread hop costs more than it saves; a networked database's
    # commit waits milliseconds, which must not stall every other request on the event loop.
    if engine.dialect.name == "sqlite":
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def stored_record(engine: Engine, request_id: str) -> UsageRecord | None:
    fields = [usage_records.c[f] for f in UsageRecord.__dataclass_fields__]
    with engine.connect() as conn:
        row = conn.execute(select(*fields).where(usage_records.c.request_id == request_id)).first()
    return None if row is None else UsageRecord(*row)


class Prices:
    """Prices from the database, cached for a few seconds (an operator's edit shows within `ttl_s`)."""

    def __init__(self, engine: Engine, ttl_s: float):
        self.engine, self.ttl_s = engine, ttl_s
        self._prices: dict[str, Price] = {}
        self._until = 0.0

    def stale(self) -> bool:
        return time.monotonic() >= self._until

    def __call__(self, model: str) -> Price:
        if self.stale():
            with self.engine.connect() as conn:
                rows = conn.execute(select(prices.c.model, prices.c.input_micros_per_m,
                                           prices.c.cached_input_micros_per_m, prices.c.output_micros_per_m,
                                           prices.c.gpu_hour_micros)).all()
            self._prices = {r.model: Price(*r) for r in rows}
            self._until = time.monotonic() + self.ttl_s
        try:
            return self._prices[model]
        except KeyError:
            raise UnknownPrice(f"no price is set for model '{model}'") from None

    def forget(self) -> None:
        self._until = 0.0


class _Full(Exception):
    """A budget cannot take the hold; turned into BudgetExceeded once the transaction is rolled back."""

    def __init__(self, budget_id: int, period_key: str):
        self.budget_id, self.period_key = budget_id, period_key


@lru_cache(maxsize=256)
def _percents(text: str) -> tuple[int, ...]:
    """A budget's alert thresholds as SQLite returns them (JSON text), parsed once per distinct value."""
    return tuple(json.loads(text))


def _hold_of(r) -> SqlHold:
    """A reservation row as the hold it is (reaping, abandoning: no price needed, it settles at zero)."""
    return SqlHold(r.request_id, r.tenant_id, r.key_id, r.model, r.amount_micros, FREE,
                   r.created_at.strftime("%Y-%m-%d"), False, r.tenant_spend_id, r.key_spend_id)


class SqlLedger:
    def __init__(self, engine: Engine, clock: Callable[[], datetime], cache_ttl_s: float, reservation_ttl_s: float):
        self.engine, self.clock = engine, clock
        self.prices = Prices(engine, cache_ttl_s)
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        dialect = engine.dialect
        upsert = (postgresql if dialect.name == "postgresql" else sqlite).insert
        self._integrity_error = dialect.loaded_dbapi.IntegrityError
        self._hold_sql = Prepared(HOLD, dialect)
        self._spend_sql = Prepared(SPEND, dialect)
        self._release_sql = Prepared(RELEASE, dialect)
        self._alerted_sql = Prepared(ALERTED, dialect)
        self._new_period = Prepared(_new_period(upsert), dialect)
        self._new_record = Prepared(upsert(usage_records).on_conflict_do_nothing(index_elements=["request_id"])
                                    .returning(usage_records.c.id), dialect, list(UsageRecord.__dataclass_fields__))
        self._new_reservation = Prepared(reservations.insert(), dialect, [c.name for c in reservations.c])
        self._new_alert = Prepared(upsert(budget_alerts).on_conflict_do_nothing(), dialect,
                                   ["budget_id", "period_key", "spent_micros", "limit_micros", "alert_percent",
                                    "created_at"])
        # SQLite: each thread keeps one connection for the money path, sparing every transaction a pool checkout and
        # return (SQLAlchemy's events, weakrefs and queue: Python work that one kept connection does not need).
        # PostgreSQL keeps the pool: its watchdog watches each checkout, and a connection it cuts must be replaced.
        self._kept = threading.local() if dialect.name == "sqlite" else None
        self._kept_all: list = []

    def _connection(self):
        if self._kept is None:
            return self.engine.raw_connection()
        connection = getattr(self._kept, "connection", None)
        if connection is None:
            connection = self._kept.connection = self.engine.raw_connection()
            self._kept_all.append(connection)
        return connection

    @contextmanager
    def _transaction(self):
        """A transaction on the driver's connection, for the Prepared statements of the money path."""
        connection = self._connection()
        try:
            cursor = connection.cursor()
            if self._kept is not None:
                cursor.execute("BEGIN IMMEDIATE")  # see billing.db: take the write lock up front
            yield cursor
            connection.commit()
        except BaseException:
            self._roll_back(connection)
            raise
        finally:
            if self._kept is None:
                connection.close()

    def _roll_back(self, connection) -> None:
        try:
            connection.rollback()
        except Exception:  # a connection that cannot even roll back is not kept: the next transaction opens another
            if self._kept is not None:
                self._kept.connection = None
                connection.invalidate()
            raise

    def close(self) -> None:
        """Give back the connections threads kept (then the engine can close them)."""
        for connection in self._kept_all:
            connection.close()
        self._kept_all.clear()
        if self._kept is not None:
            self._kept = threading.local()

    async def blocking(self, fn, *args, **kwargs):
        return await blocking(self.engine, fn, *args, **kwargs)

    # --- the contract (billing.rules.Ledger) ----------------------------------------------------------

    async def reserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                      max_tokens: int) -> SqlHold:
        return await self.blocking(self._reserve, principal, request_id, model, prompt_tokens, max_tokens)

    async def settle(self, res: SqlHold, **usage) -> UsageRecord:
        return await self.blocking(self._settle, res, **usage)

    async def release(self, res: SqlHold, status: str = "error") -> UsageRecord:
        return await self.settle(res, prompt_tokens=0, completion_tokens=0, status=status)

    async def reap(self, now: datetime | None = None) -> int:
        return await self.blocking(self._reap, now)

    async def record(self, request_id: str) -> UsageRecord | None:
        return await self.blocking(stored_record, self.engine, request_id)

    async def holds(self, tenant_id: int | None = None) -> tuple[int, int]:
        return await self.blocking(self._holds, tenant_id)

    async def abandon(self, request_id: str) -> bool:
        return await self.blocking(self._abandon, request_id)

    # --- reserve -----------------------------------------------------------------------------------

    def _reserve(self, principal: Principal, request_id: str, model: str, prompt_tokens: int,
                 max_tokens: int) -> SqlHold:
        price = self.prices(model)
        amount = rules.worst_case(price, prompt_tokens, max_tokens)
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
        return SqlHold(request_id, principal.tenant_id, principal.key_id, model, amount, price,
                       now.date().isoformat(), principal.store_prompts, spend[0], spend[1])

    def _hold(self, cursor, ref: BudgetRef, now: datetime, amount: int) -> int:
        budget_id, key = ref.id, rules.period_key(ref.period, now)
        row = self._hold_sql(cursor, budget=budget_id, period=key, amount=amount).fetchone()
        if row is None:
            # No hold: this period may have no row yet. Create it, or wait for the concurrent request that is creating
            # it (PostgreSQL: the insert waits on its key, then does nothing), and try once more; none: the budget is full.
            first, last = rules.period_days(key)
            self._new_period(cursor, budget=budget_id, period=key, first_day=first, last_day=last)
            row = self._hold_sql(cursor, budget=budget_id, period=key, amount=amount).fetchone()
        if row is None:
            raise _Full(budget_id, key)
        return row[0]

    def _exceeded(self, budget_id: int, key: str, amount: int, model: str, prompt_tokens: int,
                  max_tokens: int) -> rules.BudgetExceeded:
        with self.engine.connect() as conn:
            b = conn.execute(select(budgets.c.key_id, budgets.c.period, budgets.c.limit_micros)
                             .where(budgets.c.id == budget_id)).one()
            spent, reserved = conn.execute(select(_spend.spent_micros, _spend.reserved_micros).where(
                _spend.budget_id == budget_id, _spend.period_key == key)).first() or (0, 0)
        return rules.exceeded("tenant" if b.key_id is None else "key", b.period, key, b.limit_micros, spent, reserved,
                              amount, model, prompt_tokens, max_tokens)

    # --- settle --------------------------------------------------------------------------------------

    def usage_record(self, res: Reservation, *, baseline_model: str | None = None, **usage) -> UsageRecord:
        """The record billing.rules.usage_record makes of `usage`, now; writes nothing."""
        return rules.usage_record(res, self.clock(), rules.baseline_price(self.prices, baseline_model), **usage)

    def _settle(self, res: SqlHold, **usage) -> UsageRecord:
        record = self.usage_record(res, **usage)
        with self._transaction() as cursor:
            settled_before = self._new_record(cursor, **vars(record)).fetchone() is None
            if not settled_before:
                if self._release_sql(cursor, rid=res.request_id).rowcount != 1:
                    raise LookupError(f"request '{res.request_id}' has no open reservation to settle")
                for spend_id in res.spend_ids:
                    counters = self._spend_sql(cursor, spend=spend_id, amount=res.amount_micros,
                                               cost=record.cost_micros).fetchone()
                    if counters is not None:  # None: the budget was deleted while the request ran
                        self._record_alerts(cursor, spend_id, *counters, record.created_at)
        return stored_record(self.engine, res.request_id) if settled_before else record

    def _record_alerts(self, cursor, spend_id: int, budget_id: int, key: str, spent: int, alerted: int, limit: int,
                       percents, now: datetime) -> None:
        """An alert row per threshold this settlement reached (billing.rules.alerts_due); the budget_spend row is
        locked to this transaction, so no other settlement records the same ones."""
        due = rules.alerts_due(spent, limit, _percents(percents) if isinstance(percents, str) else percents, alerted)
        if due:
            self._alerted_sql(cursor, spend=spend_id, percent=due[-1])
        for percent in due:
            self._new_alert(cursor, budget_id=budget_id, period_key=key, spent_micros=spent, limit_micros=limit,
                            alert_percent=percent, created_at=now)
            log.warning("budget %s reached its %s%% alert for %s: %s spent of %s", budget_id, percent, key, usd(spent),
                        usd(limit))

    def _reap(self, now: datetime | None = None) -> int:
        now = now or self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(select(reservations).where(reservations.c.expires_at <= now).limit(1000)).all()
        for r in rows:
            self._settle(_hold_of(r), prompt_tokens=0, completion_tokens=0, status="expired")
        return len(rows)

    def _abandon(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            r = conn.execute(select(reservations).where(reservations.c.request_id == request_id)).first()
        if r is not None:
            self._settle(_hold_of(r), prompt_tokens=0, completion_tokens=0, status="unavailable")
        return r is not None

    def _holds(self, tenant_id: int | None) -> tuple[int, int]:
        r = reservations.c
        query = select(func.count(), func.coalesce(func.sum(r.amount_micros), 0)).where(r.tenant_spend_id.is_not(None))
        count = select(func.count()).select_from(reservations)
        if tenant_id is not None:
            query, count = query.where(r.tenant_id == tenant_id), count.where(r.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return conn.execute(count).scalar_one(), int(conn.execute(query).one()[1])
