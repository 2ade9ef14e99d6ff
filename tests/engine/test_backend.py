"""EngineBackend: the Backend protocol over the engine, many concurrent streams batched by one worker thread."""
from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY, generate_latest

from backends.base import GenerationRequest, SamplingParams
from backends.engine import EngineBackend, EngineConfig
from tests.engine.conftest import hf_greedy

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def backend(tiny_model):
    backend = EngineBackend("tiny-test", EngineConfig(str(tiny_model), name="tiny-test", block_size=4, num_kv_blocks=128))
    yield backend
    asyncio.run(backend.stop())


async def collect(backend, request_id, prompt, **params):
    deltas = [d async for d in backend.generate(GenerationRequest(request_id, prompt, SamplingParams(**params)))]
    return deltas


def test_concurrent_streams_batch_together_and_match_hf(backend, hf_model):
    prompts = [[5, 6, 7], list(range(20, 50)), [100] * 9, list(range(3, 70))]
    steps = []
    step = backend.engine.step
    backend.engine.step = lambda: steps.append(1) or step()

    async def main():
        return await asyncio.gather(*(collect(backend, f"c{i}", p, max_tokens=8 + i, **GREEDY) for i, p in enumerate(prompts)))

    try:
        results = asyncio.run(main())
    finally:
        backend.engine.step = step
    assert len(steps) < sum(8 + i for i in range(4)), "requests should share steps"
    for i, (prompt, deltas) in enumerate(zip(prompts, results)):
        tokens = [t for d in deltas for t in d.token_ids]
        assert tokens == hf_greedy(hf_model, prompt, 8 + i)
        assert "".join(d.text for d in deltas) == backend.tokenizer.decode(tokens, skip_special_tokens=True)
        final = deltas[-1]
        assert final.finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])
        assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (len(prompt), 8 + i)


def test_second_turn_reports_cached_prompt_tokens(backend):
    turn1 = list(range(200, 221))

    async def main():
        first = await collect(backend, "t1", turn1, max_tokens=6, **GREEDY)
        answer = [t for d in first for t in d.token_ids]
        return await collect(backend, "t2", turn1 + answer + [7, 8], max_tokens=3, **GREEDY)

    second = asyncio.run(main())
    assert second[-1].usage.cached_tokens == (21 + 6 - 1) // 4 * 4


def test_abort_ends_the_stream_and_frees_the_engine(backend):
    async def main():
        stream = backend.generate(GenerationRequest("ab", [9, 10, 11], SamplingParams(max_tokens=500, **GREEDY)))
        first = await anext(stream)
        await backend.abort("ab")
        rest = [d async for d in stream]
        return first, rest

    first, rest = asyncio.run(main())
    assert first.finish_reason is None and rest[-1].finish_reason == "abort"
    assert rest[-1].usage.completion_tokens < 500
    assert _wait_until(lambda: not backend.engine.has_unfinished())
    assert backend.engine.block_manager.num_free_blocks == 128


def test_a_consumer_that_walks_away_aborts_its_request(backend):
    async def main():
        stream = backend.generate(GenerationRequest("gone", [9, 10, 11], SamplingParams(max_tokens=500, **GREEDY)))
        await anext(stream)
        await stream.aclose()

    asyncio.run(main())
    assert _wait_until(lambda: "gone" not in backend.engine.seqs)


def test_bad_request_is_a_clear_error(backend):
    with pytest.raises(ValueError, match="max_tokens"):
        asyncio.run(collect(backend, "bad", [1, 2], max_tokens=0))
    assert not backend.engine.has_unfinished()


def test_worker_is_idle_without_requests(backend):
    asyncio.run(collect(backend, "warm", [1, 2, 3], max_tokens=2, **GREEDY))
    calls = []
    step = backend.engine.step
    backend.engine.step = lambda: calls.append(1) or step()
    try:
        time.sleep(0.3)
    finally:
        backend.engine.step = step
    assert calls == []


def test_engine_metrics_reach_the_default_registry(backend):
    asyncio.run(collect(backend, "m", list(range(40, 60)), max_tokens=4, **GREEDY))
    text = generate_latest(REGISTRY).decode()
    for name in ("running_requests", "waiting_requests", "kv_cache_usage_ratio", "prefix_cache_queries_total",
                 "prefix_cache_hits_total", "time_to_first_token_seconds_count", "inter_token_latency_seconds_count"):
        assert f'ferryman_engine_{name}{{model="tiny-test"}}' in text, name
    ttft = REGISTRY.get_sample_value("ferryman_engine_time_to_first_token_seconds_count", {"model": "tiny-test"})
    assert ttft >= 1
    assert REGISTRY.get_sample_value("ferryman_engine_prefix_cache_queries_total", {"model": "tiny-test"}) >= 20


def _wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_stop_ends_open_streams_and_start_resumes(tiny_model):
    backend = EngineBackend("tiny-stop", EngineConfig(str(tiny_model), name="tiny-stop", block_size=4, num_kv_blocks=200))

    async def main():
        stream = backend.generate(GenerationRequest("s", [1, 2, 3], SamplingParams(max_tokens=500, **GREEDY)))
        await anext(stream)
        await backend.stop()
        rest = [d async for d in stream]
        again = await collect(backend, "s2", [1, 2, 3], max_tokens=3, **GREEDY)
        await backend.stop()
        return rest, again

    rest, again = asyncio.run(main())
    assert rest[-1].finish_reason == "abort"
    assert again[-1].finish_reason == "length" and again[-1].usage.completion_tokens == 3
