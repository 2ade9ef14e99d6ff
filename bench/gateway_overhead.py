"""What the gateway adds to a request: latency and throughput through the whole gateway (auth, rate limits,
budget reservation, routing, settlement, usage record) against a fake instant backend, versus that backend
served directly.

Three servers, each its own process, all answering the same OpenAI /v1/completions body:
  direct    the fake backend (an echo, no model) as an OpenAI-compatible replica server
  gateway   the gateway with the echo in-process: the same HTTP stack plus everything the gateway does
  gateway→  the gateway forwarding to the `direct` replica over HTTP: the deployment with remote engines
Added latency at a percentile = that percentile through a gateway minus the same percentile direct, in the same round.
The servers start once; each of --rounds interleaved rounds runs the load against every path at each concurrency,
in turn, and every speed is shown as the median (min-max) over rounds.

    .venv/bin/python bench/gateway_overhead.py [--rounds 3]   # writes its section of docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import spread, table, write_section  # noqa: E402

PROMPT = list(range(100, 164))  # 64 token ids
MODEL = "auto"  # the router scores every request
MAX_TOKENS = 16


# --- the servers (run as subprocesses of this script) --------------------------------------------

def serve_replica(port: int) -> None:
    import uvicorn

    from backends.echo import EchoBackend
    from backends.server import create_replica_app

    uvicorn.run(create_replica_app(EchoBackend("echo")), host="127.0.0.1", port=port, log_level="warning")


def serve_gateway(port: int, database_url: str, upstream: str | None) -> None:
    import uvicorn

    from backends.echo import EchoBackend
    from gateway.app import create_app
    from gateway.config import Settings

    settings = Settings(database_url=database_url)
    names = ("ferryman-small", "ferryman-large")  # the embedded catalog's pair
    if upstream:
        from backends.remote import RemoteBackend

        backends = {n: RemoteBackend(n, [upstream]) for n in names}
    else:
        backends = {n: EchoBackend(n) for n in names}
    uvicorn.run(create_app(settings, backends=backends, router=router()), host="127.0.0.1", port=port,
                log_level="warning")


def router():
    """The bundled difficulty router: requests say `model: auto`, so every one is scored."""
    from classifier import Router

    return Router.load()


def ledger(database_url: str) -> str:
    """A tenant with a budget and rate limits, so every admission check runs; returns its API key."""
    from billing import Billing

    billing = Billing(database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    tenant = billing.create_tenant(f"bench-{time.time_ns()}", rpm=10_000_000, tpm=1_000_000_000, max_concurrent=10_000)
    key, _ = billing.create_key(tenant["id"], "bench", rpm=10_000_000)
    billing.set_budget(tenant["id"], limit_micros=1_000_000_000_000, period="monthly")
    billing.close()
    return key


@contextlib.contextmanager
def fresh_schema(url: str):
    """A schema of its own in that PostgreSQL database, dropped afterwards: yields a URL that uses only it."""
    from sqlalchemy import create_engine, text

    schema, admin = f"ferryman_bench_{time.time_ns()}", create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"create schema {schema}"))
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"drop schema {schema} cascade"))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--port", str(port)], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server {args} exited with {proc.returncode}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server {args} did not start")


# --- the load: a minimal keep-alive HTTP/1.1 client, so the client is not what gets measured --------

async def worker(port: int, request: bytes, n: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - t0)
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}: {body[:300].decode(errors='replace')}")
    writer.close()


def warmups(concurrency: int, n: int) -> int:
    """Requests each connection sends before the measured ones."""
    return max(5, n // (10 * concurrency))


async def load(port: int, key: str, concurrency: int, n: int) -> tuple[list[float], float]:
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    await asyncio.gather(*[worker(port, request, warmups(concurrency, n), []) for _ in range(concurrency)])
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(port, request, n // concurrency, latencies) for _ in range(concurrency)])
    return latencies, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: throughput per core, which other load on the machine cannot skew."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


# --- the measurement ---------------------------------------------------------------------------

def main(n1: int, n32: int, postgres: str | None, rounds: int) -> None:
    from tqdm import tqdm

    work = Path(tempfile.mkdtemp(prefix="ferryman-bench-"))
    database_url = f"sqlite:///{work / 'ledger.db'}"
    key = ledger(database_url)
    loads = {1: n1, 32: n32}
    targets = {}
    runs = {}  # (path, concurrency) -> one (latencies, elapsed s, server CPU s) per round
    with contextlib.ExitStack() as stack:  # the schema is dropped after the servers stop
        try:
            targets["direct"] = (*start(["--serve-replica"]), key)
            targets["gateway"] = (*start(["--serve-gateway", "--database-url", database_url]), key)
            targets["gateway→"] = (*start(["--serve-gateway", "--database-url", database_url,
                                           "--upstream", f"http://127.0.0.1:{targets['direct'][1]}"]), key)
            if postgres:  # the multi-replica ledger: every reserve and settle is a network round trip and a commit
                pg_url = stack.enter_context(fresh_schema(postgres))
                targets["gateway, PostgreSQL"] = (*start(["--serve-gateway", "--database-url", pg_url]), ledger(pg_url))
            with tqdm(total=rounds * len(loads) * len(targets), desc="gateway overhead") as progress:
                for _ in range(rounds):
                    for concurrency, n in loads.items():
                        for name, (proc, port, api_key) in targets.items():
                            before = cpu_seconds(proc.pid)
                            latencies, elapsed = asyncio.run(load(port, api_key, concurrency, n))
                            runs.setdefault((name, concurrency), []).append(
                                (latencies, elapsed, cpu_seconds(proc.pid) - before))
                            progress.update()
        finally:
            for proc, _, _ in targets.values():
                proc.terminate()
                proc.wait(10)
    records = _records(database_url)

    rows = []
    for concurrency, n in loads.items():
        base = [lat for lat, _, _ in runs["direct", concurrency]]
        for name in targets:
            lat, elapsed, cpu = zip(*runs[name, concurrency])
            # Warm-up requests ran inside the CPU window too: count them.
            cpu_ms = [c / (len(x) + concurrency * warmups(concurrency, n)) * 1000 for x, c in zip(lat, cpu)]
            added = ["-"] * 3 if name == "direct" else [
                spread([pct(x, q) - pct(b, q) for x, b in zip(lat, base)]) for q in (50, 95, 99)]
            rows.append([name, concurrency, len(lat[0]), spread([pct(x, 50) for x in lat]),
                         spread([pct(x, 99) for x in lat]), *added,
                         spread([len(x) / e for x, e in zip(lat, elapsed)], 0), spread(cpu_ms),
                         spread([1000 / c for c in cpu_ms], 0)])
    headers = ["path", "concurrency", "requests per round", "p50 ms", "p99 ms", "added p50 ms", "added p95 ms",
               "added p99 ms", "requests/s", "server CPU ms/request", "requests/s per core"]
    body = table(headers, rows)
    print(body)
    measured = sum(len(x) for name in ("gateway", "gateway→") for c in loads for x, _, _ in runs[name, c])
    notes = (f"\nMedian (min-max) of {rounds} interleaved rounds: the servers start once, and each round runs the load "
             f"against every path at concurrency 1, then at 32, in turn; added latency is taken against `direct` "
             f"in the same round. "
             f"One tenant with a budget, a key, and rate limits on both (so every admission check runs); "
             f"SQLite ledger (WAL); non-streaming /v1/completions, {len(PROMPT)} prompt token ids, "
             f"max_tokens {MAX_TOKENS}, model `{MODEL}` (the bundled router scored each request). "
             f"Every gateway request on the SQLite ledger wrote its usage record: {records} records for "
             f"{measured} measured requests over all rounds (plus warm-up). Each server is its own process; the load "
             f"generator is a keep-alive HTTP/1.1 client in a third. `requests/s` is wall-clock and suffers from "
             f"whatever else runs on the machine (load average {os.getloadavg()[0]:.1f} at the end of this run); `requests/s per core` "
             f"divides by the serving process's own CPU time (one process, one event loop, so one core). "
             f"For `gateway→` that is the gateway process only; the replica behind it spends the `direct` row's "
             f"CPU again. At concurrency 32 every server runs flat out, so its latency is mostly queueing "
             f"(about 32 / requests/s) and the added figures there measure lost throughput, not per-request work. "
             f"Against the incumbent open-source gateway, measured side by side in one run: see the `vs_peers` section "
             f"(`bench/vs_peers.py`).\n")
    if postgres:
        notes += ("\n`gateway, PostgreSQL`: the same gateway on a local PostgreSQL ledger (the scaled-out "
                  "configuration). Each request reserves and settles in its own transactions, two commits that wait "
                  "for the disk; the gateway runs them in worker threads so the event loop serves other requests "
                  "meanwhile.\n")
    command = (f"python bench/gateway_overhead.py --rounds {rounds} --requests-c1 {n1} --requests-c32 {n32}"
               + (f" --postgres {postgres}" if postgres else ""))
    write_section("gateway_overhead", "Gateway overhead: auth, limits, reservation, routing, settle, record",
                  command, body + "\n" + notes)


def _records(database_url: str) -> int:
    from billing import Billing

    billing = Billing(database_url)
    count = billing.report(("tenant",))[0]["requests"]
    billing.close()
    return count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are median (min-max)")
    parser.add_argument("--requests-c1", type=int, default=2000)
    parser.add_argument("--requests-c32", type=int, default=6400)
    parser.add_argument("--postgres", help="also measure the gateway on a PostgreSQL ledger: a database URL; the bench "
                        "makes (and drops) a schema of its own there")
    parser.add_argument("--serve-replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_replica:
        serve_replica(args.port)
    elif args.serve_gateway:
        serve_gateway(args.port, args.database_url, args.upstream)
    else:
        main(args.requests_c1, args.requests_c32, args.postgres, args.rounds)
