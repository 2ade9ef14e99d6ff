"""Billing: one ledger database and its jobs, behind one handle for the gateway and the operator commands.

- who is asking: `billing.auth.Keys` (API key -> principal, cached a few seconds)
- the money path: a ledger (billing.rules.Ledger: reserve, settle, release, reap, record, holds), SQL
  (`billing.ledger.SqlLedger`) or holds in Redis (`billing.redis_ledger.RedisLedger`); the rules in billing.rules
- the same calls, synchronous, for operator commands and tests (`reserve`, `settle`, ...: run on a private loop)
- the operator's CRUD: `billing.operators.Operators` (tenants, keys, budgets, prices)
- people's admin keys and their roles: `billing.admins.Admins`; every change above in `billing.audit`
- reports: `billing.reports` (usage records, grouped reports, ledger totals)
"""
from __future__ import annotations

import asyncio
import threading
import copy
import time
from datetime import datetime
from typing import Callable

from sqlalchemy import select, update

from billing import audit
from billing.admins import Admins
from billing.audit import SYSTEM, Actor

from billing.auth import Keys
from billing.db import Deadlines, make_engine, upgrade
from billing.ledger import SqlLedger, blocking, utcnow
from billing.models import usage_records
from billing.operators import Operators
from billing.reports import ledger_totals, recent_usage, usage_report
from billing.rules import Ledger, Reservation, UsageRecord, storable


class Billing:
    def __init__(self, database_url: str = "sqlite:///ferryman.db", *, cache_ttl_s: float = 2.0,
                 reservation_ttl_s: float = 900.0, clock: Callable[[], datetime] = utcnow,
                 redis_url: str | None = None, redis_prefix: str = "ferryman", deadlines: Deadlines = Deadlines(),
                 redis_timeout_s: float = 2.0, recovery_s: float = 3.0):
        self.database_url, self.clock = database_url, clock
        self.engine = make_engine(database_url, deadlines)
        self.keys = Keys(self.engine, clock, cache_ttl_s)
        # With Redis: budget holds there, records written in batches by a writer (billing.redis_ledger).
        self.holds_in_redis = redis_url is not None
        self.ledger: Ledger
        if redis_url:
            from billing.redis_ledger import RedisLedger

            self.ledger = RedisLedger(self.engine, clock, cache_ttl_s, reservation_ttl_s, redis_url, redis_prefix,
                                      redis_timeout_s, recovery_s)
        else:
            self.ledger = SqlLedger(self.engine, clock, cache_ttl_s, reservation_ttl_s)
        self.operators = Operators(self.engine, clock, on_change=self._invalidate)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self.admins = Admins(self.engine, clock)
        self.actor = SYSTEM
        # The gateway's path.
        self.authenticate = self.keys.authenticate
        self.price = self.ledger.prices
        self._expose(self.operators)

    def _expose(self, ops: Operators) -> None:
        """The operator's calls, as methods of this handle."""
        self.create_tenant, self.update_tenant, self.tenant = ops.create_tenant, ops.update_tenant, ops.tenant
        self.tenant_by_name, self.list_tenants = ops.tenant_by_name, ops.list_tenants
        self.create_key, self.key, self.list_keys = ops.create_key, ops.key, ops.list_keys
        self.update_key, self.revoke_key, self.issue_demo_key = ops.update_key, ops.revoke_key, ops.issue_demo_key
        self.delete_budget = ops.delete_budget
        self.list_budgets, self.list_alerts = ops.list_budgets, ops.list_alerts
        self.claim_alerts, self.mark_alert_sent = ops.claim_alerts, ops.mark_alert_sent
        self.set_price, self.set_prices_from_catalog = ops.set_price, ops.set_prices_from_catalog
        self.list_prices, self.ensure_admin_defaults = ops.list_prices, ops.ensure_default_prices

    def acting(self, actor: Actor) -> Billing:
        """This ledger with every change recorded in the audit log as `actor`'s (a shallow copy: same engine)."""
        view = copy.copy(self)
        view.actor, view.operators, view.admins = actor, self.operators.acting(actor), self.admins.acting(actor)
        view._expose(view.operators)
        return view

    def audit(self, **filters) -> list[dict]:
        """Audit entries, newest first (billing.audit.entries' filters)."""
        return audit.entries(self.engine, **filters)

    def create_schema(self) -> None:
        """Bring the database to the newest schema. Migrations, not create_all, so that a database made
        by `serve` and one made by `ferryman db upgrade` are the same thing and can be upgraded later."""
        upgrade(self.database_url)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self.holds_in_redis:
            self.ledger.redis.close()  # (the pipelined connections close with their event loops)
        else:
            self.ledger.close()
        self.engine.dispose()

    def _invalidate(self) -> None:
        self.keys.forget()
        self.ledger.prices.forget()

    # --- the ledger's calls, synchronous (operator commands, tests, seed scripts; never the event loop) ----------

    def _wait(self, call):
        """Run a ledger coroutine to its end on this object's own event loop (a thread), from any thread."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="billing-sync", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def reserve(self, principal, request_id: str, model: str, prompt_tokens: int, max_tokens: int) -> Reservation:
        return self._wait(self.ledger.reserve(principal, request_id, model, prompt_tokens, max_tokens))

    def settle(self, res: Reservation, **usage) -> UsageRecord:
        return self._wait(self.ledger.settle(res, **usage))

    def release(self, res: Reservation, status: str = "error") -> UsageRecord:
        return self._wait(self.ledger.release(res, status))

    def reap_expired(self, now: datetime | None = None) -> int:
        return self._wait(self.ledger.reap(now))

    async def blocking(self, fn, *args, **kwargs):
        """A blocking call on the database from the event loop: inline on SQLite, else in a thread."""
        return await blocking(self.engine, fn, *args, **kwargs)

    def set_budget(self, tenant_id: int, **budget) -> dict:
        """Operators.set_budget. Its period starts at the sum of the period's records; with holds in Redis, records
        still on their way to the database are waited for first (up to 2 s, while a writer runs)."""
        deadline = time.monotonic() + 2.0
        while self.unwritten() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.holds_in_redis:
            return self.operators.set_budget(tenant_id, **budget)
        before = {b["id"]: b["period"] for b in self.operators.list_budgets(self.operators.tenant(tenant_id)["id"])}
        made = self.operators.set_budget(tenant_id, **budget)
        if before.get(made["id"], made["period"]) != made["period"]:
            # Redis may still count this kind of period from before: let it seed again from the records.
            self.ledger.redis.delete(self.ledger.budget_key(made["id"], made["period_key"]))
        return made

    def cost_micros(self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        return self.price(model).cost_micros(prompt_tokens, cached_tokens, completion_tokens)

    def record_feedback(self, principal, request_id: str, score: float, comment: str | None = None) -> bool:
        """Store a tenant's score (0..1) on one of its own requests; False when it has no such request."""
        if not 0.0 <= score <= 1.0:
            raise ValueError("score must be between 0 and 1")
        if "\x00" in request_id:
            return False  # no request id holds a NUL byte (and PostgreSQL text cannot carry one)
        with self.engine.begin() as conn:
            return conn.execute(update(usage_records).where(
                usage_records.c.request_id == request_id, usage_records.c.tenant_id == principal.tenant_id
            ).values(feedback_score=score, feedback_comment=storable(comment))).rowcount == 1

    def answered_by(self, principal, request_id: str) -> tuple[str | None, str] | None:
        """The route group and the model of one of the tenant's own records; None when it has no such request."""
        r = usage_records.c
        with self.engine.connect() as conn:
            row = conn.execute(select(r.route_group, r.model).where(
                r.request_id == request_id, r.tenant_id == principal.tenant_id)).one_or_none()
        return None if row is None else (row.route_group, row.model)

    def usage(self, tenant_id: int | None = None, since: str | None = None, until: str | None = None,
              limit: int = 100, *, tenant_text: bool = True) -> list[dict]:
        return recent_usage(self.engine, tenant_id, since, until, limit, tenant_text=tenant_text)

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
