"""Billing: one ledger database and its jobs, behind one handle for the gateway and the operator commands.

- who is asking: `billing.auth.Keys` (API key -> principal, cached a few seconds)
- the money path: `billing.ledger.Ledger` (prices, reserve, settle, release, reap, feedback)
- the operator's CRUD: `billing.operators.Operators` (tenants, keys, budgets, prices)
- reports: `billing.reports` (usage records, grouped reports, ledger totals)
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from billing.auth import Keys
from billing.db import make_engine, upgrade
from billing.ledger import Ledger, utcnow
from billing.operators import Operators
from billing.reports import ledger_totals, recent_usage, usage_report


class Billing:
    def __init__(self, database_url: str = "sqlite:///ferryman.db", *, cache_ttl_s: float = 2.0,
                 reservation_ttl_s: float = 900.0, clock: Callable[[], datetime] = utcnow,
                 redis_url: str | None = None, redis_prefix: str = "ferryman"):
        self.database_url, self.clock = database_url, clock
        self.engine = make_engine(database_url)
        self.keys = Keys(self.engine, clock, cache_ttl_s)
        # With Redis: budget holds there, records written in batches by a writer (billing.redis_ledger).
        self.holds_in_redis = redis_url is not None
        if redis_url:
            from billing.redis_ledger import RedisLedger

            self.ledger = RedisLedger(self.engine, clock, cache_ttl_s, reservation_ttl_s, redis_url, redis_prefix)
        else:
            self.ledger = Ledger(self.engine, clock, cache_ttl_s, reservation_ttl_s)
        self.operators = Operators(self.engine, clock, on_change=self._invalidate)
        # The gateway's path.
        self.authenticate = self.keys.authenticate
        self.price, self.cost_micros = self.ledger.price, self.ledger.cost_micros
        self.reserve, self.settle, self.release = self.ledger.reserve, self.ledger.settle, self.ledger.release
        self.areserve, self.asettle = self.ledger.areserve, self.ledger.asettle  # the same, awaited on the request path
        self.reap_expired, self.record_feedback = self.ledger.reap_expired, self.ledger.record_feedback
        # The operator's.
        ops = self.operators
        self.create_tenant, self.update_tenant, self.tenant = ops.create_tenant, ops.update_tenant, ops.tenant
        self.tenant_by_name, self.list_tenants = ops.tenant_by_name, ops.list_tenants
        self.create_key, self.key, self.list_keys = ops.create_key, ops.key, ops.list_keys
        self.update_key, self.revoke_key, self.issue_demo_key = ops.update_key, ops.revoke_key, ops.issue_demo_key
        self.set_budget, self.delete_budget = ops.set_budget, ops.delete_budget
        self.list_budgets, self.list_alerts = ops.list_budgets, ops.list_alerts
        self.claim_alerts, self.mark_alert_sent = ops.claim_alerts, ops.mark_alert_sent
        self.set_price, self.set_prices_from_catalog = ops.set_price, ops.set_prices_from_catalog
        self.list_prices, self.ensure_admin_defaults = ops.list_prices, ops.ensure_default_prices

    def create_schema(self) -> None:
        """Bring the database to the newest schema. Migrations, not create_all, so that a database made
        by `serve` and one made by `ferryman db upgrade` are the same thing and can be upgraded later."""
        upgrade(self.database_url)

    def close(self) -> None:
        if self.holds_in_redis:
            self.ledger.redis.close()  # (the ledger's pipelined connection closes with its event loop)
        self.engine.dispose()

    def _invalidate(self) -> None:
        self.keys.forget()
        self.ledger.forget_prices()

    def usage(self, tenant_id: int | None = None, since: str | None = None, until: str | None = None,
              limit: int = 100) -> list[dict]:
        return recent_usage(self.engine, tenant_id, since, until, limit)

    def report(self, group_by: tuple[str, ...] = ("tenant", "model", "day"), *, since: str | None = None,
               until: str | None = None, tenant_id: int | None = None) -> list[dict]:
        return usage_report(self.engine, group_by, since=since, until=until, tenant_id=tenant_id)

    def ledger_totals(self, tenant_id: int | None = None) -> dict:
        totals = ledger_totals(self.engine, tenant_id)
        if self.holds_in_redis:  # holds live in Redis; the database has the spend the writer has written
            totals["open_reservations"], totals["reserved_micros"] = self.ledger.open_holds(tenant_id)
        return totals

    def unwritten(self) -> int:
        """Settled requests whose records have not reached the database yet (only with holds in Redis)."""
        return self.ledger.unwritten() if self.holds_in_redis else 0

    def writer(self, **options):
        """The Redis ledger's batch writer (billing.redis_ledger.Writer), not yet started; None without Redis."""
        if not self.holds_in_redis:
            return None
        from billing.redis_ledger import Writer

        return Writer(self.ledger, **options)
