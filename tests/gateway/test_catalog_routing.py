"""Route groups of three tiers over in-process backends: the router picks cheapest or strongest, an unavailable
tier passes the request to the nearest other tier, `pinned` and `fallback` policies, the cascade escalates to the
strongest tier."""
from __future__ import annotations

import asyncio

import openai
import pytest

from backends.base import BackendUnavailable, TokenDelta, Usage
from backends.echo import EchoBackend
from billing import Billing, RateLimiter
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.config import Settings
from tests.util import LengthRouter, serve

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
        settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        billing = Billing(settings.database_url)
        billing.create_schema()
        models = [{"name": n, "kind": "engine", "path": "models/small", "price": {"input": 1.0 * (i + 1), "output": 2.0},
                   "timeout_s": (timeouts or {}).get(n, 120.0)} for i, n in enumerate(TIERS)]
        catalog = Catalog.model_validate({"models": models, "routes": routes})
        app = create_app(settings, billing=billing, limiter=RateLimiter(), router=LengthRouter(), backends=backends,
                         tokenizer=tokenizer, catalog=catalog)
        tenant = billing.create_tenant("acme")
        key, _ = billing.create_key(tenant["id"])
        return app, billing, tenant["id"], key
    return make


def ask(url: str, key: str, model: str, text: str):
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    return c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}],
                                                       max_tokens=2)


def test_three_tiers_router_picks_the_ends_and_a_down_tier_passes_to_the_nearest(make):
    backends = {"t-cheap": EchoBackend("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": Down("t-strong")}
    app, billing, tenant_id, key = make(backends, [{"name": "auto", "tiers": TIERS},
                                                   {"name": "strict", "tiers": TIERS, "fallbacks": False},
                                                   {"name": "first", "tiers": TIERS, "policy": "pinned"}])
    with serve(app) as url:
        easy, hard = ask(url, key, "auto", "hi"), ask(url, key, "auto", HARD)
        assert (easy.headers["x-ferryman-model"], easy.headers["x-ferryman-route"]) == ("t-cheap", "small")
        assert (hard.headers["x-ferryman-model"], hard.headers["x-ferryman-route"]) == ("t-mid", "tier2")
        assert hard.headers["x-ferryman-fallback-from"] == "t-strong"
        with pytest.raises(openai.InternalServerError) as err:
            ask(url, key, "strict", HARD)
        assert err.value.status_code == 503 and err.value.body["code"] == "model_unavailable"
        assert ask(url, key, "first", HARD).headers["x-ferryman-model"] == "t-cheap"
    served = {r["request_id"]: r for r in billing.usage(tenant_id)}[hard.headers["x-request-id"]]
    assert (served["model"], served["route_group"], served["status"]) == ("t-mid", "auto", "ok")
    assert served["baseline_cost_micros"] == billing.cost_micros("t-strong", served["prompt_tokens"], 0, 2)
    assert billing.ledger_totals(tenant_id)["open_reservations"] == 0


def test_fallback_policy_serves_from_the_first_tier_while_it_is_up(make):
    backends = {"t-cheap": Down("t-cheap"), "t-mid": EchoBackend("t-mid"), "t-strong": EchoBackend("t-strong")}
    app, _, _, key = make(backends, [{"name": "backup", "tiers": ["t-strong", "t-cheap", "t-mid"], "policy": "fallback"},
                                     {"name": "primary-down", "tiers": ["t-cheap", "t-mid", "t-strong"],
                                      "policy": "fallback"}])
    with serve(app) as url:
        assert ask(url, key, "backup", "hi").headers["x-ferryman-model"] == "t-strong"
        assert ask(url, key, "primary-down", "hi").headers["x-ferryman-model"] == "t-mid"


@pytest.mark.parametrize("logprob, served", [(-0.1, "t-cheap"), (-3.0, "t-strong")])
def test_cascade_group_escalates_an_unsure_answer_to_the_strongest_tier(make, logprob, served):
    backends = {n: Sure(n, logprob) for n in TIERS}
    app, billing, tenant_id, key = make(backends, [{"name": "careful", "tiers": TIERS, "policy": "cascade"}])
    with serve(app) as url:
        raw = ask(url, key, "careful", "hi")
    assert raw.parse().choices[0].message.content == served and raw.headers["x-ferryman-model"] == served
    routes = sorted(r["route"] for r in billing.usage(tenant_id))
    assert routes == (["cascade-small"] if served == "t-cheap" else ["cascade-large", "cascade-small"])


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
    assert raw.headers["x-ferryman-model"] == "t-mid" and raw.headers["x-ferryman-fallback-from"] == "t-strong"
    [timed_out] = [r for r in billing.usage(tenant_id) if r["model"] == "t-strong"]
    assert (timed_out["status"], timed_out["cost_micros"]) == ("timeout", 0)
