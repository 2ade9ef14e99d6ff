"""The catalog file: examples load, a bad file stops `ferryman serve` with one line, the embedded default keeps the
old settings working."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.catalog import CatalogError, EngineEntry, ReplicasEntry, embedded, load
from gateway.config import Settings

ROOT = Path(__file__).resolve().parents[2]
FERRYMAN = Path(sys.executable).parent / "ferryman"


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_load(example, monkeypatch):
    for var in ("CLUSTER_KEY", "OPENAI_API_KEY", "TOGETHER_API_KEY"):
        monkeypatch.setenv(var, "sk-test")
    catalog = load(example)
    assert catalog.route("auto") is not None
    assert all(m.price for m in catalog.models)


def test_the_issue_example_loads_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("EXT_BIG_KEY", "sk-test")
    catalog = load(_write(tmp_path, ISSUE_EXAMPLE))
    assert [m.kind for m in catalog.models] == ["engine", "openai"]
    assert catalog.prices()["ext-big"] == {"input": 2.5, "cached_input": 1.25, "output": 10.0}
    assert catalog.route("auto").tiers == ["ferryman-small", "ext-big"]
    assert catalog.route("auto").fallbacks


@pytest.mark.slow
@pytest.mark.parametrize("change, line", [
    (("input: 2.5", "input: -2.5"), "models[1].price.input: Input should be greater than or equal to 0"),
    (("kind: openai", "kind: vllm"), "models[1]: Input tag 'vllm'"),
    (("tiers: [ferryman-small, ext-big]", "tiers: [ferryman-small, ext-huge]"), "routes[0].tiers: no model named 'ext-huge'"),
    (("api_key_env: EXT_BIG_KEY", "api_key: sk-live-123"), "models[1].api_key: keys never go in the file"),
    (("api_key_env: EXT_BIG_KEY", "api_key_env: NOT_SET_ANYWHERE"), "models[1].api_key_env: the environment variable "
                                                                      "NOT_SET_ANYWHERE is not set"),
    (("context_length: 128000", "context_lenght: 128000"), "models[1].context_lenght: Extra inputs are not permitted"),
])
def test_a_bad_file_stops_the_start_with_one_line_naming_the_key(tmp_path, change, line):
    path = _write(tmp_path, ISSUE_EXAMPLE.replace(*change))
    env = {"PATH": "/usr/bin:/bin", "EXT_BIG_KEY": "sk-test", "FERRYMAN_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"}
    run = subprocess.run([str(FERRYMAN), "serve", "--config", str(path)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode != 0
    [message] = run.stderr.strip().splitlines()
    assert message.startswith(f"ferryman: bad model catalog: {path}: ")
    assert line in message
    assert "sk-live-123" not in run.stderr


@pytest.mark.slow
def test_ferryman_config_names_the_file_too(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FERRYMAN_CONFIG": str(tmp_path / "missing.yaml")}
    run = subprocess.run([str(FERRYMAN), "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode != 0
    assert "missing.yaml" in run.stderr
    assert "No such file" in run.stderr


def test_embedded_default_is_the_bundled_pair_shaped_by_the_old_settings():
    plain = embedded(Settings())
    assert [m.name for m in plain.models] == ["ferryman-small", "ferryman-large"]
    assert plain.route("auto").policy == "router"
    assert plain.prices() == {}  # the price table keeps its prices
    tuned = embedded(Settings(large_speculation="draft", large_quantization="int8", idle_unload_s=30, cascade=True))
    large = tuned.model("ferryman-large")
    assert isinstance(large, EngineEntry)
    assert (large.speculation, large.quantization) == ("ferryman-small", "int8")
    assert large.idle_unload_s == 30
    assert tuned.route("auto").policy == "cascade"
    remote = embedded(Settings(large_upstreams="http://a:1, http://b:2"))
    assert isinstance(remote.model("ferryman-large"), ReplicasEntry)
    assert remote.model("ferryman-large").urls == ["http://a:1", "http://b:2"]


def test_speculation_must_name_an_engine_model(tmp_path):
    text = ISSUE_EXAMPLE.replace("path: models/small", "path: models/small\n    speculation: ext-big")
    with pytest.raises(CatalogError, match=r"models\[0\].speculation: expected 'ngram' or the name of an engine"):
        load(_write(tmp_path, text))


ROUTES = "routes:\n  - name: auto\n    tiers: [ferryman-small, ext-big]   # cheapest first; the router chooses\n    fallbacks: true\n"


@pytest.mark.parametrize("group, line", [
    # the shape examples/small-plus-cluster.yaml had: an order of preference written as tiers
    ("{name: big, tiers: [ext-big, ferryman-small]}",
     "routes[0].tiers: 'ferryman-small' costs less than 'ext-big' before it; tiers run from cheapest to strongest"),
    ("{name: one, tiers: [ferryman-small, ext-big], policy: pinned}",
     "routes[0].tiers: a pinned group serves exactly one model"),
    ("{name: one, tiers: [ext-big], policy: pinned, fallbacks: true}",
     "routes[0].fallbacks: a pinned group never falls back"),
    ("{name: one, tiers: [ext-big], policy: pinned, fallbacks: [ferryman-small]}",
     "routes[0].fallbacks: a pinned group never falls back"),
    ("{name: backup, tiers: [ferryman-small, ext-big], policy: fallback}",
     "routes[0].fallbacks: a fallback group lists its models here, most preferred first"),
    ("{name: backup, tiers: [ferryman-small], policy: fallback, fallbacks: [ext-big]}",
     "routes[0].tiers: a fallback group has no tiers"),
    ("{name: backup, policy: fallback, fallbacks: [ext-big, ext-huge]}",
     "routes[0].fallbacks: no model named 'ext-huge'"),
    ("{name: auto, policy: cascade}", "routes[0].tiers: a cascade group lists its models from cheapest to strongest"),
])
def test_each_list_means_one_thing_whatever_the_policy(tmp_path, monkeypatch, group, line):
    monkeypatch.setenv("EXT_BIG_KEY", "sk-test")
    with pytest.raises(CatalogError) as err:
        load(_write(tmp_path, ISSUE_EXAMPLE.replace(ROUTES, f"routes:\n  - {group}\n")))
    assert line in str(err.value)


def test_the_strongest_tier_is_the_last_of_tiers_and_only_routing_policies_have_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EXT_BIG_KEY", "sk-test")
    groups = ("routes:\n  - {name: auto, tiers: [ferryman-small, ext-big], fallbacks: [ferryman-small]}\n"
              "  - {name: one, tiers: [ext-big], policy: pinned}\n"
              "  - {name: backup, policy: fallback, fallbacks: [ext-big, ferryman-small]}\n")
    catalog = load(_write(tmp_path, ISSUE_EXAMPLE.replace(ROUTES, groups)))
    assert catalog.route("auto").strongest() == "ext-big"
    assert catalog.route("one").strongest() is None
    assert catalog.route("backup").strongest() is None
    assert catalog.route("backup").fallbacks == ["ext-big", "ferryman-small"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ferryman.yaml"
    path.write_text(text)
    return path


ISSUE_EXAMPLE = """
models:
  - name: ferryman-small
    kind: engine
    path: models/small
    price: {input: 0.05, cached_input: 0.025, output: 0.2}   # USD per 1M tokens
  - name: ext-big
    kind: openai
    base_url: http://127.0.0.1:9000/v1
    api_key_env: EXT_BIG_KEY
    price: {input: 2.5, cached_input: 1.25, output: 10.0}
    context_length: 128000
routes:
  - name: auto
    tiers: [ferryman-small, ext-big]   # cheapest first; the router chooses
    fallbacks: true
"""
