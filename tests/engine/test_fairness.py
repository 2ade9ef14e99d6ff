"""Weighted fair seats between tenants within a priority class: one tenant's flood of long generations cannot keep
another tenant's request waiting for a seat (nor take its p50 latency past 1.5x, on the simulator's clock), weights
split the seats, and preempted generations still equal HF's greedy tokens."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.capacity.hardware import GPUS, MODELS
from backends.engine.capacity.simulator import EngineKnobs, simulate
from backends.engine.capacity.step_time import StepModel
from backends.engine.capacity.workload import Request
from tests.engine.conftest import hf_greedy

pytestmark = pytest.mark.slow

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


def test_seats_follow_tenant_weights(tiny_model):
    # Weights 3:1 over four seats: A holds three, B one, however many each has waiting.
    engine = engine_for(tiny_model)
    for tenant, weight in (("tA", 3), ("tB", 1)):
        for i in range(6):
            engine.add_request(f"{tenant}{i}", [5 + i, 6, 7], greedy(40), cache_salt=tenant, weight=weight)
    for _ in range(4):
        engine.step()
    assert Counter(seq.cache_salt for seq in engine.scheduler.running) == {"tA": 3, "tB": 1}
    with pytest.raises(ValueError, match="weight"):
        engine.add_request("bad", [5, 6], greedy(2), weight=0)


# The real Scheduler and BlockManager on the simulator's clock (an 8B model's step times on one H100): tenant B's
# chat turns (64 in, 32 out, 4/s) alone, then with tenant A's flood of 200 generations of 1,000 tokens at t=1 s.
def chat_and_flood(chat_tenant: str, flood_weight: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(1)
    chat, t = [], 0.0
    while (t := t + rng.expovariate(4.0)) < 20:
        chat.append(Request(t, 64, 32, seed=len(chat), tenant=chat_tenant))
    flood = [Request(1.0 + i / 1000, 64, 1000, seed=10_000 + i, tenant="A", weight=flood_weight) for i in range(200)]
    model = StepModel(MODELS["llama-3-8b"], "bf16", GPUS["h100-sxm"])
    knobs = EngineKnobs(max_num_seqs=16, max_num_batched_tokens=512, num_blocks=4000)
    alone, loaded = simulate(chat, model, knobs), simulate(sorted(chat + flood, key=lambda r: r.arrival), model, knobs)
    return (np.array([latency(alone, r) for r in alone.records]),
            np.array([latency(loaded, r) for r in loaded.records if r.request.seed < 10_000]))


def latency(result, record) -> float:
    return (record.last_token if record.finished else result.end) - record.request.arrival


def test_a_flood_of_long_generations_keeps_another_tenants_p50_within_1_5x():
    alone, loaded = chat_and_flood("B")
    assert len(loaded) == len(alone) > 60
    assert np.median(loaded) <= 1.5 * np.median(alone)


def test_the_flooding_tenant_itself_waits_behind_its_own_flood():
    # The same requests sent by the flooding tenant queue FIFO behind its long generations: what fairness prevents.
    alone, loaded = chat_and_flood("A")
    assert np.median(loaded) > 10 * np.median(alone)


def test_a_heavier_weight_does_not_let_a_flood_starve_a_lighter_tenant():
    # Weight 4 gives the flood 4 of every 5 seats while B waits; B's turns still get seats at once.
    alone, loaded = chat_and_flood("B", flood_weight=4)
    assert np.median(loaded) <= 1.5 * np.median(alone)


# The step share: while one tenant holds strictly the fewest seats, each other tenant adds to a step it is in no more
# sequences than that tenant has in it (equal weights), and its first running one always.
def test_another_tenant_shares_each_step_it_is_in(tiny_model, expected, monkeypatch):
    engine = engine_for(tiny_model)
    steps_with_v = []
    schedule = engine.scheduler.schedule

    def traced():
        plan = schedule()
        if any(seq.request_id == "v" for seq, _ in plan.batch):
            steps_with_v.append(Counter(seq.cache_salt for seq, _ in plan.batch))
        return plan

    monkeypatch.setattr(engine.scheduler, "schedule", traced)
    _, outputs = flood_then_victim(engine, "tB")
    assert len(steps_with_v) == VICTIM_TOKENS  # its prompt in one step, then a decode per step: it never waits
    assert steps_with_v == [Counter(tB=1, tA=1)] * VICTIM_TOKENS, "the flood's 3 seats compute 1 sequence a step"
    assert dict(outputs) == expected, "sequences held out of a step still produce HF's tokens"


def test_one_tenant_alone_fills_its_steps(tiny_model):
    engine = engine_for(tiny_model)
    for i, prompt in enumerate(FLOOD_PROMPTS):
        engine.add_request(f"a{i}", prompt, greedy(FLOOD_TOKENS), cache_salt="tA")
    for _ in range(3):
        engine.step()
    assert len(engine.scheduler.schedule().batch) == 4, "no other tenant: every seat computes"
