"""Fair seats between tenants within a priority class: one tenant's flood of long generations cannot keep another
tenant's request waiting for a seat, and preempted generations still equal HF's greedy tokens."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

rng = random.Random(5)
FLOOD_PROMPTS = [[rng.randrange(3, 380) for _ in range(12)] for _ in range(6)]
VICTIM_PROMPT = [rng.randrange(3, 380) for _ in range(20)]
FLOOD_TOKENS, VICTIM_TOKENS = 24, 4


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def engine_for(tiny_model, **overrides) -> LLMEngine:
    knobs = dict(block_size=4, num_kv_blocks=256, max_num_seqs=4, max_num_batched_tokens=64)
    return LLMEngine(EngineConfig(str(tiny_model), **(knobs | overrides)))


def flood_then_victim(engine: LLMEngine, victim_salt: str) -> tuple[int, dict[str, list[int]]]:
    """Tenant A's six long generations fill the four seats; then one request of `victim_salt` arrives, same class.
    Returns the victim's steps to first token and everyone's tokens."""
    outputs: dict[str, list[int]] = defaultdict(list)
    for i, prompt in enumerate(FLOOD_PROMPTS):
        engine.add_request(f"a{i}", prompt, greedy(FLOOD_TOKENS), cache_salt="tA")
    for _ in range(3):
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    engine.add_request("v", VICTIM_PROMPT, greedy(VICTIM_TOKENS), cache_salt=victim_salt)
    steps = 0
    while not outputs["v"]:
        steps += 1
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id] += out.token_ids
    return steps, outputs


@pytest.fixture(scope="module")
def expected(hf_model) -> dict[str, list[int]]:
    want = {f"a{i}": hf_greedy(hf_model, p, FLOOD_TOKENS) for i, p in enumerate(FLOOD_PROMPTS)}
    return want | {"v": hf_greedy(hf_model, VICTIM_PROMPT, VICTIM_TOKENS)}


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_another_tenant_gets_a_seat_at_the_next_step(tiny_model, expected, mode):
    swap = dict(preemption_mode="swap", num_cpu_blocks=128) if mode == "swap" else {}
    engine = engine_for(tiny_model, **swap)
    steps, outputs = flood_then_victim(engine, "tB")
    assert steps == 1, "tenant B's request must not wait behind tenant A's long generations"
    assert engine.scheduler.num_preemptions == 1
    assert dict(outputs) == expected, "the preempted generation must still produce HF's tokens"
    assert engine.block_manager.num_free_blocks == engine.model_runner.num_blocks


def test_the_same_tenant_waits_its_turn(tiny_model, expected):
    engine = engine_for(tiny_model)
    steps, outputs = flood_then_victim(engine, "tA")
    assert steps > FLOOD_TOKENS - 4, "a tenant's own requests queue FIFO behind its running ones"
    assert engine.scheduler.num_preemptions == 0
    assert dict(outputs) == expected


def test_seats_are_shared_evenly_between_two_flooding_tenants(tiny_model):
    engine = engine_for(tiny_model)
    for i in range(6):
        engine.add_request(f"a{i}", [5 + i, 6, 7], greedy(40), cache_salt="tA")
    engine.step()
    for i in range(6):
        engine.add_request(f"b{i}", [9 + i, 6, 7], greedy(40), cache_salt="tB")
    for _ in range(4):
        engine.step()
    seats = defaultdict(int)
    for seq in engine.scheduler.running:
        seats[seq.cache_salt] += 1
    assert seats == {"tA": 2, "tB": 2}


def test_fair_share_stays_within_a_class(tiny_model):
    # Tenant A's interactive requests hold every seat; B's batch request does not take one of them.
    engine = engine_for(tiny_model)
    for i in range(4):
        engine.add_request(f"a{i}", [5 + i, 6, 7], greedy(10), priority=0, cache_salt="tA")
    engine.step()
    engine.add_request("b", [8, 9, 10], greedy(4), priority=2, cache_salt="tB")
    for _ in range(3):
        assert {o.request_id for o in engine.step()} == {f"a{i}" for i in range(4)}
    assert engine.scheduler.num_preemptions == 0
