"""The OpenAI surface, driven by the official `openai` client against a gateway on a loopback port."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.gateway.conftest import ADMIN_KEY



def client(gw, key=None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key or gw.api_key, max_retries=0)


def test_chat_routes_by_difficulty_and_records_usage(gateway, tokenizer):
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "reverse abcd"}], max_tokens=5)
    reply = raw.parse()
    assert raw.headers["x-ferryman-route"] == "ferryman-small"
    assert float(raw.headers["x-ferryman-difficulty"]) == pytest.approx(0.12, abs=1e-4)
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": "reverse abcd"}],
                                               add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(prompt_ids, add_special_tokens=False)
    # The echo backend answers with the prompt's first five tokens, decoded one by one.
    assert reply.choices[0].message.content == "".join(tokenizer.decode([t]) for t in prompt_ids[:5])
    assert reply.choices[0].finish_reason == "length"
    assert reply.model == "ferryman-small"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt_ids), 5)
    [record] = gateway.records()
    assert record["request_id"] == raw.headers["x-request-id"]
    assert (record["model"], record["route"], record["status"]) == ("ferryman-small", "ferryman-small", "ok")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (len(prompt_ids), 5)
    expected = gateway.billing.cost_micros("ferryman-small", len(prompt_ids), 0, 5)
    assert record["cost_micros"] == expected > 0
    assert raw.headers["x-ferryman-cost-usd"] == f"{expected / 1e6:.6f}"


def test_hard_query_goes_large_and_named_model_pins(gateway):
    hard = "explain " + "x" * 120
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": hard}], max_tokens=2)
    assert raw.headers["x-ferryman-route"] == "ferryman-large" and raw.parse().model == "ferryman-large"
    pinned = client(gateway).chat.completions.with_raw_response.create(
        model="ferryman-large", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert pinned.headers["x-ferryman-route"] == "ferryman-large"
    assert "x-ferryman-difficulty" not in pinned.headers


def test_streaming_chat_with_usage(gateway):
    stream = client(gateway).chat.completions.create(
        model="ferryman-small", messages=[{"role": "user", "content": "copy xyz"}], max_tokens=4,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    [record] = gateway.records()
    assert record["completion_tokens"] == 4 and record["status"] == "ok"
    assert text


def test_completions_plain_and_streamed(gateway, tokenizer):
    c = client(gateway)
    whole = c.completions.create(model="ferryman-large", prompt="Once upon a time", max_tokens=3)
    ids = [tokenizer.bos_token_id] + tokenizer.encode("Once upon a time", add_special_tokens=False)
    assert whole.usage.prompt_tokens == len(ids)
    streamed = list(c.completions.create(model="ferryman-large", prompt="Once upon a time", max_tokens=3, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == whole.choices[0].text
    assert len(gateway.records()) == 2


def test_models_endpoint_lists_routes(gateway):
    names = {m.id for m in client(gateway).models.list()}
    assert names == {"auto", "ferryman-small", "ferryman-large"}


def test_bad_key_is_refused_and_nothing_is_billed(gateway):
    with pytest.raises(openai.AuthenticationError) as err:
        client(gateway, key="fm-not-a-key").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "invalid_api_key"
    assert gateway.records() == []


@pytest.mark.parametrize("change, param", [
    ({"temperature": 3.0}, "temperature"),
    ({"n": 129}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_parameters_get_openai_errors_and_change_nothing(gateway, change, param):
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway).chat.completions.create(**body)
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"].startswith(param)
    assert gateway.records() == []
    assert gateway.billing.ledger_totals(gateway.tenant_id)["open_reservations"] == 0


def test_unknown_model_is_404(gateway):
    with pytest.raises(openai.NotFoundError) as err:
        client(gateway).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"


def test_malformed_json_is_400(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"{nope",
                   headers={"authorization": f"Bearer {gateway.api_key}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_budget_refusal_before_any_work(gateway):
    gateway.billing.set_budget(gateway.tenant_id, limit_micros=1, period="monthly")
    with pytest.raises(openai.APIStatusError) as err:
        client(gateway).chat.completions.create(model="ferryman-large", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=50)
    assert err.value.status_code == 402 and err.value.body["code"] == "budget_exceeded"
    assert gateway.records() == []
    assert gateway.billing.ledger_totals(gateway.tenant_id) == {"spent_micros": 0, "reserved_micros": 0,
                                                                    "open_reservations": 0}


def test_rate_limit_429_with_headers(gateway):
    gateway.billing.update_tenant(gateway.tenant_id, rpm=2)
    gateway.billing._invalidate()
    c = client(gateway)
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model="ferryman-small", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        assert "x-ratelimit-remaining-requests" in raw.headers
    with pytest.raises(openai.RateLimitError) as err:
        c.chat.completions.create(model="ferryman-small", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(gateway.records()) == 2


def test_client_disconnect_mid_stream_settles_once(slow_gateway):
    body = {"model": "ferryman-large", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
            "stream": True}
    headers = {"authorization": f"Bearer {slow_gateway.api_key}"}
    with httpx.stream("POST", slow_gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        request_id = r.headers["x-request-id"]
    assert any(line.startswith("data: ") for line in got)
    deadline = time.time() + 10
    while not slow_gateway.records() and time.time() < deadline:
        time.sleep(0.05)
    [record] = slow_gateway.records()
    assert record["request_id"] == request_id and record["status"] == "cancelled"
    assert 0 < record["completion_tokens"] < 200
    assert request_id in slow_gateway.backends["ferryman-large"].aborted
    assert slow_gateway.billing.ledger_totals(slow_gateway.tenant_id)["open_reservations"] == 0


def test_metrics_endpoint(gateway):
    client(gateway).chat.completions.create(model="ferryman-small", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=1)
    assert httpx.get(gateway.url + "/metrics").status_code == 401  # closed: the admin key or the metrics key
    assert httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.api_key}"}).status_code == 401
    text = httpx.get(gateway.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'ferryman_requests_total{route="ferryman-small",status="ok"}' in text
