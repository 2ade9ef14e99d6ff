"""Continuous batching, chunked prefill, prefix caching and preemption: greedy output must equal HF's throughout."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

BASE = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]  # a shared system prompt, 3 blocks of 4


def make_prompts() -> list[list[int]]:
    rng = random.Random(7)
    lengths = [1, 3, 9, 17, 30, 45, 64, 70]
    prompts = [[rng.randrange(3, 380) for _ in range(n)] for n in lengths]
    prompts += [BASE + [rng.randrange(3, 380) for _ in range(n)] for n in (2, 5, 20)]
    return prompts


PROMPTS = make_prompts()
MAX_TOKENS = [20, 7, 16, 3, 12, 25, 9, 14, 18, 11, 6]


@pytest.fixture(scope="module")
def expected(hf_model) -> list[list[int]]:
    return [hf_greedy(hf_model, p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]


def run_staggered(engine: LLMEngine, arrivals: list[int]) -> dict[str, list[int]]:
    """Request i joins at step arrivals[i]; returns each request's generated tokens."""
    outputs: dict[str, list[int]] = defaultdict(list)
    step = 0
    while step <= max(arrivals) or engine.has_unfinished():
        for i, at in enumerate(arrivals):
            if at == step:
                engine.add_request(str(i), PROMPTS[i], SamplingParams(max_tokens=MAX_TOKENS[i], temperature=0, ignore_eos=True))
        for out in engine.step() if engine.has_unfinished() else []:
            outputs[out.request_id] += out.token_ids
        step += 1
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("prefix_caching", [True, False])
@pytest.mark.parametrize("num_kv_blocks", [256, 24], ids=["roomy", "preempting"])
def test_staggered_mixed_batch_matches_hf(tiny_model, expected, prefix_caching, num_kv_blocks):
    engine = LLMEngine(EngineConfig(
        str(tiny_model), block_size=4, num_kv_blocks=num_kv_blocks, max_num_seqs=6,
        max_num_batched_tokens=16, enable_prefix_caching=prefix_caching,
    ))
    arrivals = [0, 0, 1, 2, 2, 3, 5, 8, 9, 9, 14]
    outputs = run_staggered(engine, arrivals)
    assert [outputs[str(i)] for i in range(len(PROMPTS))] == expected
    assert (engine.scheduler.num_preemptions > 0) == (num_kv_blocks == 24)
    assert engine.block_manager.num_free_blocks == num_kv_blocks, "finished sequences must release every block"
    assert (engine.block_manager.prefix_hits > 0) == prefix_caching


def test_long_prefill_never_stalls_running_decodes(tiny_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=128, max_num_batched_tokens=16))
    greedy = dict(temperature=0, ignore_eos=True)
    engine.add_request("short", [5, 6, 7], SamplingParams(max_tokens=40, **greedy))
    engine.step()
    engine.add_request("long", list(range(3, 203)), SamplingParams(max_tokens=2, **greedy))
    steps_until_long = 0
    while (ids := [o.request_id for o in engine.step()]) == ["short"]:  # the decode runs every step
        steps_until_long += 1
    assert ids == ["short", "long"]
    # 15 prompt tokens per step beside the one decode; the step that finishes the prompt emits both tokens.
    assert steps_until_long == 200 // 15


def test_second_turn_reuses_first_turn_blocks(tiny_model, hf_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=128))
    greedy = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    turn1 = BASE + [40, 41, 42, 43, 44]
    answer = engine.generate([turn1], greedy)[0]
    assert answer.cached_tokens == 0
    turn2 = turn1 + answer.token_ids + [50, 51, 52]
    second = engine.generate([turn2], greedy)[0]
    # Every full block of turn 1 plus its answer, except the answer's last token (never fed back), is reused.
    assert second.cached_tokens == (len(turn1) + len(answer.token_ids) - 1) // 4 * 4
    assert second.token_ids == hf_greedy(hf_model, turn2, 10)
    assert engine.block_manager.prefix_hits == second.cached_tokens


def test_abort_frees_blocks_and_others_continue(tiny_model, hf_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=64))
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    engine.add_request("a", PROMPTS[3], greedy)
    engine.add_request("b", PROMPTS[4], greedy)
    engine.step()
    final = engine.abort("a")
    assert final.finish_reason == "abort"
    assert engine.abort("a") is None
    tokens = []
    while engine.has_unfinished():
        tokens += [t for o in engine.step() for t in o.token_ids]
    assert tokens == hf_greedy(hf_model, PROMPTS[4], 12)[1:]
    assert engine.block_manager.num_free_blocks == 64


@pytest.mark.parametrize("prompt,max_tokens,error", [
    ([], 4, "at least one token"),
    ([1, 2, 999], 4, "token ids"),
    ([1, 2], 0, "max_tokens"),
    ([1] * 60, 10, "exceeds"),
])
def test_bad_requests_are_rejected_and_change_nothing(tiny_model, prompt, max_tokens, error):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=16))
    with pytest.raises(ValueError, match=error):
        engine.add_request("x", prompt, SamplingParams(max_tokens=max_tokens))
    assert not engine.has_unfinished()
    assert not engine.seqs


def test_lower_priority_number_is_admitted_first(tiny_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=64, max_num_seqs=1))
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    engine.add_request("batch", [5, 6, 7], params, priority=2)
    engine.add_request("interactive", [8, 9, 10], params, priority=0)
    finished = [o.request_id for _ in range(6) for o in engine.step() if o.finished]
    assert finished == ["interactive", "batch"]


def test_offline_generate_rejects_a_bad_prompt_before_adding_any(tiny_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=16))
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[1, 2, 3], []], SamplingParams(max_tokens=2))
    assert not engine.has_unfinished()
    assert not engine.seqs
