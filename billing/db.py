"""The one place engines are made, and the schema migrations (`ferryman db upgrade` calls `upgrade`)."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger("ferryman.billing")


@dataclass(frozen=True)
class Deadlines:
    """How long a networked database may take (FERRYMAN_DB_* settings). The server-side timeouts cannot catch a
    stalled network path (packets accepted, nothing answered): `use_s` is the client's own deadline on each use of a
    connection, past which the watchdog cuts its socket, the call fails, and the database rolls the transaction back."""

    connect_s: float = 3.0  # libpq connect_timeout: TCP connect, TLS and authentication together
    statement_s: float = 5.0  # server-side statement_timeout (and idle_in_transaction_session_timeout)
    checkout_s: float = 3.0  # waiting for a pooled connection when all are in use
    use_s: float = 8.0  # client-side: a connection held (pinged, checked out) longer than this is cut


def make_engine(url: str, deadlines: Deadlines = Deadlines()) -> Engine:
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_size=5, max_overflow=15, pool_pre_ping=True, pool_timeout=deadlines.checkout_s,
                               connect_args={"connect_timeout": max(2, round(deadlines.connect_s))})
        _watch(engine, deadlines)
        return engine
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


def _watch(engine: Engine, d: Deadlines) -> None:
    ms = round(d.statement_s * 1000)

    @event.listens_for(engine, "connect")
    def server_timeouts(dbapi_connection, _record):
        with dbapi_connection.cursor() as cursor:  # a stalled statement or transaction ends server-side too
            cursor.execute(f"SET statement_timeout = {ms}")
            cursor.execute(f"SET idle_in_transaction_session_timeout = {ms}")
        dbapi_connection.commit()

    ping = engine.dialect.do_ping

    def watched_ping(dbapi_connection):  # the pool's pre-ping runs before the checkout event: watch it too
        WATCHDOG.watch(dbapi_connection, d.use_s)
        return ping(dbapi_connection)

    engine.dialect.do_ping = watched_ping
    event.listen(engine, "checkout", lambda conn, _record, _proxy: WATCHDOG.watch(conn, d.use_s))
    event.listen(engine, "checkin", lambda conn, _record: WATCHDOG.unwatch(conn))


class Watchdog:
    """One thread for the process: cuts the socket of a connection used past its deadline. The blocked call then
    fails at once (OperationalError: a 503, never a hang) and the server, seeing the connection gone, rolls back."""

    def __init__(self):
        self.due: dict[int, tuple[float, object]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, conn, seconds: float) -> None:
        self.due[id(conn)] = (time.monotonic() + seconds, conn)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                    self._thread.start()

    def unwatch(self, conn) -> None:
        self.due.pop(id(conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            for key, (due, conn) in list(self.due.items()):
                if now >= due and self.due.get(key, (0, None))[1] is conn:
                    self.due.pop(key, None)
                    cut(conn)


def cut(conn) -> None:
    """Shut a psycopg connection's socket down under the thread blocked on it."""
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
        log.warning("database connection cut: no answer within its deadline (stalled network or server)")
    except Exception:  # already closed: nothing to cut
        pass


WATCHDOG = Watchdog()


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
        self.processors = {name: process for name, bind in compiled.binds.items()
                           if (process := bind.type.dialect_impl(dialect).bind_processor(dialect))}
        self.literals = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
        # Positional drivers (sqlite3): each place's name and processor, so a call builds its list in one pass.
        self.places = ([(name, self.processors.get(name)) for name in compiled.positiontup] if dialect.positional
                       else None)

    def __call__(self, cursor, **values):
        if self.literals:
            values = {**self.literals, **values}
        if self.places is not None:
            cursor.execute(self.sql, [values[name] if process is None else process(values[name])
                                      for name, process in self.places])
            return cursor
        for name, process in self.processors.items():
            if name in values:
                values[name] = process(values[name])
        cursor.execute(self.sql, values)
        return cursor
