"""Markers by what a test needs (registered in pyproject.toml): `postgres`, `redis` and `browser` follow from the
fixtures a test uses, so no test has to say so itself; `slow` and `cuda` are set where the tests are."""
from __future__ import annotations

NEEDS = {"pg_url": "postgres", "pg_admin_url": "postgres", "pg_schema": "postgres", "redis_url": "redis",
         "redis_port": "redis", "own_redis": "redis", "browser": "browser", "page": "browser"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        for marker in {NEEDS[name] for name in item.fixturenames if name in NEEDS}:
            item.add_marker(marker)
        params = getattr(item, "callspec", None)
        if params is not None and params.params.get("db_url") == "postgresql":  # billing's db_url fixture
            item.add_marker("postgres")
