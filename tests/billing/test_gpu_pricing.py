"""Self-hosted models priced per GPU-second: a request is billed the GPU-seconds the engine attributed to it at the
model's GPU-hour price, to the micro-dollar, never past its per-token hold (so budgets are never overspent); records,
reports, the admin API and `ferryman report` show the per-token and the GPU-hour cost side by side."""
import csv
import io
import math
from dataclasses import replace
from decimal import Decimal

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from backends.echo import EchoBackend
from billing.rules import BudgetExceeded
from billing.pricing import Price
from gateway.catalog import Catalog
from gateway.cli import app as cli
from tests.billing.helpers import ADMIN_KEY, gateway_app
from tests.util import serve

H100_HOUR = 2_490_000  # $2.49 per GPU-hour, in micro-USD: not a whole micro-USD per GPU-second


def tenant_key(billing, name: str, limit_micros: int | None = None):
    tenant = billing.create_tenant(name)
    if limit_micros is not None:
        billing.set_budget(tenant["id"], limit_micros=limit_micros)
    return billing.authenticate(billing.create_key(tenant["id"])[0])


def test_gpu_seconds_times_the_price_rounds_up_exactly():
    price = Price("m", 0, 0, 0, 3_600_000)  # $3.60/h: 1,000 micro-USD per GPU-second
    assert price.gpu_cost_micros(0.07) == 70  # float math: 0.07 * 3_600_000 / 3600 = 70.00000000000001 -> 71
    assert price.gpu_cost_micros(0.0700001) == 71 and price.gpu_cost_micros(0.0) == 0
    assert Price("m", 0, 0, 0, H100_HOUR).gpu_cost_micros(1.234567) == 854  # 853.875... rounded up
    with pytest.raises(ValueError):
        price.gpu_cost_micros(float("nan"))
    with pytest.raises(ValueError):
        Price("m", 0, 0, 0).gpu_cost_micros(1.0)  # no GPU-hour price: nothing to bill by


def test_gpu_priced_request_is_billed_its_gpu_seconds_and_the_report_shows_both_costs(billing):
    billing.set_price("big-engine", input_micros_per_m=2_000_000, cached_input_micros_per_m=500_000,
                      output_micros_per_m=8_000_000, gpu_hour_micros=H100_HOUR)
    who = tenant_key(billing, "acme", limit_micros=1_000_000)
    record = billing.settle(billing.reserve(who, "g1", "big-engine", 100, 200), prompt_tokens=100, cached_tokens=40,
                            completion_tokens=20, gpu_seconds=1.234567)
    per_token = -(-(60 * 2_000_000 + 40 * 500_000 + 20 * 8_000_000) // 1_000_000)  # 300 micro-USD
    assert (record.cost_micros, record.gpu_cost_micros, record.token_cost_micros) == (854, 854, per_token)
    # a token-priced model beside it: billed per token, no GPU-hour cost even with GPU-seconds measured
    small = billing.settle(billing.reserve(who, "s1", "ferryman-small", 10, 10), prompt_tokens=10,
                           completion_tokens=10, gpu_seconds=0.5)
    assert (small.cost_micros, small.token_cost_micros, small.gpu_cost_micros) == (10, 10, None)

    rows = {r["model"]: r for r in billing.report(("model",))}
    assert {k: rows["big-engine"][k] for k in ("cost_micros", "token_cost_micros", "gpu_cost_micros",
                                               "gpu_seconds")} == {"cost_micros": 854, "token_cost_micros": 300,
                                                                   "gpu_cost_micros": 854, "gpu_seconds": 1.234567}
    assert (rows["ferryman-small"]["token_cost_micros"], rows["ferryman-small"]["gpu_cost_micros"]) == (10, None)
    assert billing.ledger_totals()["spent_micros"] == 854 + 10
    by_day = billing.report(("day",))[0]
    assert (by_day["cost_micros"], by_day["token_cost_micros"], by_day["gpu_cost_micros"]) == (864, 310, 854)


def test_gpu_charge_stops_at_the_hold_and_the_budget_is_never_overspent(billing):
    # $3,600 per GPU-hour against token prices that make a request's worst case 2,000 micro-USD
    billing.set_price("pricey", input_micros_per_m=100_000_000, cached_input_micros_per_m=100_000_000,
                      output_micros_per_m=100_000_000, gpu_hour_micros=3_600_000_000)
    who = tenant_key(billing, "acme", limit_micros=5_000)
    charged = []
    for i in range(2):
        res = billing.reserve(who, f"p{i}", "pricey", 10, 10)
        assert res.amount_micros == 2_000
        record = billing.settle(res, prompt_tokens=10, completion_tokens=3, gpu_seconds=5.0)
        assert record.gpu_cost_micros == 5_000_000  # what the GPU-hour price says, kept for the report
        charged.append(record.cost_micros)
    assert charged == [2_000, 2_000]  # never past the hold
    with pytest.raises(BudgetExceeded):
        billing.reserve(who, "p2", "pricey", 10, 10)
    totals = billing.ledger_totals()
    assert totals["spent_micros"] == 4_000 <= 5_000 and totals["reserved_micros"] == 0


class GpuTimedEcho(EchoBackend):
    """An engine stand-in whose final Usage carries the GPU-seconds the engine attributed to the request."""

    def __init__(self, name: str, gpu_seconds: float):
        super().__init__(name)
        self.gpu_seconds = gpu_seconds

    async def generate(self, request):
        async for delta in super().generate(request):
            yield delta if delta.usage is None else replace(delta, usage=replace(delta.usage,
                                                                                   gpu_seconds=self.gpu_seconds))


def test_served_request_on_a_gpu_priced_model_and_both_reports(sqlite_url):
    backends = {"ferryman-small": GpuTimedEcho("ferryman-small", 0.25), "ferryman-large": EchoBackend("ferryman-large")}
    gw, billing = gateway_app(sqlite_url, backends=backends)
    billing.set_price("ferryman-small", input_micros_per_m=200_000, cached_input_micros_per_m=50_000,
                      output_micros_per_m=800_000, gpu_hour_micros=H100_HOUR)
    key = billing.create_key(billing.create_tenant("acme")["id"])[0]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with serve(gw) as url, httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 300})
        assert answer.status_code == 200, answer.text
        record = client.get("/admin/usage", headers=admin).json()[0]
        report = client.get("/admin/reports/usage", headers=admin, params={"group_by": "model"}).json()
        sheet = client.get("/admin/reports/usage", headers=admin, params={"group_by": "model", "format": "csv"}).text
        # the admin page edits token prices alone: the GPU-hour price stays; an explicit null drops it
        tokens_only = {"input_micros_per_m": 1, "cached_input_micros_per_m": 1, "output_micros_per_m": 1}
        kept = client.put("/admin/prices/ferryman-small", headers=admin, json=tokens_only).json()
        dropped = client.put("/admin/prices/ferryman-small", headers=admin,
                             json={**tokens_only, "gpu_hour_micros": None}).json()
        assert (kept["gpu_hour_micros"], dropped["gpu_hour_micros"]) == (H100_HOUR, None)
    billing.close()
    per_token = Price("", 200_000, 50_000, 800_000).cost_micros(record["prompt_tokens"], record["cached_tokens"],
                                                                record["completion_tokens"])
    # 0.25 GPU-s at $2.49/h = 172.9166... micro-USD, rounded up; the hold (300 max tokens) is far above it
    assert (record["gpu_seconds"], record["cost_micros"], record["gpu_cost_micros"]) == (0.25, 173, 173)
    assert record["token_cost_micros"] == per_token != 173
    row = report["rows"][0]
    assert (row["cost_micros"], row["token_cost_micros"], row["gpu_cost_micros"], row["gpu_seconds"]) == (
        173, per_token, 173, 0.25)
    assert (report["totals"]["token_cost_micros"], report["totals"]["gpu_cost_micros"]) == (per_token, 173)
    # the request named its model: no routing, so no savings, though its per-token cost differs from its GPU cost
    assert (row["baseline_cost_micros"], row["savings_micros"]) == (173, 0)
    line = next(csv.DictReader(io.StringIO(sheet)))
    assert (line["cost_usd"], line["gpu_cost_usd"], line["token_cost_usd"]) == (
        "0.000173", "0.000173", f"0.{per_token:06d}")

    def ferryman(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--database-url", sqlite_url])
        assert result.exit_code == 0, result.output
        return result.output

    header, small = ferryman("report", "--group-by", "model").splitlines()[:2]
    assert "at token prices" in header and "at GPU-hour price" in header
    assert small.split()[0] == "ferryman-small" and small.split()[-3:] == ["0.250", f"$0.{per_token:06d}",
                                                                           "$0.000173"]
    prices = ("prices", "set", "ferryman-small", "--input-usd", "1", "--cached-usd", "1", "--output-usd", "1")
    assert "per GPU-hour" in ferryman(*prices, "--gpu-hour-usd", "2.49")
    ferryman(*prices)  # left out: kept
    assert "$2.490000" in ferryman("prices", "list")
    ferryman(*prices, "--gpu-hour-usd", "off")
    assert "$2.490000" not in ferryman("prices", "list")


def test_catalog_gpu_hour_prices_engine_models_only(billing):
    engine = {"name": "big-engine", "kind": "engine", "path": "/models/big",
              "price": {"input": 2, "output": 8, "gpu_hour": 2.49}}
    catalog = Catalog.model_validate({"models": [engine]})
    billing.set_prices_from_catalog(catalog.prices())
    assert {p["model"]: p for p in billing.list_prices()}["big-engine"]["gpu_hour_micros"] == H100_HOUR
    remote = {"name": "ext", "kind": "openai", "base_url": "http://x", "price": {"input": 1, "output": 1, "gpu_hour": 1}}
    with pytest.raises(ValidationError, match="only an engine model measures"):
        Catalog.model_validate({"models": [remote]})


def test_real_engine_request_is_billed_the_gpu_seconds_it_used(sqlite_url, tmp_path):
    """The whole chain: the engine attributes its steps' time to the request, the gateway settles with it, the
    ledger bills it at the GPU-hour price (token prices set high, so the hold does not bind)."""
    from backends.engine import EngineBackend, EngineConfig
    from tests.engine.conftest import build_checkpoint

    engine = EngineBackend("ferryman-small", EngineConfig(str(build_checkpoint(tmp_path / "tiny")), num_kv_blocks=16))
    gw, billing = gateway_app(sqlite_url, backends={"ferryman-small": engine,
                                                    "ferryman-large": EchoBackend("ferryman-large")})
    billing.set_price("ferryman-small", input_micros_per_m=10**10, cached_input_micros_per_m=10**10,
                      output_micros_per_m=10**10, gpu_hour_micros=36_000_000)  # $36/h: 10,000 micro-USD per GPU-s
    key = billing.create_key(billing.create_tenant("acme")["id"])[0]
    with serve(gw) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "ferryman-small", "prompt": "hello there", "max_tokens": 6})
        assert answer.status_code == 200, answer.text
    record = billing.usage()[0]
    billing.close()
    gpu_seconds = record["gpu_seconds"]
    assert gpu_seconds == pytest.approx(engine.engine.busy_seconds) and gpu_seconds > 0  # the only request
    assert record["cost_micros"] == record["gpu_cost_micros"] == math.ceil(Decimal(repr(gpu_seconds)) * 10_000)
    assert record["token_cost_micros"] > record["cost_micros"]
