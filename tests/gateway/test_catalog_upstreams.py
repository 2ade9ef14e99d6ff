"""A catalog of real processes behind the gateway, driven by the official `openai` client: two `ferryman engine
serve` replicas (kind replicas), separate OpenAI-compatible servers that speak only text (kind openai,
tests/fake_upstream.py), and route groups mixing both."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from backends.engine.chat import render_chat
from gateway.catalog import Catalog
from tests.fake_upstream import usage_of
from tests.harness import free_port, gateway_app, wait_healthy
from tests.util import serve

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "models" / "small"
PRICES = {"local": (200_000, 50_000, 800_000), "ext-big": (2_500_000, 1_250_000, 10_000_000)}  # micro-USD per 1M
HARD = "please explain in great detail why the sky looks blue at noon and red at dusk"  # router: strongest tier
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]


def _start(args: list[str]) -> tuple[str, subprocess.Popen]:
    port = free_port()
    proc = subprocess.Popen([*args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "FAKE_UPSTREAM_KEY": "sk-fake-upstream"},
                            cwd=ROOT)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def processes():
    fake = [sys.executable, "-m", "tests.fake_upstream"]
    replica = [str(Path(sys.executable).parent / "ferryman"), "engine", "serve", "--model", str(SMALL), "--name", "local"]
    started = {"replica1": _start(replica), "replica2": _start(replica),
               "ext-big": _start([*fake, "--name", "ext-big", "--key-env", "FAKE_UPSTREAM_KEY"]),
               "ext-limited": _start([*fake, "--name", "ext-limited", "--status", "429"]),
               "ext-quiet": _start([*fake, "--name", "ext-quiet", "--no-usage"]),
               "ext-doomed": _start([*fake, "--name", "ext-doomed"])}
    try:
        for url, proc in started.values():
            wait_healthy(url, proc)
        yield {name: url for name, (url, _) in started.items()}, {name: proc for name, (_, proc) in started.items()}
    finally:
        for _, proc in started.values():
            proc.kill()
            proc.wait()


def _catalog(urls: dict) -> Catalog:
    def openai_model(name, price, **more):
        return {"name": name, "kind": "openai", "base_url": urls[name] + "/v1", "price": price, **more}

    one = {"input": 1.0, "output": 1.0}
    return Catalog.model_validate({
        "models": [
            {"name": "local", "kind": "replicas", "urls": [urls["replica1"], urls["replica2"]], "tokenizer": str(SMALL),
             "price": {"input": 0.2, "cached_input": 0.05, "output": 0.8}},
            openai_model("ext-big", {"input": 2.5, "cached_input": 1.25, "output": 10.0}, api_key_env="FAKE_UPSTREAM_KEY",
                         context_length=128000),
            openai_model("ext-limited", one), openai_model("ext-quiet", one), openai_model("ext-doomed", one),
            {"name": "dead-large", "kind": "replicas", "urls": [f"http://127.0.0.1:{free_port()}"],
             "tokenizer": str(SMALL), "price": {"input": 2.0, "output": 8.0}}],
        "routes": [{"name": "auto", "tiers": ["local", "ext-big"]},
                   {"name": "limited", "policy": "fallback", "fallbacks": ["ext-limited", "ext-big"]},
                   {"name": "all-down", "tiers": ["local", "dead-large"]},
                   {"name": "doomed", "tiers": ["local", "ext-doomed"]}]})


@pytest.fixture(scope="module")
def gw(processes, tmp_path_factory):
    urls, procs = processes
    os.environ["FAKE_UPSTREAM_KEY"] = "sk-fake-upstream"  # the catalog names the variable; the key is never in it
    tmp = tmp_path_factory.mktemp("catalog")
    wiring = gateway_app(f"sqlite:///{tmp / 'ledger.db'}", catalog=_catalog(urls))
    tenant_id, key = wiring.tenant()
    with serve(wiring.app) as url:
        yield {"url": url, "key": key, "billing": wiring.billing, "tenant": tenant_id, "procs": procs, "urls": urls}


def client(gw, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw["url"] + "/v1", api_key=key or gw["key"], max_retries=0)


def record(gw, request_id: str) -> dict:
    return next(r for r in gw["billing"].usage(gw["tenant"]) if r["request_id"] == request_id)


def micros(model: str, prompt: int, completion: int) -> int:
    price_in, _, price_out = PRICES[model]
    return -(-(prompt * price_in + completion * price_out) // 1_000_000)  # the ledger rounds up to the micro-dollar


def test_replicas_render_with_their_own_tokenizer_plain_and_streamed(gw):
    messages = [{"role": "user", "content": "reverse: s h i p"}]
    raw = client(gw).chat.completions.with_raw_response.create(model="local", messages=messages, max_tokens=8,
                                                               temperature=0)
    reply = raw.parse()
    prompt = render_chat(AutoTokenizer.from_pretrained(SMALL), messages)
    assert raw.headers["x-ferryman-model"] == "local"
    assert reply.model == "local"
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.choices[0].message.content
    chunks = list(client(gw).chat.completions.create(model="local", messages=messages, max_tokens=8, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    rec = record(gw, raw.headers["x-request-id"])
    assert rec["cost_micros"] == micros("local", len(prompt), reply.usage.completion_tokens)
    assert not rec["estimated"]


def test_text_upstream_plain_and_streamed_billed_at_its_reported_usage(gw):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]
    expected = usage_of(messages, "echo hello there world")
    raw = client(gw).chat.completions.with_raw_response.create(model="ext-big", messages=messages, max_tokens=50)
    reply = raw.parse()
    assert reply.choices[0].message.content == "echo hello there world"
    assert raw.headers["x-ferryman-model"] == "ext-big"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected["prompt_tokens"],
                                                                         expected["completion_tokens"])
    cost = micros("ext-big", expected["prompt_tokens"], expected["completion_tokens"])
    assert raw.headers["x-ferryman-cost-usd"] == f"{cost / 1e6:.6f}"
    rec = record(gw, raw.headers["x-request-id"])
    assert (rec["cost_micros"], rec["estimated"], rec["model"]) == (cost, False, "ext-big")

    stream = client(gw).chat.completions.with_raw_response.create(
        model="ext-big", messages=messages, max_tokens=50, stream=True, stream_options={"include_usage": True})
    chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo hello there world"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == expected["prompt_tokens"]
    assert record(gw, stream.headers["x-request-id"])["cost_micros"] == cost


def test_tool_call_round_trip_whole_and_streamed(gw):
    ask = [{"role": "user", "content": "weather in Paris?"}]
    first = client(gw).chat.completions.create(model="ext-big", messages=ask, tools=WEATHER, tool_choice="auto")
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    answer = [*ask, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    final = client(gw).chat.completions.create(model="ext-big", messages=answer, max_tokens=20)
    assert final.choices[0].message.content == "the tool said sunny"

    chunks = list(client(gw).chat.completions.create(model="ext-big", messages=ask, tools=WEATHER, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert calls[0].function.name == "get_weather"
    assert calls[0].id == "call_1"
    assert "".join(tc.function.arguments or "" for tc in calls) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_openai_parameters_reach_the_upstream(gw):
    reply = client(gw).chat.completions.create(
        model="ext-big", messages=[{"role": "developer", "content": "terse"}, {"role": "user", "content": "which parameters?"}],
        response_format={"type": "json_object"}, logprobs=True, top_logprobs=2, presence_penalty=0.5,
        frequency_penalty=0.5, seed=7, stop=["zzz"], user="u-1", max_completion_tokens=40, logit_bias={"50256": -100})
    sent = json.loads(reply.choices[0].message.content)
    for name in ("response_format", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "seed", "stop",
                 "logit_bias",
                 "user", "max_completion_tokens", "model"):
        assert name in sent
    for name in ("max_tokens", "temperature", "top_p"):  # only what the client sent: no defaults of ours
        assert name not in sent
    assert [t.token for t in reply.choices[0].logprobs.content] == reply.choices[0].message.content.split()


def test_n_choices_on_replicas_are_each_billed(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": "reverse: s h i p"}], n=2, max_tokens=6, temperature=1.0,
        seed=5, logprobs=True)
    reply = raw.parse()
    assert [c.index for c in reply.choices] == [0, 1]
    tokens = sum(len(c.logprobs.content) for c in reply.choices)
    assert reply.usage.completion_tokens == tokens == record(gw, raw.headers["x-request-id"])["completion_tokens"]


def test_a_parameter_the_model_cannot_honour_is_a_400_naming_it(gw):
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], tools=WEATHER)
    assert err.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as err:  # a text upstream answers one choice here
        client(gw).chat.completions.create(model="ext-big", messages=[{"role": "user", "content": "hi"}], n=2)
    assert err.value.body["param"] == "n"
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).chat.completions.create(model="ext-big", messages=[{"role": "user", "content": image}])
    assert err.value.body["param"] == "messages.0.content"
    assert "vision" in err.value.body["message"]
    # In a group, tools narrow the tiers to those that can call them: `auto` sends an easy question to ext-big.
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                                               tools=WEATHER)
    assert raw.headers["x-ferryman-model"] == "ext-big"


def test_the_fake_upstream_speaks_only_text(gw):
    r = httpx.post(gw["urls"]["ext-big"] + "/v1/chat/completions", json={"model": "ext-big", "prompt": [1, 2, 3]},
                   headers={"authorization": "Bearer sk-fake-upstream"})
    assert r.status_code == 400
    assert "token-id" in r.json()["error"]["message"]


def test_mixed_group_routes_by_difficulty_and_counts_savings_against_its_strongest_tier(gw):
    easy = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "copy: a b"}], max_tokens=4, temperature=0)
    hard = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": HARD}], max_tokens=40)
    assert (easy.headers["x-ferryman-model"], easy.headers["x-ferryman-route"]) == ("local", "local")
    assert (hard.headers["x-ferryman-model"], hard.headers["x-ferryman-route"]) == ("ext-big", "ext-big")
    cheap = record(gw, easy.headers["x-request-id"])
    assert cheap["route_group"] == "auto"
    assert cheap["model"] == "local"
    u = easy.parse().usage
    assert cheap["baseline_cost_micros"] == micros("ext-big", u.prompt_tokens, u.completion_tokens)
    assert cheap["cost_micros"] == micros("local", u.prompt_tokens, u.completion_tokens)


def test_429_upstream_passes_to_the_next_tier_or_reaches_the_client(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="limited", messages=[{"role": "user", "content": "hello"}], max_tokens=10)
    assert raw.parse().choices[0].message.content == "echo hello"
    assert raw.headers["x-ferryman-model"] == "ext-big"
    assert raw.headers["x-ferryman-fallback-from"] == "ext-limited"
    assert record(gw, raw.headers["x-request-id"])["route_group"] == "limited"
    with pytest.raises(openai.RateLimitError) as err:
        client(gw).chat.completions.create(model="ext-limited", messages=[{"role": "user", "content": "hello"}])
    assert err.value.body["code"] == "upstream_rate_limited"
    assert int(err.value.response.headers["retry-after"]) >= 1
    failed = [r for r in gw["billing"].usage(gw["tenant"]) if r["model"] == "ext-limited"]
    assert failed
    assert all(r["cost_micros"] == 0 and r["status"] == "unavailable" for r in failed)
    assert gw["billing"].ledger_totals(gw["tenant"])["open_reservations"] == 0


def test_with_every_large_replica_down_auto_falls_back_to_the_small_model(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="all-down", messages=[{"role": "user", "content": HARD}], max_tokens=4, temperature=0)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ferryman-model"] == "local"
    assert raw.headers["x-ferryman-fallback-from"] == "dead-large"


def test_an_upstream_without_usage_is_billed_on_an_estimate_marked_so(gw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="ext-quiet", messages=[{"role": "user", "content": "hello there"}], max_tokens=10)
    usage = raw.parse().usage
    rec = record(gw, raw.headers["x-request-id"])
    assert rec["estimated"]
    assert rec["prompt_tokens"] == usage.prompt_tokens > 0
    assert rec["completion_tokens"] > 0


def test_allow_list_decides_what_a_tenant_sees_and_may_call(gw):
    billing = gw["billing"]
    tenant = billing.create_tenant("narrow")
    key, _ = billing.create_key(tenant["id"])
    billing.update_tenant(tenant["id"], allowed_models=["ext-big", "limited"])
    assert sorted(m.id for m in client(gw, key).models.list()) == ["ext-big", "limited"]
    assert "local" in {m.id for m in client(gw).models.list()}  # others keep everything
    for name in ("auto", "local"):
        with pytest.raises(openai.PermissionDeniedError) as err:
            client(gw, key).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        assert err.value.body["code"] == "model_not_allowed"
        assert name in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client(gw, key).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert billing.usage(tenant["id"]) == []
    assert client(gw, key).chat.completions.create(model="ext-big", messages=[{"role": "user", "content": "hi"}])


def test_killed_upstream_process_falls_back_to_the_next_tier(gw):
    ask = {"model": "doomed", "messages": [{"role": "user", "content": HARD}], "max_tokens": 4, "temperature": 0}
    before = client(gw).chat.completions.with_raw_response.create(**ask)
    assert before.headers["x-ferryman-model"] == "ext-doomed"
    gw["procs"]["ext-doomed"].kill()
    gw["procs"]["ext-doomed"].wait()
    after = client(gw).chat.completions.with_raw_response.create(**ask)
    assert after.headers["x-ferryman-model"] == "local"
    assert after.headers["x-ferryman-fallback-from"] == "ext-doomed"
    chunks = list(client(gw).chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == after.parse().choices[0].message.content
    rec = record(gw, after.headers["x-request-id"])
    assert (rec["model"], rec["route_group"], rec["status"]) == ("local", "doomed", "ok")
