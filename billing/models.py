"""The ledger's tables (SQLAlchemy Core: the hot path runs a few prepared statements, no ORM session).

Money is integer micro-USD everywhere (1 USD = 1_000_000). Datetimes are naive UTC.
"""
from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, UniqueConstraint, false)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

tenants = Table(
    "tenants", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("priority", String(16), nullable=False, default="standard"),  # interactive | standard | batch
    Column("quality_floor", Float),  # routing target: lowest acceptable answer quality, 0..1
    Column("large_share", Float),  # routing target: share of traffic the large model may take, 0..1
    Column("rpm", Integer),  # requests per minute; NULL = unlimited
    Column("tpm", Integer),  # tokens (prompt + max_tokens) per minute
    Column("max_concurrent", Integer),
    Column("created_at", DateTime, nullable=False),
    Column("allowed_models", JSON),  # model and route group names this tenant may call; NULL = all of them
    Column("store_prompts", Boolean, nullable=False, default=False, server_default=false()),  # opted in to training
    # Our own use (e.g. `ferryman-operator`'s labelling calls): reported apart from customers.
    Column("internal", Boolean, nullable=False, default=False, server_default=false()),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; the key itself is never stored
    Column("key_prefix", String(16), nullable=False),  # shown to humans to tell keys apart
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrent", Integer),
    Column("expires_at", DateTime),
    Column("revoked_at", DateTime),
    Column("created_at", DateTime, nullable=False),
)

prices = Table(
    "prices", metadata,
    Column("model", String(128), primary_key=True),
    Column("input_micros_per_m", BigInteger, nullable=False),  # micro-USD per 1M uncached prompt tokens
    Column("cached_input_micros_per_m", BigInteger, nullable=False),
    Column("output_micros_per_m", BigInteger, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("gpu_hour_micros", BigInteger),  # set: billed per attributed GPU-second at this micro-USD per GPU-hour
)

# One budget per tenant (key_id NULL) and at most one per key.
budgets = Table(
    "budgets", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("key_id", Integer, ForeignKey("api_keys.id")),
    Column("period", String(8), nullable=False),  # daily | monthly
    Column("limit_micros", BigInteger, nullable=False),
    # Alerts when spend reaches each of these shares of the limit (percent, ascending), once per period each.
    Column("alert_percents", JSON, nullable=False, server_default="[80]"),
    Column("created_at", DateTime, nullable=False),
)

# A budget's counters for one period ("2026-11-24" or "2026-11"): rollover is a new row, never a reset.
budget_spend = Table(
    "budget_spend", metadata,
    Column("id", Integer, primary_key=True),
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"), nullable=False),
    Column("period_key", String(10), nullable=False),
    Column("spent_micros", BigInteger, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    # The highest threshold alerted in this period (0: none). Spend only grows within a period, so thresholds are
    # crossed in ascending order: a threshold alerts once it is reached and is above this.
    Column("alerted_percent", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("budget_id", "period_key", name="uq_budget_spend_period"),
)

# Open holds on budget: a row per admitted request until it is settled (or reaped after a replica died).
reservations = Table(
    "reservations", metadata,
    Column("request_id", String(128), primary_key=True),
    Column("tenant_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("model", String(128), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("tenant_spend_id", Integer),  # budget_spend rows held; locked tenant first, then key (no deadlocks)
    Column("key_spend_id", Integer),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False, index=True),
)

usage_records = Table(
    "usage_records", metadata,
    Column("id", Integer, primary_key=True),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("tenant_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("model", String(128), nullable=False),
    Column("route", String(16)),
    Column("difficulty", Float),
    Column("status", String(16), nullable=False),  # ok | error | timeout | cancelled | expired
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    # The same tokens at the price of the route group's strongest tier; NULL: no baseline (savings count as 0).
    Column("baseline_cost_micros", BigInteger),
    Column("latency_ms", Float),
    Column("day", String(10), nullable=False),  # UTC date, so reports group the same way on every database
    Column("created_at", DateTime, nullable=False),
    Column("estimated", Boolean, nullable=False, default=False, server_default=false()),  # tokens estimated, not counted
    Column("route_group", String(128)),
    Column("gpu_seconds", Float),
    Column("prompt_text", Text),  # only for tenants that opted in (store_prompts)
    Column("feedback_score", Float),  # 0..1, from the tenant's POST /v1/feedback
    Column("feedback_comment", Text),
    # What each price says: the tokens at the per-token prices, the GPU-seconds at the GPU-hour price (NULL: the
    # model has none). cost_micros is the one billed (the GPU one where set; billing/rules.py).
    Column("token_cost_micros", BigInteger),
    Column("gpu_cost_micros", BigInteger),
    Index("ix_usage_records_tenant_day", "tenant_id", "day"),
)

budget_alerts = Table(
    "budget_alerts", metadata,
    Column("id", Integer, primary_key=True),
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"), nullable=False),
    Column("period_key", String(10), nullable=False),
    Column("spent_micros", BigInteger, nullable=False),
    Column("limit_micros", BigInteger, nullable=False),
    Column("alert_percent", Integer, nullable=False),  # the threshold reached
    Column("created_at", DateTime, nullable=False),
    # Webhook delivery (gateway/alerts.py): taken by one replica until `claimed_until`, done at `sent_at`.
    Column("claimed_until", DateTime),
    Column("sent_at", DateTime),
    UniqueConstraint("budget_id", "period_key", "alert_percent", name="uq_budget_alerts_period"),
)

# People's keys to the admin API, one role each. Only the sha256 is stored; revoked keys stay, since the audit log
# names them.
admin_keys = Table(
    "admin_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),  # who, in the audit log
    Column("role", String(16), nullable=False),  # admin | operator | finance (billing.admins.ROLES)
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime),
)

# Every change an operator (or the gateway at start) made: append-only, which the migration's triggers enforce.
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", DateTime, nullable=False),
    Column("actor", String(160), nullable=False),  # an admin key's name, "env:FERRYMAN_ADMIN_KEY", "cli:<user>", ...
    Column("actor_role", String(16), nullable=False),  # admin | operator | finance | system
    Column("action", String(32), nullable=False),  # "tenant.create", "price.set", "admin_key.revoke", ...
    Column("target", String(160), nullable=False),  # "tenant:3", "price:ferryman-small", ...
    Column("before", JSON),  # the fields that changed, as they were (NULL: created)
    Column("after", JSON),  # ... and as they are now (NULL: deleted)
)
