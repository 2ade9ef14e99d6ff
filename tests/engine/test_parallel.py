"""Tensor and pipeline parallelism: one process per rank over gloo; greedy output equals one process's (and HF's)."""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.distributed import microbatches
from backends.engine.parallel import stage_layers
from tests.engine.conftest import hf_greedy

pytestmark = pytest.mark.slow

LARGE = Path(__file__).resolve().parents[2] / "models" / "large"
rng = random.Random(5)
PROMPTS = [[rng.randrange(3, 380) for _ in range(n)] for n in (3, 9, 30, 57, 1, 22)]
GREEDY = SamplingParams(max_tokens=14, temperature=0, ignore_eos=True)


@contextmanager
def engine(path, **knobs):
    e = LLMEngine(EngineConfig(str(path), **knobs))
    try:
        yield e
    finally:
        if hasattr(e.model_runner, "shutdown"):
            e.model_runner.shutdown()


@pytest.fixture(scope="module")
def expected(hf_model) -> list[list[int]]:
    return [hf_greedy(hf_model, p, GREEDY.max_tokens) for p in PROMPTS]


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2-pp2"])
def test_sharded_greedy_output_equals_hf(tiny_model, expected, tp, pp):
    # A small cache and token budget: chunked prefills, batched decodes and swap preemptions all cross the ranks.
    knobs = dict(block_size=4, num_kv_blocks=40, max_num_batched_tokens=24, preemption_mode="swap", num_cpu_blocks=64)
    with engine(tiny_model, tensor_parallel_size=tp, pipeline_parallel_size=pp, **knobs) as e:
        outs = e.generate(PROMPTS, GREEDY)
        assert [o.token_ids for o in outs] == expected
        assert e.scheduler.num_swap_outs > 0
        runner = e.model_runner
        assert (runner.tp.bytes > 0) == (tp > 1), "row-parallel layers all-reduce, the LM head all-gathers"
        assert runner.world.bytes > 0
        assert len(runner.model.model.layers) == 2 // pp


def test_bundled_large_model_tp2_equals_tp1():
    prompts = [[1, 3] + [rng.randrange(6, 4096) for _ in range(n)] + [4] for n in (5, 40, 12)]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    with engine(LARGE, num_kv_blocks=64) as single:
        want = [o.token_ids for o in single.generate(prompts, params)]
    with engine(LARGE, num_kv_blocks=64, tensor_parallel_size=2) as sharded:
        assert [o.token_ids for o in sharded.generate(prompts, params)] == want
        attn = sharded.model_runner.model.model.layers[0].self_attn
        assert (attn.num_heads, attn.num_kv_heads) == (3, 1), "each rank holds half the query and KV heads"


def test_a_model_that_does_not_split_is_refused_before_any_process_starts(tiny_model):
    with pytest.raises(ValueError, match="num_attention_heads=4 does not split over tensor_parallel_size=3"):
        LLMEngine(EngineConfig(str(tiny_model), num_kv_blocks=16, tensor_parallel_size=3))
    with pytest.raises(ValueError, match="cannot fill pipeline_parallel_size=3"):
        LLMEngine(EngineConfig(str(tiny_model), num_kv_blocks=16, pipeline_parallel_size=3))


def test_stages_and_microbatches_partition_their_input():
    assert [list(stage_layers(80, 3, s)) for s in range(3)] == [list(range(27)), list(range(27, 54)), list(range(54, 80))]
    batch = [(object(), n) for n in (1, 1, 1, 1, 30, 2)]
    groups = microbatches(batch, 2)
    assert [item for g in groups for item in g] == batch
    assert len(groups) == 2
    assert microbatches(batch[:1], 4) == [batch[:1]]
