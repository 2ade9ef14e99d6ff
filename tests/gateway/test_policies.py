"""Routing policies are classes registered by name (gateway/policies/): a new one is a Policy subclass and one
entry in POLICIES; the catalog accepts it, checks groups against it, and the gateway plans with it."""
from __future__ import annotations

import openai
import pytest

from backends.base import BackendUnavailable
from backends.echo import EchoBackend
from billing import Billing, RateLimiter
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.policies import POLICIES, Ask, Plan, Policy
from tests.util import LengthRouter, serve

TIERS = ["t-cheap", "t-mid", "t-strong"]


class StrongestFirst(Policy):
    """A toy policy: the strongest tier, the group's `fallbacks` switch when it is unavailable."""

    @staticmethod
    def misfit(group):
        return None if group.tiers else ("tiers", "a strongest-first group lists its tiers")

    def plan(self, ask: Ask) -> Plan:
        tiers = self.eligible(self.group.tiers, ask.body)
        return Plan(self.group.name, (tiers[-1], *self.fallbacks(tiers, tiers[-1], ask.body)), "strongest-first")


class Down(EchoBackend):
    async def generate(self, request):
        raise BackendUnavailable("down for the test")
        yield


def catalog(routes: list[dict]) -> Catalog:
    models = [{"name": t, "kind": "engine", "path": "models/small", "price": {"input": 1.0 + i, "output": 2.0 + i}}
              for i, t in enumerate(TIERS)]
    return Catalog.model_validate({"models": models, "routes": routes})


def test_an_unregistered_policy_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"expected 'router', 'cascade', 'pinned', 'fallback', got 'strongest-first'"):
        catalog([{"name": "top", "policy": "strongest-first", "tiers": TIERS}])


def test_a_registered_policy_is_checked_and_served(monkeypatch, tmp_path, tokenizer):
    monkeypatch.setitem(POLICIES, "strongest-first", StrongestFirst)
    with pytest.raises(ValueError, match=r"routes\[0\]\.tiers: a strongest-first group lists its tiers"):
        catalog([{"name": "top", "policy": "strongest-first"}])
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    billing = Billing(settings.database_url)
    billing.create_schema()
    tenant = billing.create_tenant("acme")
    key, _ = billing.create_key(tenant["id"])
    routes = [{"name": "top", "policy": "strongest-first", "tiers": TIERS},
              {"name": "top-alone", "policy": "strongest-first", "tiers": TIERS, "fallbacks": False}]

    backends = {t: EchoBackend(t) for t in TIERS}
    app = create_app(settings, billing=billing, limiter=RateLimiter(), router=LengthRouter(), tokenizer=tokenizer,
                     backends={**backends, "t-strong": Down("t-strong")}, catalog=catalog(routes))
    with serve(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        ask = dict(messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        served = c.chat.completions.with_raw_response.create(model="top", **ask)
        with pytest.raises(openai.APIStatusError) as alone:
            c.chat.completions.create(model="top-alone", **ask)
    assert served.headers["x-ferryman-model"] == "t-mid"  # the strongest is down: the nearest tier serves
    assert served.headers["x-ferryman-fallback-from"] == "t-strong"
    assert alone.value.status_code == 503
    records = {r["request_id"]: r for r in billing.usage(tenant["id"])}
    kept = records[served.headers["x-request-id"]]
    assert (kept["route_group"], kept["route"], kept["model"]) == ("top", "t-mid", "t-mid")
    assert kept["baseline_cost_micros"] is None  # the policy does not say it saves: no savings claimed
