"""Databases for billing tests: a fresh SQLite file, and a throwaway schema on the local PostgreSQL.

PostgreSQL and Redis tests skip (never fail) only when the server cannot be reached.
"""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from billing import Billing

PG = "postgresql+psycopg://{user}@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def _pg_admin_url() -> str | None:
    for user in ("postgres", "root"):
        url = PG.format(user=user)
        try:
            with create_engine(url, connect_args={"connect_timeout": 2}).connect() as conn:
                conn.execute(text("select 1"))
            return url
        except Exception:
            continue
    return None


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = _pg_admin_url()
    if url is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (database test) is not reachable")
    return url


@pytest.fixture
def pg_url(pg_admin_url):
    """A URL whose connections see only a schema made for this test, dropped afterwards."""
    schema = f"fm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url)
    with admin.begin() as conn:
        conn.execute(text(f"create schema {schema}"))
    yield f"{pg_admin_url}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"drop schema {schema} cascade"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def billing(db_url):
    b = Billing(db_url)
    b.create_schema()
    b.ensure_admin_defaults()
    yield b
    b.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except Exception:
        pytest.skip("Redis at 127.0.0.1:6379 is not reachable")
    return REDIS

