"""`ferryman engine serve` as a drop-in for vLLM's OpenAI server, driven by the official `openai` client:
chat with the checkpoint's template (greedy equal to HF transformers), completions, /v1/models, streaming with
usage, n choices sharing the prompt's blocks, logprobs, structured output, and clear 400s for bad parameters."""
from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from backends.engine import EngineBackend, EngineConfig
from backends.engine.chat import render_chat
from backends.server import create_replica_app

SMALL = Path(__file__).resolve().parents[2] / "models" / "small"
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse: s h i p"}]


@pytest.fixture(scope="module")
def backend():
    return EngineBackend("small", EngineConfig(model=str(SMALL), name="small", block_size=4, num_kv_blocks=512))


@pytest.fixture(scope="module")
def client(backend):
    app = create_replica_app(backend, backend.tokenizer, heartbeat_s=0.5, context_length=512)
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(SMALL, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # fixed-length continuations; the tests cut at EOS themselves
    return model


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["small"]


def test_chat_greedy_equals_hf_on_the_checkpoints_template(client, backend, hf):
    tok = backend.tokenizer
    want = hf_greedy(hf, render_chat(tok, CHAT), 12)
    if tok.eos_token_id in want:
        want = want[: want.index(tok.eos_token_id)]
    answer = client.chat.completions.create(model="small", messages=CHAT, temperature=0, max_tokens=12)
    assert answer.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert answer.usage.prompt_tokens == len(render_chat(tok, CHAT))


def test_streamed_chat_matches_whole_and_ends_with_usage(client):
    whole = client.chat.completions.create(model="small", messages=CHAT, temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(model="small", messages=CHAT, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_completions_with_n_share_the_prompts_blocks(client, backend, hf):
    prompt = "reverse: a b c d e f g h i j k l m n o p"
    ids = backend.tokenizer("<|bos|>" + prompt, add_special_tokens=False)["input_ids"]
    hits_before = backend.engine.block_manager.prefix_hits
    answer = client.completions.create(model="small", prompt=prompt, n=3, temperature=0, max_tokens=6,
                                       extra_body={"ignore_eos": True, "cache_salt": "n-test"})
    assert [c.index for c in answer.choices] == [0, 1, 2]
    greedy = backend.tokenizer.decode(hf_greedy(hf, ids, 6), skip_special_tokens=True)
    assert [c.text for c in answer.choices] == [greedy] * 3
    full_blocks = (len(ids) - 1) // 4 * 4
    assert backend.engine.block_manager.prefix_hits - hits_before == 2 * full_blocks  # choices 1, 2: no prefill
    assert answer.usage.completion_tokens == 18
    assert answer.usage.prompt_tokens == len(ids)


def test_seeded_choices_differ_and_reproduce(client):
    ask = dict(model="small", messages=CHAT, temperature=1.0, max_tokens=10, n=3, seed=5)
    first = [c.message.content for c in client.chat.completions.create(**ask).choices]
    again = [c.message.content for c in client.chat.completions.create(**ask).choices]
    assert first == again
    assert len(set(first)) > 1


def test_chat_logprobs_equal_hf_log_softmax(client, backend, hf):
    answer = client.chat.completions.create(model="small", messages=CHAT, temperature=0, max_tokens=6,
                                            logprobs=True, top_logprobs=3)
    prompt = render_chat(backend.tokenizer, CHAT)
    entries = answer.choices[0].logprobs.content
    ids = [backend.tokenizer.convert_tokens_to_ids(backend.tokenizer.tokenize(e.token))[0] if e.token != "<|eos|>"
           else backend.tokenizer.eos_token_id for e in entries]
    with torch.inference_mode():
        logits = hf(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    want = torch.log_softmax(logits.float(), dim=-1)
    for i, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(want[i, ids[i]].item(), abs=1e-4)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(want[i].topk(3).values.tolist(), abs=1e-4)


def test_json_schema_response_parses_and_validates(client):
    import jsonschema_rs

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "size": {"enum": ["s", "m", "l"]}, "count": {"type": "integer", "minimum": 0, "maximum": 999}},
              "required": ["city", "size", "count"], "additionalProperties": False}
    answer = client.chat.completions.create(
        model="small", messages=CHAT, temperature=0.7, seed=3, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}})
    jsonschema_rs.validate(schema, json.loads(answer.choices[0].message.content))
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("extra,param", [
    (dict(logit_bias={"99999": 1}), None),
    (dict(response_format={"type": "xml"}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(n=0), "n"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),  # this template renders no tools
])
def test_bad_parameters_are_clear_400s(client, backend, extra, param):
    running = len(backend.engine.seqs)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="small", messages=CHAT, max_tokens=4, **extra)
    assert err.value.body["param"] == param if isinstance(err.value.body, dict) else True
    assert len(backend.engine.seqs) == running
