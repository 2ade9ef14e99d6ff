"""The ledger's catalog and feedback fields: migration 0002, per-record baselines, estimates, GPU time, prompts kept
only on opt-in, tenant feedback on its own requests only, catalog prices, and the tenant allow-list."""
from datetime import datetime

import httpx
import pytest
from alembic.command import downgrade
from alembic.script import ScriptDirectory
from sqlalchemy import text
from typer.testing import CliRunner

from billing import Billing
from billing.db import alembic_config, current, make_engine, upgrade
from gateway.cli import app
from tests.billing.helpers import ADMIN_KEY, gateway_app
from tests.util import serve

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_migration_0002_keeps_existing_records_and_defaults_the_new_fields(db_url):
    upgrade(db_url, "0001")
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("insert into tenants (name, priority, created_at) values ('old', 'standard', :t)"),
                     {"t": datetime(2026, 1, 1)})
        conn.execute(text(
            "insert into usage_records (request_id, tenant_id, key_id, model, status, prompt_tokens, cached_tokens, "
            "completion_tokens, cost_micros, baseline_cost_micros, day, created_at) "
            "values ('r-old', 1, 1, 'ferryman-small', 'ok', 10, 0, 10, 10, 100, '2026-01-01', :t)"),
            {"t": datetime(2026, 1, 1)})
    upgrade(db_url)
    assert current(db_url) == ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    billing = Billing(db_url)
    tenant = billing.tenant(1)
    assert (tenant["allowed_models"], tenant["store_prompts"]) == (None, False)
    record = billing.usage()[0]
    assert (record["baseline_cost_micros"], record["estimated"], record["route_group"], record["feedback_score"],
            record["prompt_text"]) == (100, False, None, None, None)
    billing.update_tenant(1, allowed_models=["auto"], store_prompts=True)
    assert billing.tenant(1)["allowed_models"] == ["auto"]
    billing.close()
    downgrade(alembic_config(db_url), "0001")
    with engine.connect() as conn:
        assert conn.execute(text("select baseline_cost_micros from usage_records")).scalar_one() == 100
    engine.dispose()


def tenant_key(billing: Billing, name: str, **fields):
    tenant = billing.create_tenant(name, **fields)
    return billing.authenticate(billing.create_key(tenant["id"])[0])


def test_settle_records_estimates_gpu_time_and_keeps_prompts_only_for_tenants_that_opted_in(billing):
    keeper, private = tenant_key(billing, "keeper", store_prompts=True), tenant_key(billing, "private")
    assert keeper.store_prompts and not private.store_prompts and private.allowed_models is None
    for who in (keeper, private):
        billing.settle(billing.reserve(who, f"r-{who.tenant_name}", "ferryman-small", 10, 10), prompt_tokens=10,
                       completion_tokens=4, estimated=True, gpu_seconds=0.25, route_group="auto",
                       prompt_text="what is 2+2?")
    records = {r["request_id"]: r for r in billing.usage()}
    assert records["r-keeper"]["prompt_text"] == "what is 2+2?" and records["r-private"]["prompt_text"] is None
    assert all((r["estimated"], r["gpu_seconds"], r["route_group"]) == (True, 0.25, "auto") for r in records.values())


def test_feedback_lands_only_on_the_callers_own_request(billing):
    acme, other = tenant_key(billing, "acme"), tenant_key(billing, "other")
    billing.settle(billing.reserve(acme, "mine", "ferryman-small", 10, 10), prompt_tokens=10, completion_tokens=1)
    assert billing.record_feedback(other, "mine", 0.0, "sabotage") is False
    assert billing.record_feedback(acme, "no-such-request", 1.0, None) is False
    assert billing.record_feedback(acme, "mine", 0.75, "good enough") is True
    with pytest.raises(ValueError):
        billing.record_feedback(acme, "mine", 1.5, None)
    record = billing.usage()[0]
    assert (record["feedback_score"], record["feedback_comment"]) == (0.75, "good enough")


def test_catalog_prices_seed_the_table_and_admin_edits_still_apply(billing):
    billing.set_prices_from_catalog({"ext-big": {"input": 2.5, "cached_input": 1.25, "output": 10.0},
                                     "ferryman-small": {"input": 0.05, "cached_input": 0.025, "output": 0.2}})
    prices = {p["model"]: p for p in billing.list_prices()}
    assert (prices["ext-big"]["input_micros_per_m"], prices["ext-big"]["cached_input_micros_per_m"],
            prices["ext-big"]["output_micros_per_m"]) == (2_500_000, 1_250_000, 10_000_000)
    assert billing.cost_micros("ext-big", 1_000_000, 0, 100_000) == 3_500_000
    assert billing.cost_micros("ferryman-small", 1_000_000, 1_000_000, 0) == 25_000
    billing.set_price("ext-big", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=1)
    assert billing.cost_micros("ext-big", 1_000_000, 0, 0) == 1
    with pytest.raises(ValueError):
        billing.set_prices_from_catalog({"bad": {"input": 0.0000001, "cached_input": 0, "output": 0}})


def test_allow_list_and_prompt_opt_in_through_the_admin_api(sqlite_url):
    gw, billing = gateway_app(sqlite_url)
    with serve(gw) as url, httpx.Client(base_url=url, timeout=30) as client:
        made = client.post("/admin/tenants", headers=ADMIN, json={"name": "acme", "allowed_models": ["auto", "ext-big"]})
        assert made.status_code == 201 and made.json()["allowed_models"] == ["auto", "ext-big"]
        assert made.json()["store_prompts"] is False
        tenant_id = made.json()["id"]
        key = client.post(f"/admin/tenants/{tenant_id}/keys", headers=ADMIN, json={}).json()["key"]
        principal = billing.authenticate(key)
        assert principal.allowed_models == ("auto", "ext-big") and not principal.store_prompts
        patched = client.patch(f"/admin/tenants/{tenant_id}", headers=ADMIN,
                               json={"store_prompts": True, "allowed_models": None})
        assert (patched.json()["store_prompts"], patched.json()["allowed_models"]) == (True, None)
        for bad in ({"allowed_models": "auto"}, {"allowed_models": [""]}, {"store_prompts": None}):
            answer = client.patch(f"/admin/tenants/{tenant_id}", headers=ADMIN, json=bad)
            assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", bad
    billing.close()


def test_cli_sets_the_allow_list_and_opt_in_and_keys_create_takes_tenant_as_option(sqlite_url):
    runner = CliRunner()

    def ferryman(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--database-url", sqlite_url])
        assert result.exit_code == code, result.output
        return result.output

    ferryman("tenants", "create", "acme", "--allowed-models", "auto,ferryman-small")
    ferryman("tenants", "update", "acme", "--store-prompts")
    secret = ferryman("keys", "create", "--tenant", "acme").split()[-1]
    positional = ferryman("keys", "create", "acme", "--name", "ci").split()[-1]
    billing = Billing(sqlite_url)
    for key in (secret, positional):
        principal = billing.authenticate(key)
        assert principal.allowed_models == ("auto", "ferryman-small") and principal.store_prompts
    ferryman("tenants", "update", "acme", "--allowed-models", "all", "--no-store-prompts")
    assert (billing.tenant(1)["allowed_models"], billing.tenant(1)["store_prompts"]) == (None, False)
    billing.close()
    assert "name the tenant once" in ferryman("keys", "create", "acme", "--tenant", "acme", code=1)
    assert "no tenant named" in ferryman("keys", "create", "--tenant", "nobody", code=1)
