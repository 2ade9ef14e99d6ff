"""Which router scores a route group: `general` for an operator's own catalog, `bundled` for the embedded pair, a
path when the group names one; the answer names it (x-ferryman-router) and /admin lists it per group. A prompt of
a kind absent from the router's training files is flagged and goes where the group's `unfamiliar` says."""
from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from classifier.router import SHIPPED, Router
from gateway.catalog import Catalog, CatalogError, embedded, from_settings, load
from gateway.config import Settings
from tests.classifier.strange_prompts import STRANGE_KINDS
from tests.gateway.conftest import ADMIN_KEY
from tests.harness import echo_backends, gateway_app
from tests.util import serve

TIERS = ["t-cheap", "t-strong"]
STRANGE = [p for kind in STRANGE_KINDS.values() for p in kind]  # kinds absent from every training file
FAMILIAR = [
    "Which of the following is a function of the liver?\nA. Producing bile\nB. Pumping blood\nC. Filtering air\nD. Storing urine\nAnswer:",
    "Write a short poem about the sea and the people who wait for the boats to come home.",
    "Tom has 3 boxes with 12 apples each. He gives away 7 apples. How many apples does he have left?",
]


def models(n: int = 2) -> list[dict]:
    return [{"name": t, "kind": "engine", "path": "models/small", "price": {"input": 1.0 + i, "output": 2.0}}
            for i, t in enumerate(TIERS[:n])]


@pytest.fixture
def make(tmp_path, tokenizer):
    def make(routes: list[dict]):
        catalog = Catalog.model_validate({"models": models(), "routes": routes})
        wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer, catalog=catalog, router=None,
                             backends=echo_backends(names=TIERS))
        return wiring.app, wiring.tenant()[1]
    return make


def ask(url: str, key: str, model: str, text: str):
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    return c.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}],
                                                       max_tokens=2)


def test_an_operator_catalog_uses_general_and_the_embedded_pair_bundled(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("models:\n  - {name: a, kind: engine, path: models/small}\n  - {name: b, kind: engine, path: models/large}\n"
                    "routes:\n  - {name: auto, tiers: [a, b]}\n")
    assert from_settings(Settings(config=path)).routes[0].router is None  # None is `general` (Routing)
    assert from_settings(Settings(config=path, router_path=SHIPPED["bundled"])).routes[0].router == str(SHIPPED["bundled"])
    assert embedded(Settings()).routes[0].router == "bundled"


def test_a_router_that_is_no_artifact_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("models:\n  - {name: a, kind: engine, path: models/small}\n  - {name: b, kind: engine, path: models/large}\n"
                    "routes:\n  - {name: auto, tiers: [a, b], router: nowhere.npz}\n")
    with pytest.raises(CatalogError, match=r"routes\[0\]\.router: expected bundled or general or the path"):
        load(path)


def test_the_answer_and_admin_name_each_groups_router(make, tmp_path):
    copy = tmp_path / "mine.npz"
    copy.write_bytes(SHIPPED["bundled"].read_bytes())
    app, key = make([{"name": "auto", "tiers": TIERS}, {"name": "toy", "tiers": TIERS, "router": "bundled"},
                     {"name": "own", "tiers": TIERS, "router": str(copy), "unfamiliar": "cheapest"}])
    with serve(app) as url:
        named = {g: ask(url, key, g, FAMILIAR[0]).headers["x-ferryman-router"] for g in ("auto", "toy", "own")}
        listed = httpx.get(url + "/admin/router/groups", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
        refused = httpx.get(url + "/admin/router/groups", headers={"authorization": f"Bearer {key}"})
    assert named == {"auto": "general", "toy": "bundled", "own": str(copy)}
    assert [(g["group"], g["router"], g["unfamiliar"]) for g in listed] == [
        ("auto", "general", "score"), ("toy", "bundled", "score"), ("own", str(copy), "cheapest")]
    assert listed[0]["trained_on"] == ["mmlu_train.csv", "gsm8k_train.csv", "alpaca_dev.csv"]
    assert refused.status_code == 401


def test_general_flags_prompts_of_kinds_absent_from_its_training_files():
    general = Router.load("general")
    assert [general.assess(p)[1] for p in STRANGE] == [True] * len(STRANGE)
    assert [general.assess(p)[1] for p in FAMILIAR] == [False] * len(FAMILIAR)


def unfamiliar_count(group: str) -> float:
    return REGISTRY.get_sample_value("ferryman_router_unfamiliar_total", {"group": group}) or 0.0


def test_unfamiliar_prompts_go_where_the_group_says_and_are_counted(make):
    app, key = make([{"name": "safe", "tiers": TIERS, "unfamiliar": "strongest"},
                     {"name": "thrifty", "tiers": TIERS, "unfamiliar": "cheapest"}])
    before = unfamiliar_count("safe")
    with serve(app) as url:
        safe = [ask(url, key, "safe", p) for p in STRANGE]
        thrifty = [ask(url, key, "thrifty", p) for p in STRANGE]
        familiar = ask(url, key, "safe", FAMILIAR[0])
    assert [r.headers["x-ferryman-model"] for r in safe] == ["t-strong"] * len(STRANGE)
    assert [r.headers["x-ferryman-model"] for r in thrifty] == ["t-cheap"] * len(STRANGE)
    assert [r.headers["x-ferryman-unfamiliar"] for r in safe] == ["true"] * len(STRANGE)
    assert "x-ferryman-unfamiliar" not in familiar.headers
    assert unfamiliar_count("safe") - before == len(STRANGE)
