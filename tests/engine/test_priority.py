"""Priority classes: interactive (0) before standard (1) before batch (2), preempting lower classes for seats and blocks."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

INTERACTIVE, BATCH = 0, 2
rng = random.Random(3)
BATCH_PROMPTS = [[rng.randrange(3, 380) for _ in range(16)] for _ in range(4)]
INTERACTIVE_PROMPT = [rng.randrange(3, 380) for _ in range(28)]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def engine_for(tiny_model, **overrides) -> LLMEngine:
    knobs = dict(block_size=4, num_kv_blocks=256, max_num_seqs=8, max_num_batched_tokens=64)
    return LLMEngine(EngineConfig(str(tiny_model), **(knobs | overrides)))


def flood_then_interactive(engine: LLMEngine, interactive_priority: int) -> tuple[int, dict[str, list[int]]]:
    """Four batch requests decode; then an interactive one arrives. Returns its steps to first token and all outputs."""
    outputs: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(BATCH_PROMPTS):
        engine.add_request(f"b{i}", prompt, greedy(8), priority=BATCH)
    for _ in range(2):
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    engine.add_request("i", INTERACTIVE_PROMPT, greedy(6), priority=interactive_priority)
    steps = 0
    while not outputs["i"]:
        steps += 1
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    return steps, outputs


@pytest.fixture(scope="module")
def expected(hf_model) -> dict[str, list[int]]:
    want = {f"b{i}": hf_greedy(hf_model, p, 8) for i, p in enumerate(BATCH_PROMPTS)}
    return want | {"i": hf_greedy(hf_model, INTERACTIVE_PROMPT, 6)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["recompute", "swap"])
@pytest.mark.parametrize("shortage", ["seats", "blocks"])
def test_interactive_request_preempts_batch_class(tiny_model, expected, shortage, mode):
    # seats: all 4 seats taken. blocks: the batch holds 20 of 26 blocks; the interactive prompt needs 7.
    limits = dict(max_num_seqs=4) if shortage == "seats" else dict(num_kv_blocks=26)
    swap = dict(preemption_mode="swap", num_cpu_blocks=64) if mode == "swap" else {}
    engine = engine_for(tiny_model, **limits, **swap)
    steps, outputs = flood_then_interactive(engine, INTERACTIVE)
    assert steps == 1, "the interactive request must get its first token at the very next step"
    assert engine.scheduler.num_preemptions >= 1
    assert (engine.scheduler.num_swap_outs > 0) == (mode == "swap")
    assert dict(outputs) == expected, "preempted batch requests must still produce HF's tokens"
    assert engine.block_manager.num_free_blocks == engine.model_runner.num_blocks
    assert len(engine.block_manager.free_cpu_blocks) == engine.model_runner.num_cpu_blocks


def test_same_class_waits_its_turn(tiny_model, expected):
    engine = engine_for(tiny_model, max_num_seqs=4)
    steps, outputs = flood_then_interactive(engine, BATCH)
    assert steps > 5
    assert engine.scheduler.num_preemptions == 0  # FIFO: it waits for a batch request to finish
    assert dict(outputs) == expected


def test_higher_class_prefill_goes_before_lower_class_work_in_the_token_budget(tiny_model, hf_model):
    engine = engine_for(tiny_model, max_num_batched_tokens=32)
    long_prompts = [[rng.randrange(3, 380) for _ in range(120)] for _ in range(3)]
    for i, prompt in enumerate(long_prompts):
        engine.add_request(f"b{i}", prompt, greedy(4), priority=BATCH)
    engine.step()  # batch prefill chunks now fill the whole budget
    engine.add_request("i", INTERACTIVE_PROMPT, greedy(3), priority=INTERACTIVE)
    first = engine.step()
    assert [o.request_id for o in first] == ["i"], "the interactive prompt is prefilled ahead of the batch chunks"
    tokens = defaultdict(list)
    for out in first:
        tokens[out.request_id] += out.token_ids
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    assert tokens["i"] == hf_greedy(hf_model, INTERACTIVE_PROMPT, 3)
    assert tokens["b0"] == hf_greedy(hf_model, long_prompts[0], 4)


def test_lower_class_is_never_preempted_for_an_equal_or_lower_one(tiny_model):
    engine = engine_for(tiny_model, max_num_seqs=2)
    engine.add_request("a", [5, 6, 7], greedy(10), priority=INTERACTIVE)
    engine.add_request("b", [8, 9, 10], greedy(10), priority=1)
    engine.step()
    engine.add_request("c", [11, 12], greedy(10), priority=1)
    engine.add_request("d", [13, 14], greedy(10), priority=BATCH)
    for _ in range(3):
        assert {o.request_id for o in engine.step()} == {"a", "b"}
    assert engine.scheduler.num_preemptions == 0


@pytest.mark.parametrize("aging", [None, 1e-9])
def test_aging_lifts_a_waiting_batch_request_past_later_interactive_ones(tiny_model, aging):
    engine = engine_for(tiny_model, max_num_seqs=1, priority_aging_s=aging)
    engine.add_request("a", [5, 6, 7], greedy(6), priority=INTERACTIVE)
    engine.step()
    engine.add_request("b", [8, 9], greedy(2), priority=BATCH)
    engine.step()
    engine.step()  # with aging, each step's schedule lifted b one class: it is interactive now
    engine.add_request("c", [10, 11], greedy(2), priority=INTERACTIVE)
    order = []
    while engine.has_unfinished():
        order += [o.request_id for o in engine.step() if o.request_id not in order]
    assert order == (["a", "b", "c"] if aging else ["a", "c", "b"])
