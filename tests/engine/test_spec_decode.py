"""Speculative decoding: greedy output token-identical to plain decoding (and HF), sampled output distributed
as the target's, and the paged cache left consistent by rollbacks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.spec_decode import NgramProposer, rejection_sample
from tests.engine.conftest import build_tokenizer, hf_greedy
from tests.engine.test_batching import MAX_TOKENS, PROMPTS, run_staggered

pytestmark = pytest.mark.slow

ARRIVALS = [0, 0, 1, 2, 2, 3, 5, 8, 9, 9, 14]
CHI2_DF7_P001 = 24.32  # chi-square critical value, 7 degrees of freedom, p = 0.001


@pytest.fixture(scope="module")
def draft_model(tmp_path_factory) -> Path:
    """A smaller random Llama sharing the target's tokenizer and vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-draft")
    tokenizer = build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, initializer_range=0.15,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def expected(hf_model) -> list[list[int]]:
    return [hf_greedy(hf_model, p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]


def make_engine(model: Path, num_kv_blocks: int = 256, **spec) -> LLMEngine:
    return LLMEngine(EngineConfig(
        str(model), block_size=4, num_kv_blocks=num_kv_blocks, max_num_seqs=6, max_num_batched_tokens=16, **spec,
    ))


def assert_cache_released(engine: LLMEngine, num_kv_blocks: int) -> None:
    bm = engine.block_manager
    assert bm.num_free_blocks == num_kv_blocks, "finished sequences must release every block"
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert all(bm.blocks[i].hash == h for h, i in bm.cached.items())
    proposer = engine.speculator.proposer
    if hasattr(proposer, "block_manager"):
        proposer.release(set())
        assert proposer.block_manager.num_free_blocks == len(proposer.block_manager.blocks)


@pytest.mark.parametrize(
    "method, draft, num_kv_blocks",
    [("ngram", None, 256), ("draft", "small", 256), ("draft", "target", 256), ("draft", "small", 24), ("ngram", None, 24)],
    ids=["ngram", "draft-small", "draft-is-target", "draft-small-preempting", "ngram-preempting"],
)
def test_greedy_speculation_matches_plain_decoding(tiny_model, draft_model, expected, method, draft, num_kv_blocks):
    spec_model = {"small": str(draft_model), "target": str(tiny_model), None: None}[draft]
    engine = make_engine(tiny_model, num_kv_blocks, speculative_method=method, speculative_model=spec_model)
    outputs = run_staggered(engine, ARRIVALS)
    assert [outputs[str(i)] for i in range(len(PROMPTS))] == expected
    spec = engine.speculator
    assert spec.num_verified > 0
    assert spec.num_draft_tokens > 0
    if draft == "target":
        assert spec.num_accepted_tokens == spec.num_draft_tokens, "a draft identical to the target is always right"
    assert_cache_released(engine, num_kv_blocks)


def test_draft_out_of_blocks_falls_back_to_plain_decoding(tiny_model, draft_model, expected):
    from backends.engine.block_manager import BlockManager

    engine = make_engine(tiny_model, speculative_method="draft", speculative_model=str(draft_model))
    proposer = engine.speculator.proposer
    proposer.block_manager = BlockManager(20, 4, enable_prefix_caching=False)  # room for a sequence or two only
    outputs = run_staggered(engine, ARRIVALS)
    assert [outputs[str(i)] for i in range(len(PROMPTS))] == expected
    assert engine.speculator.num_verified > 0
    assert_cache_released(engine, 256)


def test_rollback_keeps_prefix_cache_correct(tiny_model, draft_model, hf_model):
    prompt = PROMPTS[6]  # 64 tokens: 16 full blocks
    engine = make_engine(tiny_model, speculative_method="draft", speculative_model=str(draft_model))
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    assert engine.speculator.num_accepted_tokens < engine.speculator.num_draft_tokens, "some drafts must be rolled back"
    bm = engine.block_manager
    for block in bm.blocks:  # every registered block holds exactly the tokens its hash chain claims
        if block.hash is not None and bm.cached.get(block.hash) == block.block_id:
            assert len(block.token_ids) == 4
    again = engine.generate([prompt + first.token_ids[:20]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    assert again.cached_tokens >= 80, "blocks completed by accepted drafts must serve a later request"
    assert first.token_ids == hf_greedy(hf_model, prompt, 30)
    assert again.token_ids == first.token_ids[20:30]
    assert_cache_released(engine, 256)


def test_sampled_speculation_runs_and_draft_equal_to_target_is_accepted(tiny_model):
    engine = make_engine(tiny_model, speculative_method="draft", speculative_model=str(tiny_model))
    params = [SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=i, ignore_eos=True, logprobs=True) for i in range(4)]
    results = engine.generate(PROMPTS[:4], params)
    assert all(len(r.token_ids) == 20 and len(r.logprobs) == 20 for r in results)
    assert all(0 <= t < 384 for r in results for t in r.token_ids)
    spec = engine.speculator
    assert spec.num_accepted_tokens >= 0.9 * spec.num_draft_tokens  # p == q up to rounding: min(1, p/q) ~ 1
    assert_cache_released(engine, 256)


def test_speculation_stops_past_max_batch_size(tiny_model):
    engine = make_engine(tiny_model, speculative_method="ngram", speculative_max_batch_size=2)
    engine.generate(PROMPTS[:6], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert engine.speculator.num_verified <= 2 * 8, "with six decoding at once, only the stragglers may speculate"


def test_draft_with_another_vocabulary_is_refused(tiny_model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocabulary"):
        EngineConfig(str(tiny_model), speculative_method="draft", speculative_model=str(tmp_path))
    with pytest.raises(ValueError, match="speculative_method"):
        EngineConfig(str(tiny_model), speculative_method="medusa")


def test_ngram_proposes_what_followed_the_last_match():
    seq = type("S", (), {"token_ids": [5, 6, 7, 8, 1, 5, 6, 7, 9, 2, 6, 7]})()
    assert NgramProposer().propose([seq], [3])[0].tokens == [9, 2, 6]  # "6 7" last seen before "9 2 6"
    assert NgramProposer().propose([seq], [0])[0].tokens == []


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("one_hot_draft", [False, True], ids=["draft-distribution", "ngram-point-mass"])
def test_rejection_sampling_follows_target_distribution(one_hot_draft):
    """Every emitted position must be distributed as p, whatever q proposed (seeded: not flaky)."""
    g = torch.Generator().manual_seed(0)
    vocab, k, trials = 8, 2, 12000
    p = torch.softmax(torch.randn(k + 1, vocab, generator=g) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 1.5, dim=-1)
    counts = torch.zeros(k + 1, vocab)
    for _ in range(trials):
        if one_hot_draft:
            draft = p[:k].argmax(dim=-1).tolist()  # likely guesses, so later positions are reached often
            q_used = torch.nn.functional.one_hot(torch.tensor(draft), vocab).float()
        else:
            draft = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(k)]
            q_used = q
        out = rejection_sample(p, q_used, draft, g)
        assert 1 <= len(out) <= k + 1
        for i, token in enumerate(out):
            counts[i, token] += 1
    for i in range(k + 1):
        assert counts[i].sum() > 1000
        freq = counts[i] / counts[i].sum()
        assert 0.5 * float((freq - p[i]).abs().sum()) < 0.03, f"position {i}: total variation from p too large"
        assert _chi2(counts[i], p[i]) < CHI2_DF7_P001, f"position {i}: not distributed as the target"
