"""What a wait costs on this machine: the same work runs slower the longer the CPU sat idle before it, and so does
a gateway's share of a request to an upstream that takes that long to answer.

    .venv/bin/python bench/idle_penalty.py [--rounds 3] [--requests 150]

Per upstream idle time (0, 8, 42 ms: an instant mock, LiteLLM's latency, llama-cpp-python's on models/large), in
interleaved rounds:
- a fixed piece of Python work (a JSON round trip of ~20 KB), timed right after sleeping that long (40 times);
- a keep-alive client to a mock upstream that answers after that long idle (bench/vs_peers.py's mock), and the same
  client through Ferryman (SQLite ledger, the mock as a `kind: openai` model): Ferryman's added p50 and its CPU
  per request.
If Ferryman's added time grows with the wait as the fixed work does, it is the machine's penalty on any work after
idling, not something Ferryman does per millisecond waited. A second Ferryman with FERRYMAN_BUSY_POLL=true (its
event loop polls instead of sleeping while a request is in flight, gateway/drain.py) is measured the same way: what
it gains is what keeping the CPU awake through the wait is worth here.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import spread, table, write_section  # noqa: E402
from bench.vs_peers import _pct, load, start_server, tree_cpu  # noqa: E402

IDLE_MS = (0, 8, 42)
DATA = {f"k{i}": [i, str(i), {"a": i}] for i in range(300)}


def work_after(idle_ms: int, times: int = 40) -> float:
    """Median µs of the fixed work, each run right after `idle_ms` of sleep."""
    took = []
    for _ in range(times):
        if idle_ms:
            time.sleep(idle_ms / 1000)
        start = time.perf_counter()
        json.loads(json.dumps(DATA))
        took.append((time.perf_counter() - start) * 1e6)
    return statistics.median(took)


def main() -> None:
    from bench.gateway_overhead import free_port, ledger

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args()
    work, procs, mocks = Path(tempfile.mkdtemp(prefix="ferryman-idle-")), [], {}
    try:
        for idle in IDLE_MS:
            port = free_port()
            procs.append(start_server(["--serve-mock", str(port), str(idle)], port))
            mocks[idle] = port
        catalog = work / "catalog.yaml"
        catalog.write_text("models:\n" + "".join(
            f"  - {{name: idle{idle}, kind: openai, base_url: 'http://127.0.0.1:{port}/v1', upstream_model: mock,"
            f" price: {{input: 0.5, output: 1.5}}}}\n" for idle, port in mocks.items()))
        url, port = f"sqlite:///{work / 'ledger.db'}", free_port()
        key = ledger(url)
        ferryman = start_server(["--serve-ferryman", str(port), url, str(catalog)], port)
        procs.append(ferryman)
        busy_port = free_port()
        procs.append(start_server(["--serve-ferryman", str(busy_port), url, str(catalog)], busy_port,
                                  env={"FERRYMAN_BUSY_POLL": "true"}))
        for idle in IDLE_MS:  # a fresh process's first requests are not what p50 means
            asyncio.run(load(port, key, "c1", 50, f"idle{idle}"))
            asyncio.run(load(busy_port, key, "c1", 50, f"idle{idle}"))
        results: dict = {}
        for r in range(args.rounds):
            for idle in IDLE_MS:
                results["work", idle, r] = work_after(idle)
                direct = _pct(asyncio.run(load(mocks[idle], "none", "c1", args.requests))["latencies"], 50)
                cpu = tree_cpu(ferryman.pid)
                through = asyncio.run(load(port, key, "c1", args.requests, f"idle{idle}"))
                results["cpu", idle, r] = (tree_cpu(ferryman.pid) - cpu) / through["served"] * 1000
                results["added", idle, r] = _pct(through["latencies"], 50) - direct
                spun = asyncio.run(load(busy_port, key, "c1", args.requests, f"idle{idle}"))
                results["busy", idle, r] = _pct(spun["latencies"], 50) - direct
                print(f"round {r + 1}: {idle} ms idle: work {results['work', idle, r]:.0f} us, Ferryman added "
                      f"{results['added', idle, r]:.2f} ms (busy polling: {results['busy', idle, r]:.2f}), "
                      f"CPU {results['cpu', idle, r]:.2f} ms/request", flush=True)
    finally:
        for proc in reversed(procs):  # the gateways before their upstreams: no failed health probe on the way out
            proc.terminate()
            proc.wait()
    report(args, results)


def report(args: argparse.Namespace, results: dict) -> None:
    rounds = range(args.rounds)

    def of(kind: str, idle: int) -> list[float]:
        return [results[kind, idle, r] for r in rounds]

    def ratio(kind: str, idle: int) -> str:
        return spread([results[kind, idle, r] / results[kind, 0, r] for r in rounds])

    rows = [[f"{idle} ms", spread(of("work", idle), 0), ratio("work", idle), spread(of("added", idle)),
             ratio("added", idle), spread(of("busy", idle)), ratio("busy", idle), spread(of("cpu", idle)),
             ratio("cpu", idle)] for idle in IDLE_MS]
    text = table(["idle before the work / the answer", "fixed work µs", "x the work at 0 ms",
                  "Ferryman added p50 ms", "x added at 0 ms", "Ferryman, busy polling: added p50 ms",
                  "x its added at 0 ms", "Ferryman CPU ms per request", "x CPU at 0 ms"], rows)
    print(text)
    body = (f"{text}\n\nMedian (min-max) of {args.rounds} interleaved rounds; {args.requests} requests per p50, "
            "c1, non-streaming; ratios are per round, to the same round's 0 ms figure.")
    write_section("idle-penalty", "What a wait costs: work after idling, and Ferryman in front of slow upstreams",
                  f".venv/bin/python bench/idle_penalty.py --rounds {args.rounds} --requests {args.requests}", body)


if __name__ == "__main__":
    main()
