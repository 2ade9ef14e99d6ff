import asyncio

import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.echo import EchoBackend
from backends.idle import ScaleToZero

pytestmark = pytest.mark.slow


async def _answer(backend, request_id: str) -> list[int]:
    request = GenerationRequest(request_id, [5, 6, 7], SamplingParams(max_tokens=3))
    return [t for d in [d async for d in backend.generate(request)] for t in d.token_ids]


def test_loads_on_first_request_and_unloads_when_idle():
    loads = []

    def load():
        loads.append(EchoBackend("m"))
        return loads[-1]

    async def scenario():
        backend = ScaleToZero("m", load, idle_s=0.2)
        await backend.start()
        assert backend.backend is None
        assert loads == []  # nothing loaded before the first request
        assert await _answer(backend, "a") == [5, 6, 7]
        assert await _answer(backend, "b") == [5, 6, 7]
        assert len(loads) == 1
        assert backend.backend is not None
        await asyncio.sleep(0.6)
        assert backend.backend is None  # unloaded after sitting idle
        assert await _answer(backend, "c") == [5, 6, 7]
        assert len(loads) == 2
        assert len(backend.cold_starts) == 2
        await backend.stop()

    asyncio.run(scenario())


def test_never_unloads_while_a_stream_is_open():
    stopped = []

    def load():
        echo = EchoBackend("m", delay_s=0.05)

        async def stop():
            stopped.append(True)
        echo.stop = stop
        return echo

    async def scenario():
        backend = ScaleToZero("m", load, idle_s=0.05)
        await backend.start()
        request = GenerationRequest("slow", [1], SamplingParams(max_tokens=12))
        deltas = [d async for d in backend.generate(request)]  # 0.6 s, many idle periods long
        assert len(deltas) == 12
        assert deltas[-1].finish_reason == "length"
        assert stopped == []
        await asyncio.sleep(0.3)
        assert stopped == [True]  # and once idle, it does unload
        await backend.stop()

    asyncio.run(scenario())
