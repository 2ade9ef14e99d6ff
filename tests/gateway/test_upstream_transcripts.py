"""Part of the interop suite: the gateway against recorded streams of hosted providers (tests/transcripts/, written
by hand from each provider's documented format, see its README), replayed byte for byte in uneven pieces by a
local upstream. For each: the text and the tool calls the client assembles, the usage it is told, and the bill
(the record and the usage chunk's cost) are what the stream says; a stream with no usage is billed by the
documented estimate and says `estimated`."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import openai
import pytest

from gateway.catalog import Catalog
from prometheus_client import REGISTRY
from tests.backends.test_failover import MODEL as SMALL
from tests.upstream_styles import upstream
from tests.harness import gateway_app
from tests.util import serve

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"
PRICE = {"input": 1.0, "cached_input": 0.25, "output": 2.0}  # USD per 1M tokens
QUESTION = [{"role": "user", "content": "weather and time in Paris?"}]
WEATHER = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
           for name in ("get_weather", "get_time")]

# What each stream says: the answer's text, its tool calls (id, name, arguments), and (prompt, completion, cached)
# usage; None: the stream reports none.
EXPECTED = {
    "openai_tools": ("", [("call_Wx1", "get_weather", '{"city": "Paris, France"}'),
                          ("call_Tz2", "get_time", '{"tz": "Europe/Paris"}')], (91, 48, 0)),
    "openai_text": ("Bonjour à vous — ça va ? 👋", [], (1210, 9, 1024)),
    "azure_text": ("The capital of France is Paris.", [], (24, 8, 0)),
    "together_tools": ("", [("call_tg7", "get_weather", '{"city":"Lyon"}')], (204, 21, 0)),
    "together_text": ("Sure! Here it is.", [], (31, 7, 0)),
    "groq_text": ("Hello! How can I help?", [], (40, 8, 0)),
    "nodone_crlf": ("Paris is in France.", [], None),
}


def replay(body: dict) -> bytes:
    """The transcript named by the model the gateway asked for."""
    return (TRANSCRIPTS / f"{body['model']}.sse").read_bytes()


# A chat template with a long preamble of its own and the tools rendered: far more tokens than the hold's allowance
# for a template (64) plus one per byte of the texts. The catalog names it as the model's `tokenizer`.
VERBOSE = ("{{ '<|bos|>' }}{{ 'You are a helpful assistant. ' * 100 }}{% if tools %}{{ tools | tojson }}{% endif %}"
           "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def verbose_tokenizer(directory: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SMALL / name, directory / name)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": VERBOSE}))
    return directory


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with upstream("nodelay-chunked", replay) as chunked, upstream("http10", replay) as closing:
        models = [{"name": name, "kind": "openai", "base_url": closing if name == "nodone_crlf" else chunked,
                   "upstream_model": name, "price": PRICE, "health_path": None} for name in EXPECTED]
        counted = verbose_tokenizer(tmp_path_factory.mktemp("verbose"))
        models.append({**models[-1], "name": "counted", "tokenizer": str(counted)})
        catalog = Catalog.model_validate({"models": models})
        wiring = gateway_app(f"sqlite:///{tmp_path_factory.mktemp('transcripts') / 'ledger.db'}", catalog=catalog)
        tenant_id, key = wiring.tenant()
        with serve(wiring.app) as url:
            yield {"url": url, "key": key, "billing": wiring.billing, "tenant": tenant_id, "counted": counted}


def assembled(chunks) -> tuple[str, list[tuple[str, str, str]]]:
    """The text and the tool calls a client builds from the deltas (tool calls by index, arguments appended)."""
    text, calls = "", {}
    for c in chunks:
        for choice in c.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                got = calls.setdefault(call.index, ["", "", ""])
                got[0] = call.id or got[0]
                got[1] = (call.function.name or got[1]) if call.function else got[1]
                got[2] += (call.function.arguments or "") if call.function else ""
    return text, [tuple(calls[i]) for i in sorted(calls)]


def estimate(text: str, calls: list) -> tuple[int, int, int]:
    """docs/BILLING.md's estimate without a tokenizer: ceil(bytes / 4) of the prompt's texts and tools plus 4 per
    message; ceil(bytes / 4) of the answer's text and tool calls."""
    prompt = math.ceil(len((QUESTION[0]["content"] + json.dumps(WEATHER)).encode()) / 4) + 4
    return prompt, math.ceil(len((text + "".join(n + a for _, n, a in calls)).encode()) / 4), 0


@pytest.mark.parametrize("name", EXPECTED)
def test_a_providers_stream_reaches_the_client_whole_and_is_billed_what_it_says(gw, name):
    text, calls, usage = EXPECTED[name]
    client = openai.OpenAI(base_url=gw["url"] + "/v1", api_key=gw["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=name, messages=QUESTION, tools=WEATHER, stream=True,
                                                           stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert assembled(chunks) == (text, calls)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls" if calls else "stop"]

    told = chunks[-1].usage.model_dump()
    prompt, completion, cached = usage or estimate(text, calls)
    assert (told["prompt_tokens"], told["completion_tokens"], told["prompt_tokens_details"]["cached_tokens"]) == (
        prompt, completion, cached)
    assert told.get("estimated", False) is (usage is None)
    cost = math.ceil((prompt - cached) * 1.0 + cached * 0.25 + completion * 2.0)  # micro-USD: USD per 1M tokens
    [record] = [r for r in gw["billing"].usage(gw["tenant"]) if r["request_id"] == raw.headers["x-request-id"]]
    assert (record["prompt_tokens"], record["completion_tokens"], record["cached_tokens"]) == (prompt, completion, cached)
    assert (record["cost_micros"], record["estimated"], record["status"]) == (cost, usage is None, "ok")
    assert told["cost_usd"] == cost / 1e6


def test_without_usage_the_catalogs_tokenizer_counts_and_its_template_is_in_the_hold(gw):
    """The same usage-less stream, on a model whose catalog names a tokenizer: the prompt is the messages and tools
    as its chat template renders them (a 600-token preamble included), the completion the answer's text, encoded;
    the hold covered that prompt (no overrun), and the usage says `estimated`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gw["counted"])
    prompt = len(tokenizer.apply_chat_template(QUESTION, tools=WEATHER, add_generation_prompt=True, tokenize=True,
                                               return_dict=False))
    completion = len(tokenizer.encode(EXPECTED["nodone_crlf"][0], add_special_tokens=False))
    byte_bound = len(QUESTION[0]["content"].encode()) + 8 + 64 + len(json.dumps(WEATHER).encode())
    assert prompt > byte_bound  # one token a byte, 8 a message and 64 for a template would not have held it
    client = openai.OpenAI(base_url=gw["url"] + "/v1", api_key=gw["key"], max_retries=0)
    assert completion == 6  # max_tokens 6 below: the hold's completion part has no slack to hide a short prompt
    chunks = list(client.chat.completions.create(model="counted", messages=QUESTION, tools=WEATHER, stream=True,
                                                 max_tokens=6, stream_options={"include_usage": True}))
    told = chunks[-1].usage.model_dump()
    assert (told["prompt_tokens"], told["completion_tokens"], told["estimated"]) == (prompt, completion, True)
    record = next(r for r in gw["billing"].usage(gw["tenant"]) if r["model"] == "counted")
    assert (record["prompt_tokens"], record["completion_tokens"], record["estimated"]) == (prompt, completion, True)
    assert record["cost_micros"] == math.ceil(prompt * 1.0 + completion * 2.0)
    assert not REGISTRY.get_sample_value("ferryman_billing_overruns_total", {"model": "counted"})
