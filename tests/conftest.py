"""Markers by what a test needs (registered in pyproject.toml): `postgres`, `redis` and `browser` follow from the
fixtures a test uses, so no test has to say so itself; `slow` and `cuda` are set where the tests are."""
from __future__ import annotations

NEEDS = {"pg_url": "postgres", "pg_admin_url": "postgres", "pg_schema": "postgres", "redis_url": "redis",
         "redis_port": "redis", "own_redis": "redis", "browser": "browser", "page": "browser"}
STORES = {"postgresql": "postgres", "redis": "redis"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        for marker in {NEEDS[name] for name in item.fixturenames if name in NEEDS}:
            item.add_marker(marker)
        # Fixtures that take a store by parameter ("sqlite", "postgresql", "postgresql+redis") and ask for its
        # fixture at run time (billing's db_url, the ledger contract's book)
        params = getattr(item, "callspec", None)
        for value in params.params.values() if params is not None else ():
            stores = set(value.split("+")) if isinstance(value, str) else set()
            for marker in {STORES[s] for s in stores & STORES.keys()}:
                item.add_marker(marker)
