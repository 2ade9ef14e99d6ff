"""The operator's side of the ledger: tenants, API keys, budgets and prices (create, read, update, revoke).

Every refusal is a ValueError (bad input) or a LookupError (no such row), written for the operator to read;
nothing an operator types can reach the database in a shape it rejects (NUL bytes, ids past the columns).
Every change is written to the audit log, as `actor`'s, in the change's own transaction (billing.audit)."""
from __future__ import annotations

import secrets
from dataclasses import asdict
from datetime import datetime, timedelta
from types import EllipsisType
from typing import Callable

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from billing import audit
from billing.audit import SYSTEM, Actor
from billing.auth import hash_key
from billing.ledger import open_period
from billing.rules import period_key
from billing.models import api_keys, budget_alerts, budget_spend, budgets, prices, tenants
from billing.pricing import DEFAULT_PRICES, Price, micros

PRIORITIES = ("interactive", "standard", "batch")
PERIODS = ("daily", "monthly")
MAX_ID = 2**31 - 1  # ids are 32-bit columns
MAX_LIMIT = 2**31 - 1  # rate limits are 32-bit columns
MAX_MICROS = 2**63 - 1  # money is a 64-bit column
MAX_NAME = 128
MAX_ALERTS = 10  # alert thresholds per budget
DEMO_KEY_DAYS = 7  # each `serve` prints a fresh demo key; old ones lapse instead of being revoked by others


class Operators:
    def __init__(self, engine: Engine, clock: Callable[[], datetime], on_change: Callable[[], None],
                 actor: Actor = SYSTEM):
        """`on_change` drops the caches of keys and prices, so an edit shows on this replica at once."""
        self.engine, self.clock, self.on_change, self.actor = engine, clock, on_change, actor
        self._upsert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert

    def acting(self, actor: Actor) -> Operators:
        """The same operations, recorded in the audit log as `actor`'s."""
        return Operators(self.engine, self.clock, self.on_change, actor)

    # --- tenants ---------------------------------------------------------------------------------

    def create_tenant(self, name: str, **fields) -> dict:
        name = _name(name, "tenant")
        values = _tenant_fields(fields)
        try:
            with self.engine.begin() as conn:
                tenant_id = conn.execute(tenants.insert().values(
                    name=name, created_at=self.clock(), **{"priority": "standard", **values}
                ).returning(tenants.c.id)).scalar_one()
                self._audit(conn, "tenant.create", tenants, tenant_id, None, self._row(conn, tenants, tenant_id))
        except IntegrityError:
            raise ValueError(f"a tenant named '{name}' already exists") from None
        return self.tenant(tenant_id)

    def update_tenant(self, tenant_id: int, **fields) -> dict:
        self._update(tenants, tenant_id, _tenant_fields(fields), "tenant.update")
        return self.tenant(tenant_id)

    def tenant(self, tenant_id: int) -> dict:
        return self._get(tenants, tenant_id)

    def tenant_by_name(self, name: str) -> dict:
        row = None
        if "\x00" not in name:
            with self.engine.connect() as conn:
                row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
        if row is None:
            raise LookupError(f"no tenant named '{name}'")
        return row._asdict()

    def list_tenants(self) -> list[dict]:
        return self._all(select(tenants).order_by(tenants.c.id))

    # --- keys --------------------------------------------------------------------------------------

    def create_key(self, tenant_id: int, name: str = "default", *, expires_at: datetime | None = None,
                   **limits) -> tuple[str, dict]:
        """A new API key: (the secret, shown this once; its metadata). Only the key's sha256 is stored."""
        self.tenant(tenant_id)
        name = _name(name, "key")
        secret = "fm-" + secrets.token_urlsafe(32)
        values = _limit_fields(limits)
        with self.engine.begin() as conn:
            key_id = conn.execute(api_keys.insert().values(
                tenant_id=tenant_id, name=name, key_hash=hash_key(secret), key_prefix=secret[:10],
                expires_at=expires_at, created_at=self.clock(), **values).returning(api_keys.c.id)).scalar_one()
            self._audit(conn, "key.create", api_keys, key_id, None, self._row(conn, api_keys, key_id))
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
        self._update(api_keys, key_id, values, "key.update")
        return self.key(key_id)

    def revoke_key(self, key_id: int) -> dict:
        self._update(api_keys, key_id, {"revoked_at": self.clock()}, "key.revoke")
        return self.key(key_id)

    def issue_demo_key(self) -> str:
        """A fresh key for the `demo` tenant (created on first use), valid for DEMO_KEY_DAYS.

        Nothing is revoked: replicas sharing a database each print their own demo key, and all keep working."""
        try:
            tenant_id = self.tenant_by_name("demo")["id"]
        except LookupError:
            try:
                tenant_id = self.create_tenant("demo", priority="interactive")["id"]
            except ValueError:  # another replica made it a moment ago
                tenant_id = self.tenant_by_name("demo")["id"]
        return self.create_key(tenant_id, "demo", expires_at=self.clock() + timedelta(days=DEMO_KEY_DAYS))[0]

    # --- budgets -----------------------------------------------------------------------------------

    def set_budget(self, tenant_id: int, *, limit_micros: int, period: str = "monthly", key_id: int | None = None,
                   alert_percents=(80,)) -> dict:
        """Create or replace the budget of a tenant (key_id None) or of one of its keys. Spend so far is kept.
        `alert_percents`: the shares of the limit (whole percents) at which it alerts, each once per period."""
        if period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, not '{period}'")
        if not isinstance(limit_micros, int) or not 0 <= limit_micros <= MAX_MICROS:
            raise ValueError(f"limit_micros must be a whole number of micro-USD from 0 to {MAX_MICROS}")
        alert_percents = _percents(alert_percents)
        self.tenant(tenant_id)
        if key_id is not None and self.key(key_id)["tenant_id"] != tenant_id:
            raise ValueError(f"key {key_id} does not belong to tenant {tenant_id}")
        values = {"period": period, "limit_micros": limit_micros, "alert_percents": alert_percents}
        with self.engine.begin() as conn:
            budget_id, was = conn.execute(select(budgets.c.id, budgets.c.period).where(
                budgets.c.tenant_id == tenant_id,
                budgets.c.key_id.is_(None) if key_id is None else budgets.c.key_id == key_id)).first() or (None, None)
            before = None if budget_id is None else self._row(conn, budgets, budget_id)
            if budget_id is None:
                budget_id = conn.execute(budgets.insert().values(
                    tenant_id=tenant_id, key_id=key_id, created_at=self.clock(), **values
                ).returning(budgets.c.id)).scalar_one()
            else:
                conn.execute(update(budgets).where(budgets.c.id == budget_id).values(**values))
            # Its period's counters start now, at what that period's records already spent.
            open_period(conn, budget_id, period_key(period, self.clock()), recount=was not in (None, period))
            self._audit(conn, "budget.set", budgets, budget_id, before, self._row(conn, budgets, budget_id))
        self.on_change()
        return next(b for b in self.list_budgets(tenant_id) if b["id"] == budget_id)

    def delete_budget(self, budget_id: int) -> None:
        self._get(budgets, budget_id)
        with self.engine.begin() as conn:
            before = self._row(conn, budgets, budget_id)
            conn.execute(delete(budgets).where(budgets.c.id == budget_id))
            self._audit(conn, "budget.delete", budgets, budget_id, before, None)
        self.on_change()

    def list_budgets(self, tenant_id: int | None = None) -> list[dict]:
        """Budgets with their current period's spend, holds and what is left."""
        now = self.clock()
        rows = self._all(select(budgets).order_by(budgets.c.id) if tenant_id is None
                         else select(budgets).where(budgets.c.tenant_id == tenant_id).order_by(budgets.c.id))
        spend = budget_spend.c
        with self.engine.connect() as conn:
            for b in rows:
                b["period_key"] = period_key(b["period"], now)
                held = conn.execute(select(spend.spent_micros, spend.reserved_micros).where(
                    spend.budget_id == b["id"], spend.period_key == b["period_key"])).first()
                b["spent_micros"], b["reserved_micros"] = held or (0, 0)
                b["remaining_micros"] = b["limit_micros"] - b["spent_micros"] - b["reserved_micros"]
        return rows

    def list_alerts(self, tenant_id: int | None = None) -> list[dict]:
        return self._all(_alerts() if tenant_id is None else _alerts().where(budgets.c.tenant_id == tenant_id))

    def claim_alerts(self, claim_s: float, limit: int = 20) -> list[dict]:
        """Unsent alerts this replica now sends (each taken for `claim_s`, so no other replica sends it meanwhile;
        one whose claim lapsed, its sender having failed or died, is taken again)."""
        a, now = budget_alerts.c, self.clock()
        free = (a.sent_at.is_(None), or_(a.claimed_until.is_(None), a.claimed_until < now))
        with self.engine.begin() as conn:
            ids = conn.execute(select(a.id).where(*free).order_by(a.id).limit(limit)).scalars().all()
            taken = [i for i in ids if conn.execute(update(budget_alerts).where(a.id == i, *free).values(
                claimed_until=now + timedelta(seconds=claim_s))).rowcount == 1]
        return self._all(_alerts().where(budget_alerts.c.id.in_(taken))) if taken else []

    def mark_alert_sent(self, alert_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(budget_alerts).where(budget_alerts.c.id == alert_id).values(sent_at=self.clock()))

    # --- prices ------------------------------------------------------------------------------------

    def set_price(self, model: str, *, input_micros_per_m: int, cached_input_micros_per_m: int,
                  output_micros_per_m: int, gpu_hour_micros: int | None | EllipsisType = ...) -> dict:
        """`gpu_hour_micros` set: the model is billed per GPU-second at that price (see Price); None: per token;
        left out: as it was, so an edit of the token prices alone (`prices set` without --gpu-hour-usd) keeps it."""
        model = _name(model, "model")
        if gpu_hour_micros is ...:
            with self.engine.connect() as conn:
                gpu_hour_micros = conn.execute(select(prices.c.gpu_hour_micros).where(prices.c.model == model)).scalar()
        amounts = (input_micros_per_m, cached_input_micros_per_m, output_micros_per_m)
        if any(not isinstance(v, int) or not 0 <= v <= MAX_MICROS for v in amounts):
            raise ValueError("a price needs whole, non-negative micro-USD per 1M tokens")
        if gpu_hour_micros is not None and (not isinstance(gpu_hour_micros, int)
                                            or not 0 <= gpu_hour_micros <= MAX_MICROS):
            raise ValueError("a GPU-hour price needs whole, non-negative micro-USD")
        values = {**asdict(Price(model, *amounts, gpu_hour_micros)), "updated_at": self.clock()}
        with self.engine.begin() as conn:
            before = conn.execute(select(prices).where(prices.c.model == model)).first()
            conn.execute(self._upsert(prices).values(**values).on_conflict_do_update(
                index_elements=["model"], set_={k: v for k, v in values.items() if k != "model"}))
            # the same price written again (the catalog's, at each start) is no change
            audit.record(conn, self.actor, values["updated_at"], "price.set", f"price:{model}",
                         before and _price_fields(before._asdict()), _price_fields(values))
        self.on_change()
        return values

    def set_prices_from_catalog(self, catalog: dict[str, dict]) -> list[dict]:
        """Write the catalog's prices ({model: {"input", "cached_input", "output"[, "gpu_hour"]}}, USD per 1M tokens
        and per GPU-hour) at start: the file is the source of truth then; an admin edit at run time holds until the
        next start."""
        return [self.set_price(model, input_micros_per_m=micros(p["input"]),
                               cached_input_micros_per_m=micros(p.get("cached_input", p["input"])),
                               output_micros_per_m=micros(p["output"]),
                               gpu_hour_micros=None if p.get("gpu_hour") is None else micros(p["gpu_hour"]))
                for model, p in catalog.items()]

    def ensure_default_prices(self) -> None:
        """The bundled models' prices, where none is set yet (an operator's price is never overwritten)."""
        now = self.clock()
        with self.engine.begin() as conn:
            for p in DEFAULT_PRICES:
                added = conn.execute(self._upsert(prices).values(**asdict(p), updated_at=now)
                                     .on_conflict_do_nothing().returning(prices.c.model)).first()
                if added:
                    audit.record(conn, self.actor, now, "price.set", f"price:{p.model}", None, _price_fields(asdict(p)))
        self.on_change()

    def list_prices(self) -> list[dict]:
        return self._all(select(prices).order_by(prices.c.model))

    # --- rows --------------------------------------------------------------------------------------

    def _get(self, table, row_id: int, omit: str | None = None) -> dict:
        row = None
        if isinstance(row_id, int) and 1 <= row_id <= MAX_ID:
            with self.engine.connect() as conn:
                row = conn.execute(select(*[c for c in table.c if c.name != omit]).where(table.c.id == row_id)).first()
        if row is None:
            raise LookupError(f"no {table.name.rstrip('s').replace('_', ' ')} with id {row_id}")
        return row._asdict()

    def _all(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def _update(self, table, row_id: int, values: dict, action: str) -> None:
        self._get(table, row_id)
        if values:
            with self.engine.begin() as conn:
                before = self._row(conn, table, row_id)
                conn.execute(update(table).where(table.c.id == row_id).values(**values))
                self._audit(conn, action, table, row_id, before, self._row(conn, table, row_id))
        self.on_change()

    @staticmethod
    def _row(conn, table, row_id: int) -> dict:
        """A row as the audit log shows it: never a key's hash."""
        return conn.execute(select(*[c for c in table.c if c.name != "key_hash"]).where(table.c.id == row_id)).one()._asdict()

    def _audit(self, conn, action: str, table, row_id: int, before: dict | None, after: dict | None) -> None:
        target = {"tenants": "tenant", "api_keys": "key", "budgets": "budget"}[table.name]
        audit.record(conn, self.actor, self.clock(), action, f"{target}:{row_id}", before, after)


def _price_fields(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("model", "updated_at")}


def _name(value, what: str) -> str:
    """A name as every database keeps it: 1-128 characters, no control characters (PostgreSQL refuses NUL)."""
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > MAX_NAME or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"a {what} name must be 1 to {MAX_NAME} printable characters, got {value!r}")
    return name


def _limit_fields(fields: dict) -> dict:
    unknown = set(fields) - {"rpm", "tpm", "max_concurrent"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_LIMIT):
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_LIMIT}, or null for no limit")
    return dict(fields)


def _percents(value) -> list[int]:
    """Alert thresholds as stored: whole percents from 1 to 100, ascending, each once; none: no alerts."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"alert_percents must be a list of whole percents such as [50, 80, 100], got {value!r}")
    percents = list(value)
    if any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100 for p in percents):
        raise ValueError(f"each alert percent must be a whole number from 1 to 100, got {percents!r}")
    if len(set(percents)) > MAX_ALERTS:
        raise ValueError(f"a budget takes at most {MAX_ALERTS} alert thresholds")
    return sorted(set(percents))


def _alerts():
    """Budget alerts (each with the threshold it reached) with their budget's tenant and key."""
    return (select(budget_alerts, budgets.c.tenant_id, budgets.c.key_id, tenants.c.name.label("tenant"))
            .join(budgets, budgets.c.id == budget_alerts.c.budget_id)
            .join(tenants, tenants.c.id == budgets.c.tenant_id).order_by(budget_alerts.c.id))


def _tenant_fields(fields: dict) -> dict:
    routing = {k: fields.pop(k) for k in ("priority", "quality_floor", "large_share", "allowed_models",
                                          "store_prompts", "internal") if k in fields}
    if "priority" in routing and routing["priority"] not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
    for name in ("quality_floor", "large_share"):
        value = routing.get(name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    models = routing.get("allowed_models")
    if models is not None:
        if isinstance(models, str):
            raise ValueError("allowed_models must be a list of model or route group names, or null for all")
        routing["allowed_models"] = sorted({_name(m, "model or route group") for m in models})
    for flag in ("store_prompts", "internal"):
        if not isinstance(routing.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false")
    return {**routing, **_limit_fields(fields)}
