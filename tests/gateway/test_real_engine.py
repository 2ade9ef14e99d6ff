"""The whole way for real: openai client → gateway → our engine on the bundled models → ledger.

Greedy answers through the gateway must equal HF transformers' `generate` on the same checkpoint."""
from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from backends.engine import EngineBackend, EngineConfig
from tests.harness import gateway_app
from tests.util import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODELS = {name: ROOT / "models" / name.split("-")[1] for name in ("ferryman-small", "ferryman-large")}
QUESTIONS = ["reverse abcd", "add 12 34", "Tell me about the sea and the ships that sail upon it."]


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("real")
    backends = {name: EngineBackend(name, EngineConfig(model=str(path), name=name, kv_cache_memory_gb=0.1))
                for name, path in MODELS.items()}
    wiring = gateway_app(f"sqlite:///{tmp / 'ledger.db'}", tokenizer=tokenizer, backends=backends)
    tenant_id, key = wiring.tenant()
    with serve(wiring.app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0), wiring.billing, tenant_id


def hf_greedy(model_dir: Path, tokenizer, question: str, max_new_tokens: int) -> str:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("model", list(MODELS))
def test_greedy_answers_equal_hf_generate(real_gateway, tokenizer, model):
    client, _, _ = real_gateway
    for question in QUESTIONS:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=24, temperature=0)
        assert reply.choices[0].message.content == hf_greedy(MODELS[model], tokenizer, question, 24)


def test_streamed_equals_whole_and_seed_reproduces(real_gateway):
    client, _, _ = real_gateway
    ask = dict(model="ferryman-large", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=20)
    whole = client.chat.completions.create(**ask, temperature=0).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        **ask, temperature=0, stream=True) if c.choices)
    assert streamed == whole
    sampled = [client.chat.completions.create(**ask, temperature=1.0, seed=s).choices[0].message.content
               for s in (7, 7, 8)]
    assert sampled[0] == sampled[1]


def test_stop_string_cuts_the_answer(real_gateway):
    client, _, _ = real_gateway
    ask = dict(model="ferryman-large", prompt="It was a dark and stormy night, and the", max_tokens=30, temperature=0)
    full = client.completions.create(**ask).choices[0].text
    cut_at = full.strip()[len(full.strip()) // 2:][:3]
    assert cut_at, "need a non-empty answer"
    stopped = client.completions.create(**ask, stop=[cut_at])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == full[:full.index(cut_at)]


def test_usage_is_recorded_per_request(real_gateway):
    client, billing, tenant_id = real_gateway
    before = len(billing.usage(tenant_id, limit=1000))
    reply = client.completions.create(model="ferryman-small", prompt="The ship", max_tokens=8, temperature=0)
    records = billing.usage(tenant_id, limit=1000)
    assert len(records) == before + 1
    assert records[0]["completion_tokens"] == reply.usage.completion_tokens
    assert records[0]["prompt_tokens"] == reply.usage.prompt_tokens
