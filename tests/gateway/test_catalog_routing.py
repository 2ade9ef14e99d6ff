"""Route groups of three tiers over in-process backends: the router picks cheapest or strongest, an unavailable
tier passes the request to the nearest other tier, `pinned` and `fallback` policies, the cascade escalates to the
strongest tier."""
from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from backends.base import BackendUnavailable, TokenDelta, Usage
from backends.echo import EchoBackend
from gateway.catalog import Catalog
from tests.harness import gateway_app
from tests.util import serve

TIERS = ["t-cheap", "t-mid", "t-strong"]
HARD = "x" * 80  # LengthRouter: 0.8 >= 0.5, the strongest tier


class Down(EchoBackend):
    async def generate(self, request):
        raise BackendUnavailable("every replica is down")
        yield


class Sure(EchoBackend):
    """Answers its own name with a fixed log-probability per token."""

    def __init__(self, name: str, logprob: float):
        super().__init__(name)
        self.logprob = logprob

    async def generate(self, request):
        lp = [self.logprob] if request.params.logprobs else None
        yield TokenDelta(self.name, [7], "stop", Usage(len(request.prompt_token_ids), 1), lp)


@pytest.fixture
def make(tmp_path, tokenizer):
    def make(backends: dict, routes: list[dict], timeouts: dict | None = None):
        models = [{"name": n, "kind": "engine", "path": "models/small", "price": {"input": 1.0 * (i + 1), "output": 2.0},
                   "timeout_s": (timeouts or {}).get(n, 120.0)} for i, n in enumerate(TIERS)]
        catalog = Catalog.model_validate({"models": models, "routes": routes})
        wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, backends=backends,
                             catalog=catalog)
        tenant_id, key = wiring.tenant()
        return wiring.app, wiring.billing, tenant_id, key
    return make


def ask(url: str, key: str, model: str, text: str):
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    return c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}],
                                                       max_tokens=2)


def test_three_tiers_router_picks_the_ends_and_a_down_tier_passes_to_the_nearest(make):
    backends = {"t-cheap": EchoBackend("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": Down("t-strong")}
    app, billing, tenant_id, key = make(backends, [{"name": "auto", "tiers": TIERS},
                                                   {"name": "strict", "tiers": TIERS, "fallbacks": False}])
    with serve(app) as url:
        easy, hard = ask(url, key, "auto", "hi"), ask(url, key, "auto", HARD)
        assert (easy.headers["x-ferryman-model"], easy.headers["x-ferryman-route"]) == ("t-cheap", "t-cheap")
        assert (hard.headers["x-ferryman-model"], hard.headers["x-ferryman-route"]) == ("t-mid", "t-mid")
        assert hard.headers["x-ferryman-fallback-from"] == "t-strong"
        with pytest.raises(openai.InternalServerError) as err:
            ask(url, key, "strict", HARD)
        assert err.value.status_code == 503
        assert err.value.body["code"] == "model_unavailable"
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer fm-admin-test-key"}).text
    served = {r["request_id"]: r for r in billing.usage(tenant_id)}[hard.headers["x-request-id"]]
    assert (served["model"], served["route"], served["route_group"], served["status"]) == ("t-mid", "t-mid", "auto", "ok")
    assert served["baseline_cost_micros"] == billing.cost_micros("t-strong", served["prompt_tokens"], 0, 2)
    assert billing.ledger_totals(tenant_id)["open_reservations"] == 0
    assert 'ferryman_requests_total{route="t-mid",status="ok"}' in metrics


def test_a_pinned_group_never_falls_back(make):
    backends = {"t-cheap": Down("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": EchoBackend("t-strong")}
    app, billing, tenant_id, key = make(backends, [{"name": "only-cheap", "tiers": ["t-cheap"], "policy": "pinned"},
                                                   {"name": "only-mid", "tiers": ["t-mid"], "policy": "pinned"}])
    with serve(app) as url:
        with pytest.raises(openai.InternalServerError) as err:
            ask(url, key, "only-cheap", "hi")
        assert err.value.status_code == 503
        assert err.value.body["code"] == "model_unavailable"
        assert "x-ferryman-fallback-from" not in err.value.response.headers
        assert ask(url, key, "only-mid", HARD).headers["x-ferryman-model"] == "t-mid"
    assert sorted(r["model"] for r in billing.usage(tenant_id)) == ["t-cheap", "t-mid"]  # nothing else was asked


def test_fallback_policy_serves_its_fallbacks_in_order_of_preference(make):
    backends = {"t-cheap": Down("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": EchoBackend("t-strong")}
    app, _, _, key = make(backends, [{"name": "backup", "policy": "fallback", "fallbacks": ["t-strong", "t-cheap"]},
                                     {"name": "primary-down", "policy": "fallback",
                                      "fallbacks": ["t-cheap", "t-strong", "t-mid"]}])
    with serve(app) as url:
        assert ask(url, key, "backup", "hi").headers["x-ferryman-model"] == "t-strong"
        down = ask(url, key, "primary-down", "hi")
    assert (down.headers["x-ferryman-model"], down.headers["x-ferryman-fallback-from"]) == ("t-strong", "t-cheap")


def saved(record: dict) -> int:
    """A record's saving as reports count it (a record without a baseline is its own baseline)."""
    baseline = record["baseline_cost_micros"]
    return (record["cost_micros"] if baseline is None else baseline) - record["cost_micros"]


def test_savings_only_where_a_routing_policy_chose_a_cheaper_tier(make):
    backends = {"t-cheap": EchoBackend("t-cheap"), "t-mid": Down("t-mid"), "t-strong": EchoBackend("t-strong")}
    app, billing, tenant_id, key = make(backends, [
        {"name": "auto", "tiers": ["t-cheap", "t-strong"]},
        {"name": "dear-fallback", "tiers": ["t-cheap", "t-mid"], "fallbacks": ["t-strong"]},
        {"name": "one", "tiers": ["t-cheap"], "policy": "pinned"},
        {"name": "backup", "policy": "fallback", "fallbacks": ["t-mid", "t-cheap"]}])
    with serve(app) as url:
        asked = {name: ask(url, key, group, text).headers["x-request-id"] for name, group, text in (
            ("routed-cheap", "auto", "hi"), ("routed-strongest", "auto", HARD), ("fell-back-dearer", "dear-fallback", HARD),
            ("pinned-group", "one", "hi"), ("fallback-group", "backup", "hi"), ("named-model", "t-cheap", "hi"))}
    records = {r["request_id"]: r for r in billing.usage(tenant_id) if r["status"] == "ok"}
    got = {name: saved(records[rid]) for name, rid in asked.items()}
    cheap = records[asked["routed-cheap"]]
    assert got["routed-cheap"] == billing.cost_micros("t-strong", cheap["prompt_tokens"], 0, 2) - cheap["cost_micros"]
    assert got["routed-cheap"] > 0
    dear = records[asked["fell-back-dearer"]]
    assert dear["model"] == "t-strong"
    assert got["fell-back-dearer"] == billing.cost_micros("t-mid", dear["prompt_tokens"], 0, 2) - dear["cost_micros"]
    assert got["fell-back-dearer"] < 0  # shown as the loss it is
    for name in ("routed-strongest", "pinned-group", "fallback-group", "named-model"):
        assert got[name] == 0, name
    [row] = billing.report(("tenant",), tenant_id=tenant_id)
    assert row["savings_micros"] == got["routed-cheap"] + got["fell-back-dearer"]


@pytest.mark.parametrize("logprob, served", [(-0.1, "t-cheap"), (-3.0, "t-strong")])
def test_cascade_group_escalates_an_unsure_answer_to_the_strongest_tier(make, logprob, served):
    backends = {n: Sure(n, logprob) for n in TIERS}
    app, billing, tenant_id, key = make(backends, [{"name": "careful", "tiers": TIERS, "policy": "cascade"}])
    with serve(app) as url:
        raw = ask(url, key, "careful", "hi")
    assert raw.parse().choices[0].message.content == served
    assert raw.headers["x-ferryman-model"] == served
    records = {r["route"]: r for r in billing.usage(tenant_id)}
    assert sorted(records) == (["cascade-t-cheap"] if served == "t-cheap" else ["cascade-t-cheap", "cascade-t-strong"])
    first = records["cascade-t-cheap"]
    kept_baseline = billing.cost_micros("t-strong", first["prompt_tokens"], 0, 1)
    assert first["baseline_cost_micros"] == (kept_baseline if served == "t-cheap" else 0)


def test_feedback_counts_for_the_tier_of_the_model_that_answered(make):
    backends = {"t-cheap": EchoBackend("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": Down("t-strong")}
    app, _, tenant_id, key = make(backends, [{"name": "auto", "tiers": TIERS},
                                             {"name": "pair", "tiers": ["t-cheap", "t-mid"]}])
    with serve(app) as url:
        fell_back = ask(url, key, "auto", HARD)  # t-strong chosen, down: t-mid answers, a weaker tier of `auto`
        strongest = ask(url, key, "pair", HARD)  # t-mid chosen: the strongest tier of `pair`
        for raw, score in ((fell_back, 0.25), (strongest, 1.0)):
            assert raw.headers["x-ferryman-model"] == "t-mid"
            graded = httpx.post(f"{url}/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                                json={"request_id": raw.headers["x-request-id"], "score": score})
            assert graded.status_code == 200
    live = app.state.ferry.routing.live
    assert list(live.window("auto", str(tenant_id)).feedback) == [(False, 0.25)]
    assert list(live.window("pair", str(tenant_id)).feedback) == [(True, 1.0)]


class Silent(EchoBackend):
    """Says nothing for longer than its model's timeout."""

    async def generate(self, request):
        await asyncio.sleep(5)
        yield TokenDelta("late", [7], "stop", Usage(len(request.prompt_token_ids), 1))


def test_a_model_silent_past_its_timeout_passes_the_request_on_and_costs_nothing(make):
    backends = {"t-cheap": EchoBackend("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": Silent("t-strong")}
    app, billing, tenant_id, key = make(backends, [{"name": "auto", "tiers": TIERS}], timeouts={"t-strong": 0.3})
    with serve(app) as url:
        raw = ask(url, key, "auto", HARD)
    assert raw.headers["x-ferryman-model"] == "t-mid"
    assert raw.headers["x-ferryman-fallback-from"] == "t-strong"
    [timed_out] = [r for r in billing.usage(tenant_id) if r["model"] == "t-strong"]
    assert (timed_out["status"], timed_out["cost_micros"]) == ("timeout", 0)
