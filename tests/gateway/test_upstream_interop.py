"""The gateway against OpenAI-compatible upstreams of every socket habit (tests/upstream_styles.py, threaded
http.server processes' way of writing, no network): what goes upstream is only what the client sent (and the
catalog's `defaults:`), an upstream's 4xx reaches the tenant as it came, a refused upstream key is the operator's
503 and falls back, and a hung upstream costs one first-token time-out, then nothing while its breaker is open."""
from __future__ import annotations

import json
import os
import threading
import time

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from gateway.catalog import Catalog
from tests.backends.test_failover import MODEL as SMALL
from tests.upstream_styles import upstream
from tests.harness import gateway_app
from tests.util import serve

CONTEXT_ERROR = {"message": "This model's maximum context length is 8 tokens. However, your messages resulted in 9.",
                 "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def echo(body: dict):
    """Answers with the parameters it was sent (all but the messages and the stream switches), as JSON text."""
    if body["messages"][-1]["content"] == "too long":
        return 400, {"error": CONTEXT_ERROR}
    text = json.dumps({k: v for k, v in body.items() if k not in ("messages", "stream", "stream_options")},
                      sort_keys=True)
    if body.get("stream"):
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": body["model"]}
        return [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                {**chunk, "choices": [{"index": 0, "delta": {"content": text}}]},
                {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {**chunk, "choices": [], "usage": USAGE}]
    return {"id": "c", "object": "chat.completion", "model": body["model"], "usage": USAGE,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def quiet(body: dict):
    """A tool call and no usage at all (as llama-cpp-python's server streams): the arguments split mid-string."""
    if not body.get("stream"):
        return {"id": "q", "object": "chat.completion", "model": body["model"], "choices": [{"index": 0, "message": {
            "role": "assistant", "content": None, "tool_calls": [CALL]}, "finish_reason": "tool_calls"}]}
    chunk = {"id": "q", "object": "chat.completion.chunk", "model": body["model"]}
    args = CALL["function"]["arguments"]
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    return [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}]},
            *[{**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}}]}
              for p in (args[:5], args[5:11], args[11:])],
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]


def greedy(body: dict):
    """Ignores max_tokens: 462 tokens whatever it was asked (an upstream seen doing so), and says so in its usage."""
    return {"id": "g", "object": "chat.completion", "model": body["model"],
            "usage": {"prompt_tokens": 7, "completion_tokens": 462, "total_tokens": 469},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 462}, "finish_reason": "stop"}]}


def completions(body: dict):
    """A token-id replica's answer (our engine server's shape), for when it is not hung."""
    chunk = {"id": "r", "object": "text_completion", "model": body["model"]}
    return [{**chunk, "choices": [{"index": 0, "text": "ok", "token_ids": [1], "finish_reason": "stop"}],
             "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 1}}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    hang, replica_hang = threading.Event(), threading.Event()
    os.environ["INTEROP_WRONG_KEY"] = "sk-wrong"
    with upstream("nagle", echo) as plain, upstream("nodelay", echo, key="sk-right") as locked, \
            upstream("nagle", echo, hang=hang) as hung, upstream("nagle-chunked", quiet) as silent, \
            upstream("nodelay", greedy) as overrunning, \
            upstream("nodelay", completions, hang=replica_hang) as replica:
        price = {"input": 1.0, "output": 2.0}

        def model(name, url, **more):
            return {"name": name, "kind": "openai", "base_url": url, "upstream_model": "m", "price": price, **more}

        catalog = Catalog.model_validate({
            "models": [model("plain", plain), model("tuned", plain, defaults={"temperature": 0.25}, max_output_tokens=64),
                       model("locked", locked, api_key_env="INTEROP_WRONG_KEY", health_interval_s=0.2),
                       model("hung", hung, first_token_timeout_s=1.0), model("quiet", silent),
                       model("greedy", overrunning),
                       {"name": "replica", "kind": "replicas", "urls": [replica.removesuffix("/v1")],
                        "tokenizer": str(SMALL), "first_token_timeout_s": 1.0, "price": price}],
            "routes": [{"name": "keyed", "fallbacks": ["locked", "plain"], "policy": "fallback"},
                       {"name": "hung-first", "fallbacks": ["hung", "plain"], "policy": "fallback"},
                       {"name": "replica-first", "fallbacks": ["replica", "plain"], "policy": "fallback"}]})
        tmp = tmp_path_factory.mktemp("interop")
        wiring = gateway_app(f"sqlite:///{tmp / 'ledger.db'}", catalog=catalog)
        tenant_id, key = wiring.tenant()
        with serve(wiring.app) as url:
            yield {"url": url, "key": key, "billing": wiring.billing, "tenant": tenant_id, "hang": hang,
                   "replica_hang": replica_hang}
        hang.clear()
        replica_hang.clear()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key=gw["key"], max_retries=0)


def sent(gw, model: str, stream: bool = False, **params) -> dict:
    messages = [{"role": "user", "content": "which parameters?"}]
    if not stream:
        return json.loads(client(gw).chat.completions.create(model=model, messages=messages, **params)
                          .choices[0].message.content)
    chunks = client(gw).chat.completions.create(model=model, messages=messages, stream=True, **params)
    return json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))


@pytest.mark.parametrize("stream", [False, True])
def test_only_what_the_client_sent_goes_upstream(gw, stream):
    assert sent(gw, "plain", stream) == {"model": "m"}  # no temperature, top_p or max_tokens of ours
    assert sent(gw, "plain", stream, temperature=0.3, max_tokens=12, stop=["zz"]) == {
        "model": "m", "temperature": 0.3, "max_tokens": 12, "stop": ["zz"]}


def test_the_catalogs_defaults_apply_only_to_what_the_client_left_out(gw):
    assert sent(gw, "tuned") == {"model": "m", "temperature": 0.25, "max_tokens": 64}
    assert sent(gw, "tuned", temperature=1.5, max_completion_tokens=9) == {
        "model": "m", "temperature": 1.5, "max_completion_tokens": 9}


def test_an_upstream_4xx_reaches_the_tenant_unchanged_and_costs_nothing(gw):
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).chat.completions.create(model="plain", messages=[{"role": "user", "content": "too long"}])
    assert err.value.body == CONTEXT_ERROR
    assert gw["billing"].ledger_totals(gw["tenant"])["open_reservations"] == 0


def test_a_refused_upstream_key_is_the_operators_503_and_the_group_falls_back(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="keyed", messages=[{"role": "user", "content": "which parameters?"}])
    assert raw.headers["x-ferryman-model"] == "plain"
    assert raw.headers["x-ferryman-fallback-from"] == "locked"
    with pytest.raises(openai.InternalServerError) as err:
        client(gw).chat.completions.create(model="locked", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
    assert err.value.body["code"] == "upstream_auth_failed"
    assert "sk-wrong" not in err.value.body["message"]
    ready = httpx.get(gw["url"] + "/ready")
    assert ready.status_code == 503
    assert ready.json()["upstreams"]["locked"]["state"] == "down"
    assert "credentials" in ready.json()["upstreams"]["locked"]["reason"]
    assert ready.json()["upstreams"]["plain"] == {"state": "up"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openai", "replicas"])
def test_a_hung_upstream_costs_one_first_token_timeout_then_nothing(gw, kind):
    """Its health endpoint still answers (the probes see nothing wrong): the breaker is what notices. The same
    module (backends/breaker.py) for a `kind: openai` model and for each replica of a `kind: replicas` one."""
    name, hang = ("hung", gw["hang"]) if kind == "openai" else ("replica", gw["replica_hang"])
    hang.set()
    try:
        took = []
        for _ in range(3):
            start = time.perf_counter()
            raw = client(gw).chat.completions.with_raw_response.create(
                model=f"{name}-first", messages=[{"role": "user", "content": "which parameters?"}], stream=True)
            assert [c for c in raw.parse()]  # the whole stream, from the model that served
            took.append(time.perf_counter() - start)
            assert raw.headers["x-ferryman-model"] == "plain"
            assert raw.headers["x-ferryman-fallback-from"] == name
        state = httpx.get(gw["url"] + "/ready").json()["upstreams"][name]
    finally:
        hang.clear()
    assert took[0] >= 1.0  # the first request waited one first-token time-out
    assert max(took[1:]) < 1.0  # the breaker is open: the next ones go straight to the next tier
    if kind == "openai":
        assert state["state"] == "open"
    else:  # its one replica's breaker is open, so the model is down, and /ready says which replica and why
        assert state["state"] == "down"
        [(url, replica)] = state["replicas"].items()
        assert replica["state"] == "open"
        assert "no response in 1 s" in replica["reason"]


@pytest.mark.slow
def test_an_upstream_without_usage_is_billed_by_one_counting_rule_whole_or_streamed(gw):
    """No tokenizer in the catalog: the documented estimate, ceil(bytes / 4) of the prompt's texts and tools plus 4
    per message, and of the answer's text and tool-call names and arguments; the usage says `estimated`."""
    messages = [{"role": "user", "content": "weather in Paris?"}]
    prompt = -(-len(("weather in Paris?" + json.dumps(WEATHER)).encode()) // 4) + 4
    completion = -(-len("get_weather" + CALL["function"]["arguments"]) // 4)
    whole = httpx.post(gw["url"] + "/v1/chat/completions", headers={"authorization": f"Bearer {gw['key']}"},
                       json={"model": "quiet", "messages": messages, "tools": WEATHER})
    streamed = client(gw).chat.completions.create(model="quiet", messages=messages, tools=WEATHER, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = list(streamed)
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                   if c.choices and c.choices[0].delta.tool_calls)
    assert args == CALL["function"]["arguments"]
    assert whole.json()["choices"][0]["message"]["tool_calls"][0]["function"] == CALL["function"]
    usages = [whole.json()["usage"], chunks[-1].usage.model_dump()]
    for usage in usages:
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion)
        assert usage["estimated"] is True
    records = [r for r in gw["billing"].usage(gw["tenant"]) if r["model"] == "quiet"]
    assert len(records) == 2
    for r in records:
        assert (r["prompt_tokens"], r["completion_tokens"], r["estimated"]) == (prompt, completion, True)
        assert r["cost_micros"] == -(-(prompt * 1_000_000 + completion * 2_000_000) // 1_000_000)


@pytest.mark.slow
def test_an_upstream_past_its_hold_is_billed_the_true_cost_logged_and_counted(gw, caplog):
    """max_tokens 10, 462 generated: the tenant is billed the 462 (the operator paid for them), the record keeps
    them, the overrun is a warning and a metric."""
    def overruns() -> float:  # the gateway runs in this process: its registry is this one
        return REGISTRY.get_sample_value("ferryman_billing_overruns_total", {"model": "greedy"}) or 0.0

    before = overruns()
    with caplog.at_level("WARNING", logger="ferryman"):
        raw = client(gw).chat.completions.with_raw_response.create(
            model="greedy", messages=[{"role": "user", "content": "which parameters?"}], max_tokens=10)
    cost = -(-(7 * 1_000_000 + 462 * 2_000_000) // 1_000_000)
    hold = len("which parameters?") + 8 + 64 + 2 * 10  # prompt bound + template allowance at $1/M, 10 out at $2/M
    assert raw.headers["x-ferryman-cost-usd"] == f"{cost / 1e6:.6f}"
    record = gw["billing"].usage(gw["tenant"], limit=1)[0]
    assert (record["model"], record["completion_tokens"], record["cost_micros"]) == ("greedy", 462, cost)
    assert overruns() == before + 1
    assert f"past its hold of ${hold / 1e6:.6f}" in caplog.text
