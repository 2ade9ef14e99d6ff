"""Scale-to-zero: a backend that is loaded on its first request and unloaded after it sits idle.

An idle model holds memory (weights and KV cache) that other models could use; the price is a cold start on
the next request, which we measure (ferryman_cold_start_seconds) so operators can pick the idle time.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import AsyncIterator, Callable

from prometheus_client import Gauge, Histogram

from backends.base import Backend, GenerationRequest, TokenDelta

log = logging.getLogger("ferryman.idle")
LOADED = Gauge("ferryman_model_loaded", "1 while the model is loaded", ["model"])
COLD_START = Histogram("ferryman_cold_start_seconds", "Load time paid by the first request after an unload",
                       ["model"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))


class ScaleToZero:
    def __init__(self, name: str, load: Callable[[], Backend], idle_s: float):
        self.name, self.load, self.idle_s = name, load, idle_s
        self.backend: Backend | None = None
        self.active = 0
        self.last_used = time.monotonic()
        self.cold_starts: list[float] = []
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await self._unload()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self.active += 1
        try:
            backend = await self._ensure_loaded()
            async for delta in backend.generate(request):
                yield delta
        finally:
            self.active -= 1
            self.last_used = time.monotonic()

    async def abort(self, request_id: str) -> None:
        if self.backend is not None:
            await self.backend.abort(request_id)

    async def _ensure_loaded(self) -> Backend:
        async with self._lock:
            if self.backend is None:
                started = time.perf_counter()
                backend = await asyncio.to_thread(self.load)
                await backend.start()
                self.backend = backend
                self.cold_starts.append(time.perf_counter() - started)
                COLD_START.labels(self.name).observe(self.cold_starts[-1])
                LOADED.labels(self.name).set(1)
                log.info("%s loaded in %.2fs", self.name, self.cold_starts[-1])
            return self.backend

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.idle_s / 4))
            if self.active == 0 and time.monotonic() - self.last_used >= self.idle_s:
                await self._unload()

    async def _unload(self) -> None:
        async with self._lock:
            if self.backend is not None and self.active == 0:
                await self.backend.stop()
                self.backend = None
                gc.collect()  # drop the weights and KV cache now, not at some later collection
                LOADED.labels(self.name).set(0)
                log.info("%s unloaded after %.0fs idle", self.name, self.idle_s)
