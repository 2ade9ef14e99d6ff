"""`ferryman serve --workers 1` vs `--workers 2` on PostgreSQL + Redis at c32: req/s and server CPU per request
(every process of the server), interleaved rounds. On a 2-core machine the mock upstream and the load generator
share the cores, so read CPU/request: with the load elsewhere, N workers serve up to N cores / (CPU per request).
Run: `flock -x /tmp/team/cpu.lock .venv/bin/python bench/workers_scaling.py 1000`."""
import asyncio, contextlib, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.vs_peers import start_server, ferryman_catalog, load, tree_cpu, wait_listening
from bench.gateway_overhead import fresh_schema, free_port, ledger
PG, REDIS = "postgresql+psycopg://root@127.0.0.1:5432/test", "redis://127.0.0.1:6379/0"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as work:
    up = free_port(); mock = start_server(["--serve-mock", str(up)], up)
    cat = ferryman_catalog(Path(work), up)
    procs = {}
    for w in (1, 2):
        url = stack.enter_context(fresh_schema(PG)); key = ledger(url); port = free_port()
        env = dict(os.environ, FERRYMAN_DATABASE_URL=url, FERRYMAN_REDIS_URL=REDIS, FERRYMAN_REDIS_PREFIX=f"fm-wb-{port}")
        p = subprocess.Popen([str(Path(sys.executable).parent / "ferryman"), "serve", "--port", str(port), "--config", str(cat),
                              "--workers", str(w)], env=env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL)
        wait_listening(p, port); time.sleep(2); procs[w] = (p, port, key)
    for r in range(3):
        for w, (p, port, key) in procs.items():
            c0 = tree_cpu(p.pid); res = asyncio.run(load(port, key, "c32", N)); c1 = tree_cpu(p.pid)
            print(f"round {r} workers {w}: {len(res['latencies'])/res['seconds']:.0f} req/s, "
                  f"{(c1-c0)*1000/res['served']:.2f} ms CPU/req", flush=True)
    for p, _, _ in procs.values(): p.terminate(); p.wait(10)
    mock.terminate()
