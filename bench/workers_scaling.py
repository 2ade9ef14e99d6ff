"""`ferryman serve --workers 1` vs `--workers 2` on PostgreSQL + Redis (the multi-process configuration), c32.

Both servers get the same catalog (one `kind: openai` model on bench/vs_peers.py's mock upstream), a schema
of their own and a tenant with budget and limits; rounds interleave. Reported: req/s and server CPU per request
(every process of the server), median and min-max over rounds, and the per-round req/s ratio.

On a 2-core machine the mock upstream and the load generator share the cores with the gateway, so the
measured ratio understates what a second core gives a gateway whose load comes from elsewhere; the CPU per
request says what it would be: N workers on N free cores serve up to N / (CPU per request).

    .venv/bin/python bench/workers_scaling.py --postgres postgresql+psycopg://root@127.0.0.1:5432/test \
        --redis redis://127.0.0.1:6379/0 [--rounds 3] [--requests 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import free_port, fresh_schema, ledger  # noqa: E402
from bench.report import table, write_section  # noqa: E402
from bench.vs_peers import ferryman_catalog, load, start_server, tree_cpu, wait_listening  # noqa: E402

WORKERS = (1, 2)


def serve(workers: int, database_url: str, redis_url: str, catalog: Path) -> tuple[subprocess.Popen, int, str]:
    port, key = free_port(), ledger(database_url)
    env = dict(os.environ, FERRYMAN_DATABASE_URL=database_url, FERRYMAN_REDIS_URL=redis_url,
               FERRYMAN_REDIS_PREFIX=f"fm-workers-bench-{port}")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ferryman"), "serve", "--port", str(port), "--config",
                             str(catalog), "--workers", str(workers)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_listening(proc, port)
    return proc, port, key


def measure(args: argparse.Namespace) -> dict[tuple[int, int], tuple[float, float]]:
    """(workers, round) -> (req/s, server CPU ms per request)."""
    from tqdm import tqdm

    results = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        upstream = free_port()
        procs = [start_server(["--serve-mock", str(upstream)], upstream)]
        catalog = ferryman_catalog(Path(work), upstream)
        servers = {}
        try:
            for w in WORKERS:
                servers[w] = serve(w, stack.enter_context(fresh_schema(args.postgres)), args.redis, catalog)
                procs.append(servers[w][0])
            with tqdm(total=args.rounds * len(WORKERS), desc="rounds") as progress:
                for r in range(args.rounds):
                    for w, (proc, port, key) in servers.items():
                        before = tree_cpu(proc.pid)
                        result = asyncio.run(load(port, key, "c32", args.requests))
                        cpu_ms = (tree_cpu(proc.pid) - before) * 1000 / result["served"]
                        results[w, r] = (len(result["latencies"]) / result["seconds"], cpu_ms)
                        progress.update()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
    return results


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(args: argparse.Namespace, results: dict) -> None:
    rounds = range(args.rounds)
    rows = [[w, spread([results[w, r][0] for r in rounds], 0), spread([results[w, r][1] for r in rounds])]
            for w in WORKERS]
    ratios = [results[2, r][0] / results[1, r][0] for r in rounds]
    cpu = statistics.median(results[2, r][1] for r in rounds)
    body = "\n".join([
        table(["workers", "req/s", "server CPU ms/req"], rows), "",
        table(["ratio (within each round)", "median (min-max)", "target"],
              [["2 workers / 1 worker req/s, c32, load generator on the same 2 cores", spread(ratios), ">= 1.6"]]),
        "", f"With the load generator elsewhere, two workers on two free cores would serve up to 2 / {cpu:.2f} ms = "
            f"{2000 / cpu:,.0f} req/s, {2000 / cpu / statistics.median(results[1, r][0] for r in rounds):.2f}x the "
            f"one worker measured here (which already had a core to itself). Load average at the end: "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}."])
    print(body)
    command = (f"bench/workers_scaling.py --postgres {args.postgres} --redis {args.redis} --rounds {args.rounds} "
               f"--requests {args.requests}")
    write_section("workers_scaling", "Gateway processes: `serve --workers 2` vs 1 on PostgreSQL + Redis", command,
                  __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2] + "\n\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", required=True, help="a database URL (the bench makes and drops its schemas)")
    parser.add_argument("--redis", required=True, help="a Redis URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="requests per server and round")
    args = parser.parse_args()
    report(args, measure(args))


if __name__ == "__main__":
    main()
