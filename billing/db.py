"""The one place engines are made, and the schema migrations (`ferryman db upgrade` calls `upgrade`)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=5, max_overflow=15, pool_pre_ping=True)
    # timeout: wait up to 30 s for another writer (other replicas may share the file). Every use ends its own
    # transaction, so the pool's rollback-on-return would only cost time.
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8, max_overflow=32,
                           pool_reset_on_return=None)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not the driver, open transactions, so that `begin` below decides how.
    dbapi_connection.isolation_level = None
    # WAL with synchronous=NORMAL: a process crash loses nothing; a power cut may lose the last commits, whole
    # (a usage record and its budget update stay together). PostgreSQL is the ledger for stricter needs.
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def _sqlite_begin(connection) -> None:
    # Take the write lock up front: a deferred transaction that reads then writes can fail with
    # SQLITE_BUSY when another process wrote in between, instead of waiting its turn.
    connection.connection.driver_connection.execute("BEGIN IMMEDIATE")


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with make_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Prepared:
    """A Core statement compiled once for one dialect and run on the driver's own cursor.

    The money path runs a handful of fixed statements per request; this skips SQLAlchemy's per-call work
    (cache key, parameter and result processing), which was two thirds of its cost. Bind processors still
    apply, so values reach the database exactly as SQLAlchemy would send them."""

    def __init__(self, statement, dialect, columns: list[str] | None = None):
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        self.sql = compiled.string
        self.names = list(compiled.positiontup) if dialect.positional else None
        self.processors = {name: process for name, bind in compiled.binds.items()
                           if (process := bind.type.dialect_impl(dialect).bind_processor(dialect))}
        self.literals = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}

    def __call__(self, cursor, **values):
        values = {**self.literals, **values}
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        cursor.execute(self.sql, values if self.names is None else [values[n] for n in self.names])
        return cursor
