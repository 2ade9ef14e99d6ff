"""Billing: who is asking, may they spend, and what did it cost.

The money path is two short transactions per request:
- reserve: a conditional UPDATE per budget (`spent + reserved + amount <= limit`) plus a reservation row.
  The database checks and takes the hold in one statement, so any number of gateway replicas sharing
  the database can never reserve past a budget.
- settle: the usage record (unique by request id, so settling twice is a no-op), the reservation row
  deleted, the hold turned into spend; all in one transaction.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Callable

from sqlalchemy import BigInteger, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from billing.db import Prepared, make_engine, upgrade
from billing.models import (api_keys, budget_alerts, budget_spend, budgets, prices, reservations, tenants,
                            usage_records)
from billing.pricing import DEFAULT_PRICES, FREE, Price, micros, usd
from billing.reports import usage_report, where_usage

log = logging.getLogger("ferryman.billing")

PRIORITIES = ("interactive", "standard", "batch")
PERIODS = ("daily", "monthly")
MAX_LIMIT = 2**31 - 1  # rate limits are 32-bit columns
MAX_MICROS = 2**63 - 1  # money is a 64-bit column


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def period_key(period: str, now: datetime) -> str:
    return now.strftime("%Y-%m-%d" if period == "daily" else "%Y-%m")


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class BillingError(Exception):
    """Base of billing's refusals; the message is written for the tenant or operator to read."""


class BudgetExceeded(BillingError):
    def __init__(self, message: str, *, scope: str, period: str, period_key: str, limit_micros: int,
                 spent_micros: int, reserved_micros: int, requested_micros: int):
        super().__init__(message)
        self.scope, self.period, self.period_key = scope, period, period_key
        self.limit_micros, self.spent_micros = limit_micros, spent_micros
        self.reserved_micros, self.requested_micros = reserved_micros, requested_micros


class UnknownPrice(BillingError):
    pass


class DuplicateRequest(BillingError):
    pass


@dataclass(frozen=True)
class Limit:
    """Rate limits of one scope; `scope` names its buckets ("tenant:3", "key:7"). None = unlimited."""

    scope: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None


@dataclass(frozen=True)
class Principal:
    tenant_id: int
    tenant_name: str
    key_id: int
    priority: str
    quality_floor: float | None
    large_share: float | None
    limits: tuple[Limit, ...]
    tenant_budget: tuple[int, str] | None  # (budget id, period)
    key_budget: tuple[int, str] | None
    expires_at: datetime | None
    allowed_models: tuple[str, ...] | None = None  # model and route group names; None = every one
    store_prompts: bool = False  # the tenant opted in to keeping its prompts for router training


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


class Billing:
    def __init__(self, database_url: str = "sqlite:///ferryman.db", *, cache_ttl_s: float = 2.0, reservation_ttl_s: float = 900.0,
                 clock: Callable[[], datetime] = utcnow):
        self.database_url = database_url
        self.engine = make_engine(database_url)
        self.cache_ttl_s, self.clock = cache_ttl_s, clock
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        dialect = self.engine.dialect
        self._upsert = (postgresql if dialect.name == "postgresql" else sqlite).insert
        self._integrity_error = dialect.loaded_dbapi.IntegrityError
        self._hold_sql = Prepared(HOLD, dialect)
        self._spend_sql = Prepared(SPEND, dialect)
        self._release_sql = Prepared(RELEASE, dialect)
        self._crossed_sql = Prepared(CROSSED_ALERT, dialect)
        self._new_period = Prepared(self._upsert(budget_spend).on_conflict_do_nothing().returning(_spend.id),
                                    dialect, ["budget_id", "period_key", "spent_micros", "reserved_micros", "alerted"])
        self._new_record = Prepared(self._upsert(usage_records).on_conflict_do_nothing(index_elements=["request_id"])
                                    .returning(usage_records.c.id), dialect, list(UsageRecord.__dataclass_fields__))
        self._new_reservation = Prepared(reservations.insert(), dialect, [c.name for c in reservations.c])
        self._new_alert = Prepared(budget_alerts.insert(), dialect,
                                   ["budget_id", "period_key", "spent_micros", "limit_micros", "created_at"])
        self._principals: dict[str, tuple[float, Principal | None]] = {}
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

    def create_schema(self) -> None:
        """Bring the database to the newest schema. Migrations, not create_all, so that a database made
        by `serve` and one made by `ferryman db upgrade` are the same thing and can be upgraded later."""
        upgrade(self.database_url)

    def close(self) -> None:
        self.engine.dispose()

    def ensure_admin_defaults(self) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            for p in DEFAULT_PRICES:
                conn.execute(self._upsert(prices).values(**asdict(p), updated_at=now).on_conflict_do_nothing())
        self._prices_until = 0.0

    # --- who is asking ---------------------------------------------------------------------------

    def authenticate(self, api_key: str) -> Principal | None:
        """The key's principal, or None for an unknown, revoked or expired key.

        Lookups are cached for `cache_ttl_s`, so a revocation takes effect everywhere within that time."""
        digest = hash_key(api_key)
        now = time.monotonic()
        hit = self._principals.get(digest)
        if hit is None or hit[0] <= now:
            if len(self._principals) > 10_000:  # random junk keys must not grow the cache without bound
                self._principals.clear()
            hit = (now + self.cache_ttl_s, self._load_principal(digest))
            self._principals[digest] = hit
        principal = hit[1]
        if principal is not None and principal.expires_at is not None and principal.expires_at <= self.clock():
            return None
        return principal

    def _load_principal(self, digest: str) -> Principal | None:
        k, t = api_keys.c, tenants.c
        query = (select(k.id, k.tenant_id, k.rpm, k.tpm, k.max_concurrent, k.expires_at, t.name, t.priority,
                        t.quality_floor, t.large_share, t.rpm.label("t_rpm"), t.tpm.label("t_tpm"),
                        t.max_concurrent.label("t_max_concurrent"), t.allowed_models, t.store_prompts)
                 .join(tenants, t.id == k.tenant_id).where(k.key_hash == digest, k.revoked_at.is_(None)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            refs = conn.execute(select(budgets.c.id, budgets.c.period, budgets.c.key_id).where(
                budgets.c.tenant_id == row.tenant_id,
                or_(budgets.c.key_id.is_(None), budgets.c.key_id == row.id))).all()
        limits = (Limit(f"tenant:{row.tenant_id}", row.t_rpm, row.t_tpm, row.t_max_concurrent),
                  Limit(f"key:{row.id}", row.rpm, row.tpm, row.max_concurrent))
        return Principal(
            tenant_id=row.tenant_id, tenant_name=row.name, key_id=row.id, priority=row.priority,
            quality_floor=row.quality_floor, large_share=row.large_share,
            limits=tuple(lim for lim in limits if (lim.rpm, lim.tpm, lim.max_concurrent) != (None, None, None)),
            tenant_budget=next(((b.id, b.period) for b in refs if b.key_id is None), None),
            key_budget=next(((b.id, b.period) for b in refs if b.key_id is not None), None),
            expires_at=row.expires_at, store_prompts=row.store_prompts,
            allowed_models=None if row.allowed_models is None else tuple(row.allowed_models))

    def _invalidate(self) -> None:
        self._principals.clear()
        self._prices_until = 0.0

    # --- prices ----------------------------------------------------------------------------------

    def price(self, model: str) -> Price:
        if time.monotonic() >= self._prices_until:
            with self.engine.connect() as conn:
                rows = conn.execute(select(prices.c.model, prices.c.input_micros_per_m,
                                           prices.c.cached_input_micros_per_m, prices.c.output_micros_per_m)).all()
            self._prices = {r.model: Price(*r) for r in rows}
            self._prices_until = time.monotonic() + self.cache_ttl_s
        try:
            return self._prices[model]
        except KeyError:
            raise UnknownPrice(f"no price is set for model '{model}'") from None

    def cost_micros(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        return self.price(model).cost_micros(prompt_tokens, cached_tokens, completion_tokens)

    # --- the money path --------------------------------------------------------------------------

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

    def _hold(self, cursor, ref: tuple[int, str], now: datetime, amount: int) -> int:
        budget_id, period = ref
        key = period_key(period, now)
        for _ in range(2):
            row = self._hold_sql(cursor, budget=budget_id, period=key, amount=amount).fetchone()
            if row is not None:
                return row[0]
            # No hold: either this period has no row yet (create it and try once more) or the budget is full.
            created = self._new_period(cursor, budget_id=budget_id, period_key=key, spent_micros=0,
                                       reserved_micros=0, alerted=False).fetchone()
            if created is None:
                break
        raise _Full(budget_id, key)

    def _exceeded(self, budget_id: int, key: str, amount: int, model: str, prompt_tokens: int,
                  max_tokens: int) -> BudgetExceeded:
        with self.engine.connect() as conn:
            b = conn.execute(select(budgets.c.key_id, budgets.c.period, budgets.c.limit_micros)
                             .where(budgets.c.id == budget_id)).one()
            spent, reserved = conn.execute(select(_spend.spent_micros, _spend.reserved_micros).where(
                _spend.budget_id == budget_id, _spend.period_key == key)).first() or (0, 0)
        scope = "tenant" if b.key_id is None else "API key"
        left = max(0, b.limit_micros - spent - reserved)
        return BudgetExceeded(
            f"This request could cost up to {usd(amount)} ({prompt_tokens} prompt tokens + max_tokens {max_tokens} "
            f"on {model}), but the {scope}'s {b.period} budget of {usd(b.limit_micros)} for {key} has {usd(left)} "
            f"left ({usd(spent)} spent, {usd(reserved)} held by requests in flight). "
            f"Lower max_tokens or ask for a larger budget.",
            scope="tenant" if b.key_id is None else "key", period=b.period, period_key=key,
            limit_micros=b.limit_micros, spent_micros=spent, reserved_micros=reserved, requested_micros=amount)

    def settle(self, res: Reservation, *, prompt_tokens: int, cached_tokens: int = 0, completion_tokens: int,
               latency_ms: float | None = None, route: str | None = None, difficulty: float | None = None,
               status: str = "ok", estimated: bool = False, route_group: str | None = None,
               baseline_model: str | None = None, gpu_seconds: float | None = None,
               prompt_text: str | None = None) -> UsageRecord:
        """Charge the actual cost, release the rest of the hold, write the one usage record. Idempotent.

        `baseline_model`: what the route group's strongest tier would have charged for the same tokens is kept
        beside the cost, so savings are per record. `prompt_text` is kept only for tenants that opted in."""
        # Never charge past the quote the request was admitted on: that is what keeps spend within budget.
        cost = min(res.price.cost_micros(prompt_tokens, cached_tokens, completion_tokens), res.amount_micros)
        now = self.clock()
        record = UsageRecord(
            request_id=res.request_id, tenant_id=res.tenant_id, key_id=res.key_id, model=res.model, route=route,
            difficulty=difficulty, status=status, prompt_tokens=prompt_tokens, cached_tokens=cached_tokens,
            completion_tokens=completion_tokens, cost_micros=cost,
            baseline_cost_micros=self._baseline_cost(baseline_model, prompt_tokens, cached_tokens, completion_tokens),
            latency_ms=latency_ms, day=now.strftime("%Y-%m-%d"), created_at=now, estimated=estimated,
            route_group=route_group, gpu_seconds=gpu_seconds, prompt_text=prompt_text if res.store_prompts else None)
        with self._transaction() as cursor:
            settled_before = self._new_record(cursor, **vars(record)).fetchone() is None
            if not settled_before:
                if self._release_sql(cursor, rid=res.request_id).rowcount != 1:
                    raise LookupError(f"request '{res.request_id}' has no open reservation to settle")
                for spend_id in res.spend_ids:
                    spent, alerted, threshold = self._spend_sql(
                        cursor, spend=spend_id, amount=res.amount_micros, cost=cost).fetchone()
                    if not alerted and threshold is not None and spent * 100 >= threshold:
                        self._record_alerts(cursor, spend_id, now)
        return self._record(res.request_id) if settled_before else record

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

    # --- administration: tenants, keys, budgets, prices ------------------------------------------

    def create_tenant(self, name: str, **fields) -> dict:
        if not name or not name.strip():
            raise ValueError("a tenant needs a name")
        values = _tenant_fields(fields)
        try:
            with self.engine.begin() as conn:
                tenant_id = conn.execute(tenants.insert().values(
                    name=name.strip(), created_at=self.clock(), **{"priority": "standard", **values}
                ).returning(tenants.c.id)).scalar_one()
        except IntegrityError:
            raise ValueError(f"a tenant named '{name}' already exists") from None
        return self.tenant(tenant_id)

    def update_tenant(self, tenant_id: int, **fields) -> dict:
        self._update(tenants, tenant_id, _tenant_fields(fields))
        return self.tenant(tenant_id)

    def tenant(self, tenant_id: int) -> dict:
        return self._get(tenants, tenant_id)

    def tenant_by_name(self, name: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
        if row is None:
            raise LookupError(f"no tenant named '{name}'")
        return row._asdict()

    def list_tenants(self) -> list[dict]:
        return self._all(select(tenants).order_by(tenants.c.id))

    def create_key(self, tenant_id: int, name: str = "default", *, expires_at: datetime | None = None,
                   **limits) -> tuple[str, dict]:
        """A new API key: (the secret, shown this once; its metadata). Only the key's sha256 is stored."""
        self.tenant(tenant_id)
        secret = "fm-" + secrets.token_urlsafe(32)
        values = _limit_fields(limits)
        with self.engine.begin() as conn:
            key_id = conn.execute(api_keys.insert().values(
                tenant_id=tenant_id, name=name, key_hash=hash_key(secret), key_prefix=secret[:10],
                expires_at=expires_at, created_at=self.clock(), **values).returning(api_keys.c.id)).scalar_one()
        return secret, self.key(key_id)

    def key(self, key_id: int) -> dict:
        return self._get(api_keys, key_id, omit="key_hash")

    def list_keys(self, tenant_id: int | None = None) -> list[dict]:
        query = select(*[c for c in api_keys.c if c.name != "key_hash"]).order_by(api_keys.c.id)
        return self._all(query if tenant_id is None else query.where(api_keys.c.tenant_id == tenant_id))

    def update_key(self, key_id: int, **fields) -> dict:
        values = _limit_fields({k: v for k, v in fields.items() if k != "expires_at"})
        if "expires_at" in fields:
            values["expires_at"] = fields["expires_at"]
        self._update(api_keys, key_id, values)
        return self.key(key_id)

    def revoke_key(self, key_id: int) -> dict:
        self._update(api_keys, key_id, {"revoked_at": self.clock()})
        return self.key(key_id)

    def issue_demo_key(self) -> str:
        """A fresh key for the `demo` tenant (created on first use); earlier demo keys are revoked."""
        try:
            tenant_id = self.tenant_by_name("demo")["id"]
        except LookupError:
            tenant_id = self.create_tenant("demo", priority="interactive")["id"]
        with self.engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.tenant_id == tenant_id, api_keys.c.name == "demo",
                                                api_keys.c.revoked_at.is_(None)).values(revoked_at=self.clock()))
        self._invalidate()
        return self.create_key(tenant_id, "demo")[0]

    def set_budget(self, tenant_id: int, *, limit_micros: int, period: str = "monthly", key_id: int | None = None,
                   alert_percent: int = 80) -> dict:
        """Create or replace the budget of a tenant (key_id None) or of one of its keys. Spend so far is kept."""
        if period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, not '{period}'")
        if not isinstance(limit_micros, int) or not 0 <= limit_micros <= MAX_MICROS:
            raise ValueError(f"limit_micros must be a whole number of micro-USD from 0 to {MAX_MICROS}")
        if not isinstance(alert_percent, int) or not 1 <= alert_percent <= 100:
            raise ValueError("alert_percent must be a whole number from 1 to 100")
        self.tenant(tenant_id)
        if key_id is not None and self.key(key_id)["tenant_id"] != tenant_id:
            raise ValueError(f"key {key_id} does not belong to tenant {tenant_id}")
        values = {"period": period, "limit_micros": limit_micros, "alert_percent": alert_percent}
        with self.engine.begin() as conn:
            budget_id = conn.execute(select(budgets.c.id).where(
                budgets.c.tenant_id == tenant_id,
                budgets.c.key_id.is_(None) if key_id is None else budgets.c.key_id == key_id)).scalar()
            if budget_id is None:
                budget_id = conn.execute(budgets.insert().values(
                    tenant_id=tenant_id, key_id=key_id, created_at=self.clock(), **values
                ).returning(budgets.c.id)).scalar_one()
            else:
                conn.execute(update(budgets).where(budgets.c.id == budget_id).values(**values))
        self._invalidate()
        return next(b for b in self.list_budgets(tenant_id) if b["id"] == budget_id)

    def delete_budget(self, budget_id: int) -> None:
        with self.engine.begin() as conn:
            if not conn.execute(delete(budgets).where(budgets.c.id == budget_id)).rowcount:
                raise LookupError(f"no budget {budget_id}")
        self._invalidate()

    def list_budgets(self, tenant_id: int | None = None) -> list[dict]:
        """Budgets with their current period's spend, holds and what is left."""
        now = self.clock()
        rows = self._all(select(budgets).order_by(budgets.c.id) if tenant_id is None
                         else select(budgets).where(budgets.c.tenant_id == tenant_id).order_by(budgets.c.id))
        with self.engine.connect() as conn:
            for b in rows:
                b["period_key"] = period_key(b["period"], now)
                spend = conn.execute(select(_spend.spent_micros, _spend.reserved_micros).where(
                    _spend.budget_id == b["id"], _spend.period_key == b["period_key"])).first()
                b["spent_micros"], b["reserved_micros"] = spend or (0, 0)
                b["remaining_micros"] = b["limit_micros"] - b["spent_micros"] - b["reserved_micros"]
        return rows

    def list_alerts(self, tenant_id: int | None = None) -> list[dict]:
        query = (select(budget_alerts, budgets.c.tenant_id, budgets.c.key_id)
                 .join(budgets, budgets.c.id == budget_alerts.c.budget_id).order_by(budget_alerts.c.id))
        return self._all(query if tenant_id is None else query.where(budgets.c.tenant_id == tenant_id))

    def set_price(self, model: str, *, input_micros_per_m: int, cached_input_micros_per_m: int,
                  output_micros_per_m: int) -> dict:
        price = Price(model, input_micros_per_m, cached_input_micros_per_m, output_micros_per_m)
        amounts = (input_micros_per_m, cached_input_micros_per_m, output_micros_per_m)
        if not model or any(not isinstance(v, int) or not 0 <= v <= MAX_MICROS for v in amounts):
            raise ValueError("a price needs a model name and whole, non-negative micro-USD per 1M tokens")
        values = {**asdict(price), "updated_at": self.clock()}
        with self.engine.begin() as conn:
            conn.execute(self._upsert(prices).values(**values).on_conflict_do_update(
                index_elements=["model"], set_={k: v for k, v in values.items() if k != "model"}))
        self._invalidate()
        return values

    def set_prices_from_catalog(self, catalog: dict[str, dict]) -> list[dict]:
        """Write the catalog's prices ({model: {"input", "cached_input", "output"}}, USD per 1M tokens) at start:
        the file is the source of truth then; an admin edit at run time holds until the next start."""
        return [self.set_price(model, input_micros_per_m=micros(p["input"]),
                               cached_input_micros_per_m=micros(p.get("cached_input", p["input"])),
                               output_micros_per_m=micros(p["output"])) for model, p in catalog.items()]

    def list_prices(self) -> list[dict]:
        return self._all(select(prices).order_by(prices.c.model))

    def usage(self, tenant_id: int | None = None, since: str | None = None, until: str | None = None,
              limit: int = 100) -> list[dict]:
        """The newest usage records, optionally one tenant's and between two UTC days (inclusive)."""
        query = select(usage_records).order_by(usage_records.c.id.desc()).limit(min(max(limit, 1), 10_000))
        return self._all(where_usage(query, since, until, tenant_id))

    def record_feedback(self, principal: Principal, request_id: str, score: float, comment: str | None = None) -> bool:
        """Store a tenant's score (0..1) on one of its own requests; False when it has no such request."""
        if not 0.0 <= score <= 1.0:
            raise ValueError("score must be between 0 and 1")
        with self.engine.begin() as conn:
            return conn.execute(update(usage_records).where(
                usage_records.c.request_id == request_id, usage_records.c.tenant_id == principal.tenant_id
            ).values(feedback_score=score, feedback_comment=comment)).rowcount == 1

    def report(self, group_by: tuple[str, ...] = ("tenant", "model", "day"), *, since: str | None = None,
               until: str | None = None, tenant_id: int | None = None) -> list[dict]:
        return usage_report(self.engine, group_by, since=since, until=until, tenant_id=tenant_id)

    def ledger_totals(self, tenant_id: int | None = None) -> dict:
        """Spend and holds on tenant budgets, summed over every period: what reports must agree with."""
        query = (select(func.coalesce(func.sum(_spend.spent_micros), 0),
                        func.coalesce(func.sum(_spend.reserved_micros), 0))
                 .join(budgets, budgets.c.id == _spend.budget_id).where(budgets.c.key_id.is_(None)))
        with self.engine.connect() as conn:
            spent, reserved = conn.execute(query if tenant_id is None else query.where(
                budgets.c.tenant_id == tenant_id)).one()
            holds = select(func.count()).select_from(reservations)
            open_holds = conn.execute(holds if tenant_id is None else holds.where(
                reservations.c.tenant_id == tenant_id)).scalar_one()
        return {"spent_micros": int(spent), "reserved_micros": int(reserved), "open_reservations": open_holds}

    def _get(self, table, row_id: int, omit: str | None = None) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(*[c for c in table.c if c.name != omit]).where(table.c.id == row_id)).first()
        if row is None:
            raise LookupError(f"no {table.name.rstrip('s').replace('_', ' ')} with id {row_id}")
        return row._asdict()

    def _all(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def _update(self, table, row_id: int, values: dict) -> None:
        self._get(table, row_id)
        if values:
            with self.engine.begin() as conn:
                conn.execute(update(table).where(table.c.id == row_id).values(**values))
        self._invalidate()


def _limit_fields(fields: dict) -> dict:
    unknown = set(fields) - {"rpm", "tpm", "max_concurrent"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_LIMIT):
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_LIMIT}, or null for no limit")
    return dict(fields)


def _tenant_fields(fields: dict) -> dict:
    routing = {k: fields.pop(k) for k in ("priority", "quality_floor", "large_share", "allowed_models",
                                          "store_prompts") if k in fields}
    models = routing.get("allowed_models")
    if models is not None:
        if isinstance(models, str) or not all(isinstance(m, str) and m.strip() for m in models):
            raise ValueError("allowed_models must be a list of model or route group names, or null for all")
        routing["allowed_models"] = sorted({m.strip() for m in models})
    if not isinstance(routing.get("store_prompts", False), bool):
        raise ValueError("store_prompts must be true or false")
    if "priority" in routing and routing["priority"] not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
    for name in ("quality_floor", "large_share"):
        value = routing.get(name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    return {**routing, **_limit_fields(fields)}
