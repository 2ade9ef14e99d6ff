"""OpenAI's sampling parameters in the engine, each against HF transformers where HF has it: repetition penalty
and logit_bias (HF's own logits processors, token for token), logprobs / top_logprobs (HF's log-softmax),
presence / frequency penalties (OpenAI's formula over HF's logits), seeds within a mixed batch, and stop strings
that span token boundaries."""
from __future__ import annotations

import pytest
import torch

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

pytestmark = pytest.mark.slow

PROMPT = [7, 8, 9, 10, 11, 7, 8]


@pytest.fixture(scope="module")
def engine(tiny_model) -> LLMEngine:
    return LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=256))


def greedy(**extra) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 16, "temperature": 0, "ignore_eos": True, **extra})


def hf_generate(hf_model, prompt: list[int], **kwargs) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=16, do_sample=False, pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_hf(engine, hf_model, penalty):
    want = hf_generate(hf_model, PROMPT, repetition_penalty=penalty)
    assert want != hf_greedy(hf_model, PROMPT, 16)  # the penalty changes this continuation
    got = engine.generate([PROMPT], greedy(repetition_penalty=penalty))[0].token_ids
    assert got == want


def test_logit_bias_equals_hf_sequence_bias(engine, hf_model):
    plain = hf_greedy(hf_model, PROMPT, 16)
    bias = {plain[0]: -100.0, 42: 5.0, 300: 3.5}
    want = hf_generate(hf_model, PROMPT, sequence_bias={(t,): b for t, b in bias.items()})
    assert want != plain
    got = engine.generate([PROMPT], greedy(logit_bias=bias))[0].token_ids
    assert got == want


def openai_penalized_greedy(hf_model, prompt: list[int], presence: float, frequency: float, n: int) -> list[int]:
    """OpenAI's documented rule on HF's logits: logit -= frequency * count + presence * (count > 0), output only."""
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            logits = hf_model(torch.tensor([prompt + out])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float()
            logits -= frequency * counts + presence * (counts > 0).float()
            out.append(int(logits.argmax()))
    return out


@pytest.mark.parametrize("presence,frequency", [(1.5, 0.0), (0.0, 1.2), (0.8, 0.6), (-1.0, 0.0)])
def test_presence_and_frequency_penalties_follow_openai_formula(engine, hf_model, presence, frequency):
    want = openai_penalized_greedy(hf_model, PROMPT, presence, frequency, 16)
    got = engine.generate([PROMPT], greedy(presence_penalty=presence, frequency_penalty=frequency))[0].token_ids
    assert got == want


def test_logprobs_and_top_logprobs_equal_hf_log_softmax(engine, hf_model):
    out = engine.generate([PROMPT], greedy(logprobs=True, top_logprobs=5))[0]
    with torch.inference_mode():
        logits = hf_model(torch.tensor([PROMPT + out.token_ids])).logits[0, len(PROMPT) - 1 : -1]
    want = torch.log_softmax(logits.float(), dim=-1)
    assert len(out.logprobs) == len(out.token_ids) == len(out.top_logprobs) == 16
    for i, token in enumerate(out.token_ids):
        assert out.logprobs[i] == pytest.approx(want[i, token].item(), abs=1e-4)
        best = want[i].topk(5)
        assert [t for t, _ in out.top_logprobs[i]] == best.indices.tolist()
        assert [lp for _, lp in out.top_logprobs[i]] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_logprobs_stay_the_models_under_penalties(engine, hf_model):
    """Penalties change the choice, not the reported probabilities: the model's log-softmax, as vLLM reports."""
    out = engine.generate([PROMPT], greedy(logprobs=True, repetition_penalty=1.5))[0]
    with torch.inference_mode():
        logits = hf_model(torch.tensor([PROMPT + out.token_ids])).logits[0, len(PROMPT) - 1 : -1]
    want = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
    assert out.logprobs == pytest.approx(want.tolist(), abs=1e-4)


def test_seeded_penalized_request_is_reproducible_in_a_mixed_batch(engine, hf_model):
    seeded = SamplingParams(max_tokens=12, temperature=0.9, seed=77, ignore_eos=True, frequency_penalty=0.5,
                            logit_bias={5: 2.0})
    alone = engine.generate([PROMPT], seeded)[0].token_ids
    others = [greedy(repetition_penalty=1.2), SamplingParams(max_tokens=9, temperature=1.0, ignore_eos=True),
              greedy()]
    batched = engine.generate([[3, 4, 5], PROMPT, [50] * 20, PROMPT[:3]], [others[0], seeded, others[1], others[2]])
    assert batched[1].token_ids == alone
    assert batched[3].token_ids == hf_greedy(hf_model, PROMPT[:3], 16)  # an unshaped neighbour stays HF's greedy
    other_seed = engine.generate([PROMPT], SamplingParams(**{**seeded.__dict__, "seed": 78}))[0].token_ids
    assert other_seed != alone


def test_stop_string_spanning_token_boundaries(engine):
    free = engine.generate([PROMPT], greedy(max_tokens=30))[0]
    pieces = [engine.tokenizer.decode([t]) for t in free.token_ids]
    # A stop string made of the tail of one token and the head of the next two: no single token holds it.
    start = next(i for i in range(2, len(pieces) - 3) if len(pieces[i]) > 1 and pieces[i + 1] and pieces[i + 2])
    stop = pieces[start][1:] + pieces[start + 1] + pieces[start + 2][:1]
    assert all(stop not in p for p in pieces)
    out = engine.generate([PROMPT], greedy(max_tokens=30, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[: free.text.index(stop)]


def test_bad_shaping_parameters_are_refused_before_any_work(engine):
    for params, message in [(greedy(repetition_penalty=0.0), "repetition_penalty"),
                            (greedy(logit_bias={10_000: 1.0}), "logit_bias"),
                            (greedy(structured={"json": {"type": "nonsense"}}), "grammar")]:
        with pytest.raises(ValueError, match=message):
            engine.add_request("bad", PROMPT, params)
        assert "bad" not in engine.seqs
