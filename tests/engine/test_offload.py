"""Host memory as overflow: KV blocks swapped out under pressure and back, and layers' weights kept on the host."""
from __future__ import annotations

import random

import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.block_manager import BlockManager
from backends.engine.sequence import Sequence
from tests.engine.conftest import hf_greedy

pytestmark = pytest.mark.slow

rng = random.Random(11)
LONG_PROMPTS = [[rng.randrange(3, 380) for _ in range(200)] for _ in range(4)]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def expected_long(hf_model) -> list[list[int]]:
    return [hf_greedy(hf_model, p, MAX_TOKENS) for p in LONG_PROMPTS]


def count_computed_tokens(engine: LLMEngine) -> list[int]:
    computed = [0]
    run = engine.model_runner.run

    def counting_run(batch):
        computed[0] += sum(n for _, n in batch)
        return run(batch)

    engine.model_runner.run = counting_run
    return computed


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_long_contexts_beyond_the_device_kv_budget_stay_exact(tiny_model, expected_long, mode):
    # 40 blocks of 8 = 320 tokens of device cache; the four sequences need 4 x 240 = 960, three times that.
    swap = dict(num_cpu_blocks=128) if mode == "swap" else {}
    engine = LLMEngine(EngineConfig(
        str(tiny_model), block_size=8, num_kv_blocks=40, max_num_batched_tokens=64, preemption_mode=mode, **swap,
    ))
    assert sum(len(p) + MAX_TOKENS for p in LONG_PROMPTS) >= 3 * engine.model_runner.num_blocks * 8
    computed = count_computed_tokens(engine)
    outs = engine.generate(LONG_PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected_long
    assert engine.scheduler.num_preemptions > 0
    least = sum(len(p) + MAX_TOKENS - 1 for p in LONG_PROMPTS)  # every token's keys/values computed once
    if mode == "swap":
        assert engine.scheduler.num_swap_outs == engine.scheduler.num_preemptions
        assert computed[0] == least, "a swapped sequence resumes where it stopped: nothing is recomputed"
    else:
        assert computed[0] > least
    assert engine.block_manager.num_free_blocks == 40
    assert len(engine.block_manager.free_cpu_blocks) == len(swap and range(128))


def test_swap_falls_back_to_recompute_when_host_blocks_run_out(tiny_model, expected_long):
    engine = LLMEngine(EngineConfig(
        str(tiny_model), block_size=8, num_kv_blocks=40, max_num_batched_tokens=64, preemption_mode="swap", num_cpu_blocks=12,
    ))
    outs = engine.generate(LONG_PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True))
    assert [o.token_ids for o in outs] == expected_long
    assert 0 < engine.scheduler.num_swap_outs < engine.scheduler.num_preemptions


def test_swap_bookkeeping_and_deferred_host_block_reuse():
    bm = BlockManager(num_blocks=8, block_size=4, num_cpu_blocks=4)
    seq = Sequence("r", list(range(10)), SamplingParams())
    bm.append(seq, 10)
    seq.num_computed_tokens = 10
    device = list(seq.block_table)
    out = bm.swap_out(seq)
    assert [d for d, _ in out] == device
    assert seq.block_table == []
    assert bm.num_free_blocks == 8
    assert len(seq.cpu_block_table) == 3
    assert len(bm.free_cpu_blocks) == 1
    back = bm.swap_in(seq)
    assert [h for h, _ in back] == [h for _, h in out]
    assert len(seq.block_table) == 3
    assert len(bm.free_cpu_blocks) == 1, "host blocks read by this step's swap-in are not reusable until the next step"
    bm.release_swapped_in()
    assert len(bm.free_cpu_blocks) == 4
    other = Sequence("o", list(range(20)), SamplingParams())
    bm.append(other, 20)
    assert not bm.can_swap_out(other)  # 5 blocks, 4 host blocks


def test_swap_mode_needs_host_blocks(tiny_model):
    with pytest.raises(ValueError, match="swap_space_gb or num_cpu_blocks"):
        EngineConfig(str(tiny_model), preemption_mode="swap")
    with pytest.raises(ValueError, match="preemption_mode"):
        EngineConfig(str(tiny_model), preemption_mode="drop")


@pytest.mark.parametrize("offloaded", [1, 2])
def test_offloaded_weights_give_identical_output_and_leave_the_device_between_uses(tiny_model, hf_model, offloaded):
    import torch

    prompts = [[5, 17, 42, 99, 3], list(range(10, 60)), [7] * 12]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=64, cpu_offload_layers=offloaded))
    layers = engine.model_runner.model.model.layers
    forwards = [0]
    for layer in layers[:offloaded]:
        layer.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    assert [o.token_ids for o in engine.generate(prompts, params)] == [hf_greedy(hf_model, p, 10) for p in prompts]

    plain = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=64))
    seq = Sequence("x", list(range(20, 50)), SamplingParams())
    engine.block_manager.append(seq, len(seq))  # the same block ids serve both engines' (separate) caches
    logits = engine.model_runner.execute([(seq, len(seq))])[0]
    assert torch.equal(logits, plain.model_runner.execute([(seq, len(seq))])[0]), "offloading must not change a bit"

    for i, layer in enumerate(layers):
        on_device = sum(p.numel() for p in layer.parameters())
        assert (on_device == 0) == (i < offloaded), "an offloaded layer holds no device weights between its uses"
    offloader = engine.model_runner.weight_offloader
    # One copy per use; with two or more offloaded layers, the next step's first one is already prefetched.
    assert offloader.num_copies == forwards[0] + len(offloader.pending)
    assert len(offloader.pending) == (offloaded > 1)
