"""Who is asking: an API key (only its sha256 is stored) to its tenant, limits and budgets, cached a few seconds."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, NamedTuple

from sqlalchemy import Engine, or_, select

from billing.models import api_keys, budgets, tenants


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class Limit:
    """Rate limits of one scope; `scope` names its buckets ("tenant:3", "key:7"). None = unlimited."""

    scope: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None


class BudgetRef(NamedTuple):
    """A budget as the money path needs it; limit and alert share travel along for the Redis ledger's checks."""

    id: int
    period: str  # daily | monthly
    limit_micros: int
    alert_percents: tuple[int, ...]  # ascending


@dataclass(frozen=True)
class Principal:
    tenant_id: int
    tenant_name: str
    key_id: int
    priority: str
    quality_floor: float | None
    large_share: float | None
    limits: tuple[Limit, ...]
    tenant_budget: BudgetRef | None
    key_budget: BudgetRef | None
    expires_at: datetime | None
    allowed_models: tuple[str, ...] | None = None  # model and route group names; None = every one
    store_prompts: bool = False  # the tenant opted in to keeping its prompts for router training


class Keys:
    def __init__(self, engine: Engine, clock: Callable[[], datetime], cache_ttl_s: float):
        self.engine, self.clock, self.cache_ttl_s = engine, clock, cache_ttl_s
        self._principals: dict[str, tuple[float, Principal | None]] = {}

    def authenticate(self, api_key: str) -> Principal | None:
        """The key's principal, or None for an unknown, revoked or expired key.

        Lookups are cached for `cache_ttl_s`, so a revocation takes effect everywhere within that time."""
        digest = hash_key(api_key)
        now = time.monotonic()
        hit = self._principals.get(digest)
        if hit is None or hit[0] <= now:
            if len(self._principals) > 10_000:  # random junk keys must not grow the cache without bound
                self._principals.clear()
            hit = (now + self.cache_ttl_s, self._load(digest))
            self._principals[digest] = hit
        principal = hit[1]
        if principal is not None and principal.expires_at is not None and principal.expires_at <= self.clock():
            return None
        return principal

    def cached(self, api_key: str) -> bool:
        """Whether `authenticate` can answer from the cache, without reading the database."""
        hit = self._principals.get(hash_key(api_key))
        return hit is not None and hit[0] > time.monotonic()

    def forget(self) -> None:
        """Drop the cache: an operator's edit shows on this replica at once."""
        self._principals.clear()

    def _load(self, digest: str) -> Principal | None:
        k, t = api_keys.c, tenants.c
        query = (select(k.id, k.tenant_id, k.rpm, k.tpm, k.max_concurrent, k.expires_at, t.name, t.priority,
                        t.quality_floor, t.large_share, t.rpm.label("t_rpm"), t.tpm.label("t_tpm"),
                        t.max_concurrent.label("t_max_concurrent"), t.allowed_models, t.store_prompts)
                 .join(tenants, t.id == k.tenant_id).where(k.key_hash == digest, k.revoked_at.is_(None)))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            refs = conn.execute(select(budgets.c.id, budgets.c.period, budgets.c.limit_micros, budgets.c.alert_percents,
                                       budgets.c.key_id).where(
                budgets.c.tenant_id == row.tenant_id,
                or_(budgets.c.key_id.is_(None), budgets.c.key_id == row.id))).all()
        limits = (Limit(f"tenant:{row.tenant_id}", row.t_rpm, row.t_tpm, row.t_max_concurrent),
                  Limit(f"key:{row.id}", row.rpm, row.tpm, row.max_concurrent))
        return Principal(
            tenant_id=row.tenant_id, tenant_name=row.name, key_id=row.id, priority=row.priority,
            quality_floor=row.quality_floor, large_share=row.large_share,
            limits=tuple(lim for lim in limits if (lim.rpm, lim.tpm, lim.max_concurrent) != (None, None, None)),
            tenant_budget=next((_ref(b) for b in refs if b.key_id is None), None),
            key_budget=next((_ref(b) for b in refs if b.key_id is not None), None),
            expires_at=row.expires_at, store_prompts=row.store_prompts,
            allowed_models=None if row.allowed_models is None else tuple(row.allowed_models))


def _ref(row) -> BudgetRef:
    return BudgetRef(row.id, row.period, row.limit_micros, tuple(row.alert_percents))
