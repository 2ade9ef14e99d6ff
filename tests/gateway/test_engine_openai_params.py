"""The gateway passes OpenAI's parameters to an engine model as it does to a `kind: openai` one: an agent loop
with the official client (tools offered, a call forced, its result sent back as role: tool), a JSON-schema
answer that validates, chat logprobs, penalties; what remains unsupported (n > 1) is still a clear 400."""
from __future__ import annotations

import json

import jsonschema_rs
import openai
import pytest

from backends.engine import EngineBackend, EngineConfig
from billing import Billing, RateLimiter
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.config import Settings
from tests.engine.test_tool_calls import ASK, FAMILIES, WEATHER, _checkpoint, _tokenizer
from tests.util import LengthRouter, serve


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen")
    _checkpoint(path, "qwen2.5")
    _tokenizer(path, FAMILIES["qwen2.5"][1], FAMILIES["qwen2.5"][2])
    backend = EngineBackend("qwen-tiny", EngineConfig(model=str(path), name="qwen-tiny", block_size=4,
                                                      num_kv_blocks=512))
    db = tmp_path_factory.mktemp("db") / "ledger.db"
    settings = Settings(database_url=f"sqlite:///{db}", admin_key="fm-admin-test-key")
    billing = Billing(settings.database_url)
    billing.create_schema()
    catalog = Catalog.model_validate({"models": [{"name": "qwen-tiny", "kind": "engine", "path": str(path),
                                                  "price": {"input": 1.0, "output": 2.0}}]})
    app = create_app(settings, billing=billing, limiter=RateLimiter(), router=LengthRouter(),
                     backends={"qwen-tiny": backend}, tokenizer=backend.tokenizer, catalog=catalog)
    tenant = billing.create_tenant("agents")
    key, _ = billing.create_key(tenant["id"])
    with serve(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


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
    chunks = list(gateway.chat.completions.create(
        model="qwen-tiny", messages=ASK, tools=[WEATHER], temperature=0, max_tokens=200, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    json.loads(calls[0].function.arguments)


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


def test_what_remains_unsupported_is_a_400(gateway):
    with pytest.raises(openai.BadRequestError):
        gateway.chat.completions.create(model="qwen-tiny", messages=ASK, n=2, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        gateway.chat.completions.create(model="qwen-tiny", messages=ASK, max_tokens=4,
                                        response_format={"type": "json_schema", "json_schema": {"name": "x"}})
