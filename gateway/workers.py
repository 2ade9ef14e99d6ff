"""`ferryman serve --workers N`: N gateway processes behind one port (uvicorn's supervisor; the kernel spreads
connections over the workers). What lives in each process, and why the whole stays correct:

- the ledger is shared (the SQLite file in WAL mode, or PostgreSQL): a budget reservation is one atomic
  statement in the database, so N processes never spend past a budget, as N gateway replicas do not;
- rate and concurrency limits live in Redis when FERRYMAN_REDIS_URL is set; in-process limits would each allow
  the full rate, N times too much, so N > 1 without Redis is refused;
- an in-process engine (`kind: engine`) would be loaded once per worker, N copies of the weights and N engines
  competing for the same cores: refused. Workers fit catalogs of `kind: openai` and `kind: replicas` models
  (run engines as `ferryman engine serve` replicas).

Each worker builds its app from the environment (FERRYMAN_*), which serve() fills from the command line.
"""
from __future__ import annotations

import os
import tempfile

import uvicorn

from gateway.catalog import Catalog, EngineEntry
from gateway.config import Settings
from gateway.http_limits import GuardedHttp

HEALTHCHECK_TIMEOUT_S = 60


def refusal(settings: Settings, catalog: Catalog, workers: int) -> str | None:
    """Why this configuration cannot run in `workers` processes, or None."""
    if workers <= 1:
        return None
    if engines := [m.name for m in catalog.models if isinstance(m, EngineEntry)]:
        return (f"--workers {workers}: the catalog has in-process engines ({', '.join(engines)}), which every worker "
                "would load again; serve them with `ferryman engine serve` and list them as kind: replicas")
    if not settings.redis_url:
        return (f"--workers {workers}: rate limits would be per process ({workers}x too loose); "
                "set FERRYMAN_REDIS_URL so the workers share them")
    return None


def serve(settings: Settings, workers: int) -> None:
    """Run `workers` processes until SIGTERM/SIGINT; uvicorn's supervisor restarts a worker that dies.
    Metrics: each worker writes its samples to files in one directory (prometheus_client's multiprocess mode,
    chosen by PROMETHEUS_MULTIPROC_DIR when a worker imports it), and any worker's /metrics sums them all; a
    restarted worker's counters keep what the dead one had counted."""
    os.environ["FERRYMAN_DATABASE_URL"] = settings.database_url
    if settings.admin_key:  # else the workers know only the admin keys in the ledger
        os.environ["FERRYMAN_ADMIN_KEY"] = settings.admin_key
    if settings.config:
        os.environ["FERRYMAN_CONFIG"] = str(settings.config)
    with tempfile.TemporaryDirectory(prefix="ferryman-metrics-") as samples:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = samples
        # A worker importing torch on busy cores can leave uvicorn's 5 s health ping unanswered, be killed, and
        # be started again forever: give the ping the time a slow start takes.
        uvicorn.run("gateway.workers:app", factory=True, host=settings.host, port=settings.port, workers=workers,
                    log_level="warning", timeout_graceful_shutdown=int(settings.shutdown_grace_s),
                    http=GuardedHttp, timeout_keep_alive=settings.keep_alive_timeout_s,
                    timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S)


def app():
    """One worker's app (uvicorn calls this in each worker process)."""
    from gateway import catalog, logs
    from gateway.app import create_app

    settings = Settings()
    logs.setup(settings.log_format, settings.log_level)  # a spawned worker starts with no logging set up
    return create_app(settings, catalog=catalog.from_settings(settings))
