"""Sampling parameters: seeds, top-k/top-p, temperature, stop tokens and strings, max_tokens, logprobs."""
from __future__ import annotations

import pytest
import torch

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

PROMPT = [7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def engine(tiny_model) -> LLMEngine:
    return LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=256, enable_prefix_caching=False))


def tokens(engine: LLMEngine, prompts, params) -> list[list[int]]:
    return [c.token_ids for c in engine.generate(prompts, params)]


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_whatever_the_batch(engine):
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    alone = tokens(engine, [PROMPT], seeded)[0]
    others = [SamplingParams(max_tokens=n, temperature=0.8, ignore_eos=True) for n in (5, 20, 9)]
    batched = tokens(engine, [[3, 4], PROMPT, [50] * 30, [60, 61, 62]], [others[0], seeded, others[1], others[2]])
    assert batched[1] == alone
    other_seed = tokens(engine, [PROMPT], SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True))[0]
    assert other_seed != alone


@pytest.mark.slow
def test_top_k_one_and_tiny_top_p_are_greedy(engine, hf_model):
    want = hf_greedy(hf_model, PROMPT, 12)
    assert tokens(engine, [PROMPT], SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=1, ignore_eos=True))[0] == want
    assert tokens(engine, [PROMPT], SamplingParams(max_tokens=12, temperature=1.5, top_p=1e-6, seed=2, ignore_eos=True))[0] == want


def test_top_k_samples_only_among_the_k_best(engine):
    params = SamplingParams(max_tokens=1, temperature=5.0, top_k=3, ignore_eos=True)
    with torch.inference_mode():
        from backends.engine.sequence import Sequence

        seq = Sequence("p", PROMPT, params)
        engine.block_manager.append(seq, len(PROMPT))
        logits, _ = engine.model_runner.execute([(seq, len(PROMPT))])
        engine.block_manager.free(seq)
    best = set(logits[0].topk(3).indices.tolist())
    drawn = {t[0] for t in tokens(engine, [PROMPT] * 40, [SamplingParams(**{**params.__dict__, "seed": s}) for s in range(40)])}
    assert drawn <= best
    assert len(drawn) > 1


def test_stop_token_and_max_tokens(engine, hf_model):
    want = hf_greedy(hf_model, PROMPT, 12)
    stop_at = want[5]
    out = engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_at], ignore_eos=True))[0]
    assert out.token_ids == want[: want.index(stop_at) + 1]
    assert out.finish_reason == "stop"
    out = engine.generate([PROMPT], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert out.token_ids == want[:4]
    assert out.finish_reason == "length"


def test_eos_stops_unless_ignored(tiny_model, hf_model):
    want = hf_greedy(hf_model, PROMPT, 12)
    engine = LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=64))
    engine.eos_token_ids = {want[4]}  # pretend the checkpoint's eos is a token greedy decoding will meet
    stopped = engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0))[0]
    assert stopped.token_ids == want[: want.index(want[4]) + 1]
    assert stopped.finish_reason == "stop"
    ignored = engine.generate([PROMPT], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    assert ignored.token_ids == want


def test_stop_string_ends_generation_and_is_not_emitted(engine):
    free = engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    out = engine.generate([PROMPT], SamplingParams(max_tokens=30, temperature=0, stop=[stop], ignore_eos=True))[0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[: free.text.index(stop)]


def test_logprobs_are_the_models(engine, hf_model):
    out = engine.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0, logprobs=True, ignore_eos=True))[0]
    with torch.inference_mode():
        want = torch.log_softmax(hf_model(torch.tensor([PROMPT])).logits[0, -1], dim=-1).max().item()
    assert out.logprobs == pytest.approx([want], abs=1e-4)
