"""Cascade mode: the small model answers first; a low-confidence answer is escalated to the large model."""
from __future__ import annotations

import openai
import pytest

from backends.base import TokenDelta, Usage
from tests.harness import gateway_app
from tests.util import serve


class FixedConfidence:
    """Answers 'ok' token by token with a fixed log-probability per token (when asked for logprobs)."""

    def __init__(self, name: str, logprob: float):
        self.name, self.logprob, self.seen = name, logprob, []

    async def start(self): pass

    async def stop(self): pass

    async def abort(self, request_id): pass

    async def generate(self, request):
        self.seen.append(request.params.logprobs)
        lp = [self.logprob] if request.params.logprobs else None
        yield TokenDelta(self.name[-5:], [7], None, None, lp)
        yield TokenDelta("!", [8], "stop", Usage(len(request.prompt_token_ids), 2), lp)


@pytest.fixture
def cascade_gateway(tmp_path, tokenizer):
    def make(small_logprob: float):
        backends = {"ferryman-small": FixedConfidence("ferryman-small", small_logprob),
                    "ferryman-large": FixedConfidence("ferryman-large", -0.01)}
        wiring = gateway_app(f"sqlite:///{tmp_path / f'l{small_logprob}.db'}", tokenizer=tokenizer, backends=backends,
                             cascade=True)
        tenant_id, key = wiring.tenant()
        return wiring.app, wiring.billing, tenant_id, key, backends
    return make


@pytest.mark.parametrize("stream", [False, True])
def test_confident_small_answer_is_kept(cascade_gateway, stream):
    app, billing, tenant_id, key, backends = cascade_gateway(-0.2)
    with serve(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=stream)
        text = ("".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices) if stream
                else raw.parse().choices[0].message.content)
    assert raw.headers["x-ferryman-route"] == "cascade-ferryman-small"
    assert text == "small!"
    assert backends["ferryman-small"].seen == [True]
    assert backends["ferryman-large"].seen == []
    [record] = billing.usage(tenant_id)
    assert record["route"] == "cascade-ferryman-small"
    assert record["completion_tokens"] == 2
    # kept: the strongest tier was not needed, so the saving is real
    assert record["baseline_cost_micros"] == billing.cost_micros("ferryman-large", record["prompt_tokens"], 0, 2)
    assert record["baseline_cost_micros"] > record["cost_micros"]


def test_unsure_small_answer_is_escalated_and_both_tries_billed(cascade_gateway):
    app, billing, tenant_id, key, backends = cascade_gateway(-2.5)
    with serve(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert raw.parse().choices[0].message.content == "large!"
    assert raw.headers["x-ferryman-route"] == "cascade-ferryman-large"
    records = {r["route"]: r for r in billing.usage(tenant_id)}
    assert set(records) == {"cascade-ferryman-small", "cascade-ferryman-large"}
    small, large = records["cascade-ferryman-small"], records["cascade-ferryman-large"]
    assert raw.headers["x-ferryman-escalated-from"] == small["request_id"]
    total = small["cost_micros"] + large["cost_micros"]
    assert raw.headers["x-ferryman-cost-usd"] == f"{total / 1e6:.6f}"
    # Escalated: the strongest tier alone would have cost just its own answer, so the first try is a loss.
    assert small["baseline_cost_micros"] == 0
    assert large["baseline_cost_micros"] is None  # the strongest tier itself: no saving
    [row] = billing.report(("tenant",), tenant_id=tenant_id)
    assert row["savings_micros"] == -small["cost_micros"]
    assert row["savings_micros"] < 0
    assert billing.ledger_totals(tenant_id)["open_reservations"] == 0
