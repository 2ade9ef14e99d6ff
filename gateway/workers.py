"""`ferryman serve --workers N`: N gateway processes behind one port (the kernel spreads connections over the
workers), each a draining server as one process is (gateway/drain.py): SIGTERM drains every worker. What lives
in each process, and why the whole stays correct:

- the ledger is shared (the SQLite file in WAL mode, or PostgreSQL): a budget reservation is one atomic
  statement in the database, so N processes never spend past a budget, as N gateway replicas do not;
- rate and concurrency limits live in Redis when FERRYMAN_REDIS_URL is set; in-process limits would each allow
  the full rate, N times too much, so N > 1 without Redis is refused;
- an in-process engine (`kind: engine`) would be loaded once per worker, N copies of the weights and N engines
  competing for the same cores: refused. Workers fit catalogs of `kind: openai` and `kind: replicas` models
  (run engines as `ferryman engine serve` replicas).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import tempfile
import threading

from gateway.catalog import Catalog, EngineEntry
from gateway.config import Settings
from gateway.drain import serve as serve_draining


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
    """Run `workers` processes until SIGTERM/SIGINT, then let each drain, and return (exit 0). A worker that dies
    is started again. Metrics: each worker writes its samples to files in one directory (prometheus_client's
    multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR when a worker imports it), and any worker's /metrics
    sums them all; a restarted worker's counters keep what the dead one had counted."""
    os.environ["FERRYMAN_DATABASE_URL"] = settings.database_url
    if settings.admin_key:  # else the workers know only the admin keys in the ledger
        os.environ["FERRYMAN_ADMIN_KEY"] = settings.admin_key
    if settings.config:
        os.environ["FERRYMAN_CONFIG"] = str(settings.config)
    with tempfile.TemporaryDirectory(prefix="ferryman-metrics-") as samples, \
            socket.create_server((settings.host, settings.port)) as listener:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = samples
        Supervisor(listener, workers).run()


class Supervisor:
    """Starts the workers on one listening socket; a signal is passed on to each (the first drains it, a second
    stops it at once, as for one process), and the supervisor returns once all have exited."""

    def __init__(self, listener: socket.socket, workers: int):
        self.listener, self.workers = listener, workers
        self.stopping = threading.Event()
        self.processes: list[multiprocessing.Process] = []

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        self.processes = [self.start() for _ in range(self.workers)]
        while not self.stopping.wait(0.5):
            self.processes = [p if p.is_alive() or self.stopping.is_set() else self.start() for p in self.processes]
        for p in self.processes:
            p.join()

    def start(self) -> multiprocessing.Process:
        # spawn, not fork: a worker must not inherit the supervisor's threads or locks.
        process = multiprocessing.get_context("spawn").Process(target=worker, args=(self.listener,))
        process.start()
        return process

    def on_signal(self, sig, frame) -> None:
        self.stopping.set()
        for p in self.processes:
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, sig)


def worker(listener: socket.socket) -> None:
    """One worker process: the gateway built from the environment, served on the supervisor's socket."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor alone, which passes it on once (not twice)
    gateway = app()
    serve_draining(gateway, gateway.state.settings.host, gateway.state.settings.port, sockets=[listener])


def app():
    """One worker's app, built from the environment (FERRYMAN_*), which serve() fills from the command line."""
    from gateway import catalog, logs
    from gateway.app import create_app

    settings = Settings()
    logs.setup(settings.log_format, settings.log_level)  # a spawned worker starts with no logging set up
    return create_app(settings, catalog=catalog.from_settings(settings))
