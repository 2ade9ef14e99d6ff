"""Part of the interop suite: the gateway against llama-cpp-python's server as it really answers. Recorded (not
written by hand) from llama-cpp-python 0.3.36's server on an f32 GGUF of models/large by
`bench/llamacpp_interop.py DIR --record` (DIR built by bench/llamacpp_setup.sh): each tests/transcripts/llamacpp_*.sse
says its request in its first line; the .json beside it is the server's whole answer to the same request. Its
quirks: no usage in a stream even when asked; a streamed tool call repeats the call's id and name (and the
deprecated `function_call`) in every delta; `finish_reason: tool_calls` on a call cut by max_tokens. Replayed by
a local upstream (the stream byte for byte, in uneven pieces), the recorded request sent through the gateway:
the client gets what the server said, a whole answer is billed its usage x price, a stream the catalog
tokenizer's count (models/large's tokenizer is the GGUF's: it counts the prompt as the server did)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from gateway.catalog import Catalog
from tests.gateway.test_upstream_transcripts import assembled
from tests.harness import gateway_app
from tests.upstream_styles import upstream
from tests.util import serve

TRANSCRIPTS = Path(__file__).parents[1] / "transcripts"
LARGE = Path(__file__).parents[2] / "models" / "large"
PRICE = {"input": 0.5, "output": 1.5}  # USD per 1M tokens
NAMES = ("llamacpp_text", "llamacpp_tools")
CUT = "llamacpp_text_cut"  # the text stream as the server ends one it interrupts: [DONE] with no finish_reason


def recorded(name: str) -> tuple[dict, dict, bytes]:
    """The request as recorded (the .sse's first line), the server's whole answer to it, and its stream."""
    stream = (TRANSCRIPTS / f"{name}.sse").read_bytes()
    request = json.loads(stream.split(b"\n", 1)[0].split(b"--record: ", 1)[1])
    return request, json.loads((TRANSCRIPTS / f"{name}.json").read_text()), stream


def replay(body: dict) -> dict | bytes:
    _, answer, stream = recorded(body["model"].removesuffix("_cut"))
    if body["model"] == CUT:
        stream = b"\n\n".join(e for e in stream.split(b"\n\n") if b'"finish_reason": "' not in e)
    return stream if body.get("stream") else answer


def sent(request: dict) -> dict:
    """The recorded request's parameters, for the gateway's model (the stream flags go by each test)."""
    return {k: v for k, v in request.items() if k not in ("model", "stream", "stream_options")}


def calls_in(message: dict) -> list[tuple[str, str, str]]:
    return [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or ()]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with upstream("nodelay-chunked", replay) as url:
        catalog = Catalog.model_validate({"models": [
            {"name": name, "kind": "openai", "base_url": url, "upstream_model": name, "price": PRICE,
             "health_path": None, "tokenizer": str(LARGE)} for name in NAMES + (CUT,)]})
        wiring = gateway_app(f"sqlite:///{tmp_path_factory.mktemp('llamacpp') / 'ledger.db'}", catalog=catalog)
        tenant_id, key = wiring.tenant()
        with serve(wiring.app) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
            yield {"client": client, "billing": wiring.billing, "tenant": tenant_id}


def billed(gw, request_id: str) -> dict:
    [record] = [r for r in gw["billing"].usage(gw["tenant"]) if r["request_id"] == request_id]
    return record


@pytest.mark.parametrize("name", NAMES)
def test_a_whole_answer_reaches_the_client_as_the_server_sent_it_and_is_billed_its_usage(gw, name):
    request, answer, _ = recorded(name)
    raw = gw["client"].chat.completions.with_raw_response.create(model=name, **sent(request))
    got, [choice] = raw.parse(), answer["choices"]
    assert got.choices[0].message.content == choice["message"]["content"]
    assert calls_in(got.choices[0].message.model_dump()) == calls_in(choice["message"])
    assert got.choices[0].finish_reason == choice["finish_reason"]
    prompt, completion = answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (prompt, completion)
    cost = math.ceil(prompt * PRICE["input"] + completion * PRICE["output"])  # micro-USD
    assert raw.headers["x-ferryman-cost-usd"] == f"{cost / 1e6:.6f}"
    record = billed(gw, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"], record["cost_micros"]) == (prompt, completion, cost)
    assert record["estimated"] is False


@pytest.mark.parametrize("name", NAMES)
def test_a_stream_reaches_the_client_whole_and_is_billed_the_tokenizers_count_with_each_call_name_once(gw, name):
    request, answer, stream = recorded(name)
    direct = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith(b"data: {")]
    assert not any(chunk.get("usage") for chunk in direct)  # the server's quirk: no usage when streaming
    raw = gw["client"].chat.completions.with_raw_response.create(model=name, stream=True, **sent(request),
                                                                 stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text, calls = assembled(chunks)
    assert (text, calls) == assembled(openai.types.chat.ChatCompletionChunk.model_validate(c) for c in direct)
    [choice] = answer["choices"]  # the same greedy request whole: the same text and call (a fresh id each time)
    assert text == (choice["message"]["content"] or "")
    assert [c[1:] for c in calls] == [c[1:] for c in calls_in(choice["message"])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        choice["finish_reason"]]

    tokenizer = AutoTokenizer.from_pretrained(LARGE)
    prompt = len(tokenizer.apply_chat_template(request["messages"], tools=request.get("tools"), tokenize=True,
                                               add_generation_prompt=True, return_dict=False))
    assert prompt == answer["usage"]["prompt_tokens"]  # the GGUF tokenizes as models/large does
    completion = len(tokenizer.encode(text + "".join(n + a for _, n, a in calls), add_special_tokens=False))
    told = chunks[-1].usage.model_dump()
    assert (told["prompt_tokens"], told["completion_tokens"], told["estimated"]) == (prompt, completion, True)
    cost = math.ceil(prompt * PRICE["input"] + completion * PRICE["output"])
    record = billed(gw, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"], record["cost_micros"]) == (prompt, completion, cost)
    assert told["cost_usd"] == cost / 1e6


def test_a_stream_the_server_cut_short_ends_in_an_error_event_and_costs_nothing(gw):
    """llama-cpp-python ends a stream it interrupts (another request arrived) with [DONE] and no finish_reason; a
    direct client sees a short answer that looks whole. Through Ferryman it is an error event, billed zero (the
    rule for failures of the gateway's dependencies, docs/BILLING.md), never a made-up "stop"."""
    request, _, _ = recorded("llamacpp_text")
    text = ""
    with pytest.raises(openai.APIError, match="without a finish_reason"):
        stream = gw["client"].chat.completions.create(model=CUT, stream=True, **sent(request))
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].finish_reason)
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text  # the cut came after text had reached the client
    [record] = [r for r in gw["billing"].usage(gw["tenant"]) if r["model"] == CUT]
    assert record["status"] in ("unavailable", "error")
    assert record["cost_micros"] == 0
