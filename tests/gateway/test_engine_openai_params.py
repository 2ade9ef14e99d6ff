"""The gateway passes OpenAI's parameters to an engine model as it does to a `kind: openai` one: an agent loop
with the official client (tools offered, a call forced, its result sent back as role: tool), a JSON-schema
answer that validates, chat and completion logprobs equal to what our replica server gives, penalties, n choices
(one prefill, every choice's tokens billed); what remains unsupported is still a clear 400."""
from __future__ import annotations

import json

import jsonschema_rs
import openai
import pytest

from backends.engine import EngineBackend, EngineConfig
from backends.server import create_replica_app
from gateway.catalog import Catalog
from tests.engine.test_tool_calls import ASK, FAMILIES, WEATHER, _checkpoint, _tokenizer
from tests.harness import gateway_app
from tests.util import serve


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen")
    _checkpoint(path, "qwen2.5")
    _tokenizer(path, FAMILIES["qwen2.5"][1], FAMILIES["qwen2.5"][2])
    backend = EngineBackend("qwen-tiny", EngineConfig(model=str(path), name="qwen-tiny", block_size=4,
                                                      num_kv_blocks=512))
    db = tmp_path_factory.mktemp("db") / "ledger.db"
    catalog = Catalog.model_validate({"models": [{"name": "qwen-tiny", "kind": "engine", "path": str(path),
                                                  "price": {"input": 1.0, "output": 2.0}}]})
    wiring = gateway_app(f"sqlite:///{db}", tokenizer=backend.tokenizer, backends={"qwen-tiny": backend},
                         catalog=catalog)
    tenant_id, key = wiring.tenant("agents")
    replica = create_replica_app(backend, backend.tokenizer)  # the same engine, as its own OpenAI server
    with serve(wiring.app) as url, serve(replica) as replica_url:
        yield (openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0), wiring.billing, tenant_id,
               openai.OpenAI(base_url=replica_url + "/v1", api_key="none", max_retries=0), backend)


@pytest.fixture(scope="module")
def gateway(stack):
    return stack[0]


def test_agent_loop_through_the_gateway(gateway):
    first = gateway.chat.completions.create(model="qwen-tiny", messages=ASK, tools=[WEATHER], tool_choice="required",
                                            temperature=0.7, seed=3, max_tokens=200, parallel_tool_calls=False)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema_rs.validate(WEATHER["function"]["parameters"], json.loads(call.function.arguments))
    chat = ASK + [choice.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 c"}]
    second = gateway.chat.completions.create(model="qwen-tiny", messages=chat, tools=[WEATHER], tool_choice="none",
                                             temperature=0, max_tokens=8)
    assert second.choices[0].message.tool_calls is None
    assert second.usage.completion_tokens > 0


def test_streamed_tool_call_through_the_gateway(gateway):
    # The official client's stream helper accumulates the arguments' pieces into the whole answer's call.
    ask = dict(model="qwen-tiny", messages=ASK, tools=[WEATHER], temperature=0, max_tokens=200,
               tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = gateway.chat.completions.create(**ask).choices[0].message.tool_calls[0]
    with gateway.chat.completions.stream(**ask) as stream:
        pieces = [e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    [call] = final.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", whole.function.arguments)
    assert final.finish_reason == "tool_calls"
    assert len(pieces) > 3
    assert "".join(pieces) == call.function.arguments
    jsonschema_rs.validate(WEATHER["function"]["parameters"], json.loads(call.function.arguments))


def test_json_schema_logprobs_and_penalties_through_the_gateway(gateway):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["city", "n"], "additionalProperties": False}
    answer = gateway.chat.completions.create(
        model="qwen-tiny", messages=ASK, temperature=0.9, seed=1, max_tokens=60, logprobs=True, top_logprobs=2,
        presence_penalty=0.5, frequency_penalty=0.3,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    jsonschema_rs.validate(schema, json.loads(answer.choices[0].message.content))
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_n_choices_through_the_gateway_are_all_billed(stack):
    gateway, billing, tenant, _, backend = stack
    hits = backend.engine.block_manager.prefix_hits
    ask = dict(model="qwen-tiny", messages=ASK, n=3, temperature=1.0, seed=7, max_tokens=12, logprobs=True)
    answer = gateway.chat.completions.create(**ask)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert len({c.message.content for c in answer.choices}) > 1  # seed, seed + 1, seed + 2: the choices differ
    tokens = sum(len(c.logprobs.content) for c in answer.choices)  # every choice's tokens, counted by the client
    prompt = answer.usage.prompt_tokens
    record = billing.usage(tenant)[0]
    assert answer.usage.completion_tokens == record["completion_tokens"] == tokens > 12
    assert record["prompt_tokens"] == prompt
    assert record["status"] == "ok"  # the prompt once
    assert record["cost_micros"] == prompt * 1 + tokens * 2
    # one prefill: the later choices found the first one's prompt blocks in the prefix cache
    assert backend.engine.block_manager.prefix_hits - hits >= 2 * ((prompt - 1) // 4 * 4)
    again = gateway.chat.completions.create(**ask)
    assert [c.message.content for c in again.choices] == [c.message.content for c in answer.choices]


def test_n_choices_stream_with_their_indexes(gateway):
    chunks = list(gateway.chat.completions.create(model="qwen-tiny", messages=ASK, n=2, temperature=1.0, seed=3,
                                                  max_tokens=6, stream=True, stream_options={"include_usage": True},
                                                  logprobs=True))
    texts, finished, tokens = {0: "", 1: ""}, set(), 0
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finished |= {c.index} if c.finish_reason else set()
            tokens += len(c.logprobs.content) if c.logprobs else 0
    assert finished == {0, 1}
    assert all(texts.values())
    assert chunks[-1].usage.completion_tokens == tokens > 6
    whole = gateway.chat.completions.create(model="qwen-tiny", messages=ASK, n=2, temperature=1.0, seed=3,
                                            max_tokens=6)
    assert [c.message.content for c in whole.choices] == [texts[0], texts[1]]


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_equal_the_replica_servers(stack, stream):
    gateway, _, _, replica, _ = stack
    ask = dict(model="qwen-tiny", prompt="The weather in Paris is", max_tokens=6, temperature=0, logprobs=3)
    ours, theirs = (_completion_logprobs(client, ask, stream) for client in (gateway, replica))
    assert [ours[k] for k in ("tokens", "text_offset")] == [theirs[k] for k in ("tokens", "text_offset")]
    assert ours["token_logprobs"] == pytest.approx(theirs["token_logprobs"], abs=1e-5)
    for a, b in zip(ours["top_logprobs"], theirs["top_logprobs"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert len(ours["tokens"]) == 6
    assert all(len(top) == 3 for top in ours["top_logprobs"])


def test_chat_logprobs_equal_the_replica_servers(stack):
    gateway, _, _, replica, _ = stack
    ask = dict(model="qwen-tiny", messages=ASK, max_tokens=5, temperature=0, logprobs=True, top_logprobs=4)
    ours, theirs = (c.chat.completions.create(**ask).choices[0].logprobs.content for c in (gateway, replica))
    assert len(ours) == 5
    for a, b in zip(ours, theirs, strict=True):  # equal up to float noise (the batches' shapes differ)
        assert (a.token, a.bytes, [t.token for t in a.top_logprobs]) == (b.token, b.bytes, [t.token for t in b.top_logprobs])
        assert [a.logprob, *(t.logprob for t in a.top_logprobs)] == pytest.approx(
            [b.logprob, *(t.logprob for t in b.top_logprobs)], abs=1e-5)


def _completion_logprobs(client, ask: dict, stream: bool) -> dict:
    if not stream:
        return client.completions.create(**ask).choices[0].logprobs.model_dump()
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in client.completions.create(**ask, stream=True):
        for key, items in (chunk.choices[0].logprobs.model_dump() if chunk.choices and chunk.choices[0].logprobs
                           else {}).items():
            merged[key] += items or []
    return merged


def test_logit_bias_reaches_the_sampler_and_a_token_outside_the_vocabulary_is_a_400(stack):
    gateway, billing, tenant, _, backend = stack
    token = backend.tokenizer.convert_tokens_to_ids(backend.tokenizer.tokenize("hello")[0])
    answer = gateway.completions.create(model="qwen-tiny", prompt="say", max_tokens=4, temperature=1.0, seed=2,
                                        logit_bias={str(token): 100}, logprobs=0)
    assert answer.choices[0].logprobs.tokens == [backend.tokenizer.decode([token])] * 4
    before = len(billing.usage(tenant))
    with pytest.raises(openai.BadRequestError) as err:
        gateway.completions.create(model="qwen-tiny", prompt="say", max_tokens=4, logit_bias={"99999999": 5})
    assert err.value.body["param"] == "logit_bias"
    assert len(billing.usage(tenant)) == before


def test_vllm_extensions_repetition_penalty_and_top_k_equal_the_replica_servers(stack):
    gateway, _, _, replica, _ = stack
    ask = dict(model="qwen-tiny", prompt="a b a b a b", max_tokens=6, temperature=0.8, seed=4, logprobs=1)

    def run(client, **extra):
        lp = client.completions.create(**ask, extra_body=extra).choices[0].logprobs
        return lp.tokens, lp.token_logprobs

    plain = run(gateway)
    for extra in ({"repetition_penalty": 3.0}, {"top_k": 2}):
        (tokens, ours), (their_tokens, theirs) = run(gateway, **extra), run(replica, **extra)
        assert tokens == their_tokens, extra
        assert ours == pytest.approx(theirs, abs=1e-5), extra
        assert (tokens, ours) != plain, extra  # the parameter changed the distribution (or the draw)


def test_what_remains_unsupported_is_a_400(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.chat.completions.create(model="qwen-tiny", messages=ASK, max_tokens=4,
                                        response_format={"type": "json_schema", "json_schema": {"name": "x"}})
