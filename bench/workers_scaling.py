"""`ferryman serve --workers 1` vs `--workers 2` on PostgreSQL + Redis (the multi-process configuration), c32.

Both servers get the same catalog (one `kind: openai` model on bench/vs_peers.py's mock upstream), a schema
of their own and a tenant with budget and limits; rounds interleave. Reported: req/s and server CPU per request
(every process of the server), median and min-max over rounds, and the per-round req/s ratio.

How "the load generator runs elsewhere" is had on 2 cores: each worker process is put in a cgroup of its own,
capped at --cpu-per-worker cores (default 0.5: every worker gets half a core to itself, whether there are one or
two), so the rest of the machine is left to the load (wrk, written in C, a fraction of a Python generator's CPU),
the mock upstream, Redis and PostgreSQL. Perfect scaling is then 2.0x; what keeps it lower is what the workers
share (Redis, PostgreSQL, the listening socket). Without a writable cgroup cpu controller or without wrk
(Debian's package `wrk`) the bench says so and measures uncapped or with the Python load generator.

    .venv/bin/python bench/workers_scaling.py --postgres postgresql+psycopg://root@127.0.0.1:5432/test \
        --redis redis://127.0.0.1:6379/0 [--rounds 3] [--seconds 10] [--cpu-per-worker 0.5]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import free_port, fresh_schema, ledger  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402
from bench.vs_peers import ferryman_catalog, load, start_server, tree_cpu, wait_listening  # noqa: E402

WORKERS = (1, 2)
PERIOD_US = 20_000  # a short CFS period: a capped worker is throttled in small slices, not 100 ms stalls


def serve(workers: int, database_url: str, redis_url: str, catalog: Path) -> tuple[subprocess.Popen, int, str]:
    port, key = free_port(), ledger(database_url)
    env = dict(os.environ, FERRYMAN_DATABASE_URL=database_url, FERRYMAN_REDIS_URL=redis_url,
               FERRYMAN_REDIS_PREFIX=f"fm-workers-bench-{port}")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ferryman"), "serve", "--port", str(port), "--config",
                             str(catalog), "--workers", str(workers)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_listening(proc, port)
    return proc, port, key


def worker_pids(proc: subprocess.Popen, workers: int) -> list[int]:
    """The processes that serve: the server itself for one worker, else its children (the supervisor's workers)."""
    if workers == 1:
        return [proc.pid]
    for _ in range(100):
        children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        if len(children) >= workers:
            return children
        time.sleep(0.1)
    raise RuntimeError(f"expected {workers} worker processes under {proc.pid}")


def cgroup_root() -> tuple[Path, str] | None:
    """Where CPU caps can be made (cgroup v2 or v1), or None."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "cpu" in v2.read_text().split():
        return Path("/sys/fs/cgroup"), "v2"
    v1 = Path("/sys/fs/cgroup/cpu")
    return (v1, "v1") if (v1 / "cgroup.procs").exists() else None


def cap(pid: int, cores: float, name: str, root: tuple[Path, str]) -> Path:
    base, version = root
    group = base / name
    group.mkdir(exist_ok=True)
    quota = int(cores * PERIOD_US)
    if version == "v2":
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    (group / "cgroup.procs").write_text(str(pid))
    return group


def capped(servers: dict, cores: float) -> list[Path]:
    """Each worker of each server in a cgroup of its own, capped at `cores`; the groups made (empty: no caps)."""
    root = cgroup_root()
    if root is None:
        return []
    groups = []
    try:
        for w, (proc, port, _) in servers.items():
            for i, pid in enumerate(worker_pids(proc, w)):
                groups.append(cap(pid, cores, f"ferryman-bench-{port}-{i}", root))
    except OSError as exc:
        print(f"cannot cap workers' CPU ({exc}): measuring uncapped", flush=True)
    return groups


def wrk_load(port: int, key: str, seconds: float, work: Path) -> dict:
    script = work / "chat.lua"
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "Say something short."}],
                       "max_tokens": 16})
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{round(seconds)}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True, check=True)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if failed or "Socket errors" in out.stdout:
        raise RuntimeError(f"wrk saw failures on {port}:\n{out.stdout}")
    served = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1)), "served": served}


def python_load(port: int, key: str, seconds: float, work: Path) -> dict:
    result = asyncio.run(load(port, key, "c32", int(seconds * 500)))
    return {"rps": len(result["latencies"]) / result["seconds"], "served": result["served"]}


def measure(args: argparse.Namespace) -> tuple[dict, bool, str]:
    """(workers, round) -> (req/s, server CPU ms per request); whether workers were capped; the load generator."""
    from tqdm import tqdm

    generator = wrk_load if shutil.which("wrk") else python_load
    if generator is python_load:
        print("wrk not found (apt-get install wrk): the Python load generator shares the cores", flush=True)
    results, groups = {}, []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        upstream = free_port()
        procs = [start_server(["--serve-mock", str(upstream)], upstream)]
        catalog = ferryman_catalog(Path(work), upstream)
        servers = {}
        try:
            for w in WORKERS:
                servers[w] = serve(w, stack.enter_context(fresh_schema(args.postgres)), args.redis, catalog)
                procs.append(servers[w][0])
            groups = capped(servers, args.cpu_per_worker) if args.cpu_per_worker else []
            for w, (proc, port, key) in servers.items():  # warm: caches, connections, the first period's rows
                generator(port, key, 2, Path(work))
            with tqdm(total=args.rounds * len(WORKERS), desc="rounds") as progress:
                for r in range(args.rounds):
                    for w, (proc, port, key) in servers.items():
                        before = tree_cpu(proc.pid)
                        result = generator(port, key, args.seconds, Path(work))
                        cpu_ms = (tree_cpu(proc.pid) - before) * 1000 / result["served"]
                        results[w, r] = (result["rps"], cpu_ms)
                        progress.update()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            for group in groups:
                with contextlib.suppress(OSError):
                    group.rmdir()
    return results, bool(groups), "wrk" if generator is wrk_load else "Python"


def report(args: argparse.Namespace, results: dict, was_capped: bool, generator: str) -> None:
    rounds = range(args.rounds)
    rows = [[w, spread([results[w, r][0] for r in rounds], 0), spread([results[w, r][1] for r in rounds])]
            for w in WORKERS]
    ratios = [results[2, r][0] / results[1, r][0] for r in rounds]
    setting = (f"each worker capped at {args.cpu_per_worker:g} core, load from {generator}" if was_capped
               else f"workers uncapped, sharing the cores with the load ({generator})")
    body = "\n".join([
        table(["workers", "req/s", "server CPU ms/req"], rows), "",
        table(["ratio (within each round)", "median (min-max)", "target"],
              [[f"2 workers / 1 worker req/s, c32, {setting}", spread(ratios), ">= 1.6"]]),
        "", f"Load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}."])
    print(body)
    command = (f"bench/workers_scaling.py --postgres {args.postgres} --redis {args.redis} --rounds {args.rounds} "
               f"--seconds {args.seconds:g} --cpu-per-worker {args.cpu_per_worker:g}")
    write_section("workers_scaling", "Gateway processes: `serve --workers 2` vs 1 on PostgreSQL + Redis", command,
                  "\n\n".join(__doc__.split("\n\n")[1:3]) + "\n\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", required=True, help="a database URL (the bench makes and drops its schemas)")
    parser.add_argument("--redis", required=True, help="a Redis URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="load per server and round")
    parser.add_argument("--cpu-per-worker", type=float, default=0.5,
                        help="each worker's CPU cap in cores (0: uncapped, sharing the cores with the load)")
    args = parser.parse_args()
    report(args, *measure(args))


if __name__ == "__main__":
    main()
