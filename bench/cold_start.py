"""Scale-to-zero's price: the first request after an unload waits for the model to load.

Loads each bundled model through `ScaleToZero` several times (unload in between) and compares the first
request's latency (cold) with the next one's (warm), in the same run.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.base import GenerationRequest, SamplingParams  # noqa: E402
from backends.engine import EngineBackend, EngineConfig  # noqa: E402
from backends.idle import ScaleToZero  # noqa: E402
from bench.report import table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3


async def timed(backend, request_id: str) -> float:
    started = time.perf_counter()
    request = GenerationRequest(request_id, [1, 3, 100, 200, 4], SamplingParams(max_tokens=8, temperature=0))
    async for _ in backend.generate(request):
        pass
    return time.perf_counter() - started


async def measure(name: str) -> list:
    path = ROOT / "models" / name
    backend = ScaleToZero(name, lambda: EngineBackend(name, EngineConfig(model=str(path), kv_cache_memory_gb=0.25)),
                          idle_s=3600)
    await backend.start()
    cold, warm = [], []
    for i in range(ROUNDS):
        cold.append(await timed(backend, f"{name}-cold-{i}"))
        warm.append(await timed(backend, f"{name}-warm-{i}"))
        await backend._unload()  # what the idle reaper does after idle_s
        print(f"{name} round {i + 1}/{ROUNDS}: cold {cold[-1]:.2f}s warm {warm[-1] * 1000:.0f}ms", flush=True)
    await backend.stop()
    load = statistics.median(backend.cold_starts)
    return [name, statistics.median(cold), load, statistics.median(warm) * 1000, statistics.median(cold) / statistics.median(warm)]


async def main() -> None:
    rows = [await measure(name) for name in ("small", "large")]
    headers = ["model", "first request after unload s", "of which load s", "warm request ms", "cold / warm"]
    text = table(headers, rows)
    print(text)
    body = (f"Median of {ROUNDS} rounds; each request is a 5-token prompt and 8 greedy tokens. `FERRYMAN_IDLE_UNLOAD_S` "
            "sets how long a model may sit idle before it is unloaded.\n\n" + text)
    write_section("cold_start", "Scale-to-zero: cold start vs warm request", "python bench/cold_start.py", body)


if __name__ == "__main__":
    asyncio.run(main())
