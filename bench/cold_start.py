"""Scale-to-zero's price: the first request after an unload waits for the model to load.

Loads each bundled model through `ScaleToZero` several times (unload in between) and compares the first
request's latency (cold) with the next one's (warm), in the same run. Rounds interleave: each round loads
every model once, in turn; figures are the median (min-max) over rounds.

    .venv/bin/python bench/cold_start.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import GenerationRequest, SamplingParams  # noqa: E402
from backends.engine import EngineBackend, EngineConfig  # noqa: E402
from backends.idle import ScaleToZero  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("small", "large")


async def timed(backend, request_id: str) -> float:
    started = time.perf_counter()
    request = GenerationRequest(request_id, [1, 3, 100, 200, 4], SamplingParams(max_tokens=8, temperature=0))
    async for _ in backend.generate(request):
        pass
    return time.perf_counter() - started


def scale_to_zero(name: str) -> ScaleToZero:
    path = ROOT / "models" / name
    return ScaleToZero(name, lambda: EngineBackend(name, EngineConfig(model=str(path), kv_cache_memory_gb=0.25)),
                       idle_s=3600)


async def main(rounds: int) -> None:
    backends = {name: scale_to_zero(name) for name in MODELS}
    cold, warm = {name: [] for name in MODELS}, {name: [] for name in MODELS}
    for name, backend in backends.items():
        await backend.start()
        # uncounted: a process's first load pays one-time setup (about 2 s here) that a load after an unload does not
        await timed(backend, f"{name}-first")
        await backend._unload()
        backend.cold_starts.clear()
    for i in range(rounds):
        for name, backend in backends.items():
            cold[name].append(await timed(backend, f"{name}-cold-{i}"))
            warm[name].append(await timed(backend, f"{name}-warm-{i}"))
            await backend._unload()  # what the idle reaper does after idle_s
            print(f"round {i + 1}/{rounds} {name}: cold {cold[name][-1]:.2f}s warm {warm[name][-1] * 1000:.0f}ms",
                  flush=True)
    for backend in backends.values():
        await backend.stop()
    rows = [[name, spread(cold[name], 2), spread(backend.cold_starts, 2), spread([w * 1000 for w in warm[name]], 1),
             spread([c / w for c, w in zip(cold[name], warm[name])], 1)]  # the ratio within each round
            for name, backend in backends.items()]
    headers = ["model", "first request after unload s", "of which load s", "warm request ms", "cold / warm"]
    text = table(headers, rows)
    print(text)
    body = (f"Median (min-max) of {rounds} interleaved rounds (each round loads every model once, in turn, and unloads "
            "it after a cold and a warm request); cold / warm is taken within each round. Before the rounds each model "
            "is loaded and unloaded once, uncounted: a process's first load also pays one-time setup that a load after "
            "an unload does not. Each request is a 5-token prompt and 8 greedy tokens. `FERRYMAN_IDLE_UNLOAD_S` sets "
            "how long a model may sit idle before it is unloaded.\n\n" + text)
    write_section("cold_start", "Scale-to-zero: cold start vs warm request",
                  f"python bench/cold_start.py --rounds {rounds}", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are median (min-max)")
    asyncio.run(main(ap.parse_args().rounds))
