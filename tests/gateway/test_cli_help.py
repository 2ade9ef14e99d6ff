"""The `ferryman` command line as an operator meets it: every command and option says what it does and which
values it takes; limits, targets and budgets can be removed again; alerts can be listed; an impossible
capacity-plan layout is refused with the reason."""
from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from billing import Billing
from gateway.cli import app

runner = CliRunner()


def commands(command, path=("ferryman",)):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_every_command_and_option_has_help_and_no_flag_is_doubly_negated():
    tree = list(commands(typer.main.get_command(app)))
    missing = [" ".join(path) for path, command in tree if not (command.help or command.short_help)]
    missing += [f"{' '.join(path)} {param.opts[0]}" for path, command in tree for param in command.params
                if param.name != "help" and not getattr(param, "help", None)]
    assert missing == []
    flags = [o for _, command in tree for param in command.params for o in param.opts + param.secondary_opts]
    assert len(tree) > 40
    assert [f for f in flags if f.startswith("--no-no-")] == []
    assert "--no-prefix-caching" in flags


def test_priority_and_period_list_their_values_and_refuse_others(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    def shown(*command: str) -> str:
        return runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).output

    assert "--priority " in shown("tenants", "create")
    assert "<interactive|standard|batch>" in shown("tenants", "create")
    assert "<interactive|standard|batch>" in shown("tenants", "update")
    assert "--period " in shown("tenants", "budget")
    assert "<daily|monthly>" in shown("tenants", "budget")
    refused = runner.invoke(app, ["tenants", "create", "acme", "--priority", "urgent", "--database-url", url])
    assert refused.exit_code == 2
    assert "'urgent' is not one of" in refused.output
    assert not (tmp_path / "ledger.db").exists()  # refused before the ledger was opened


def ferryman(url: str, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, [*args, "--database-url", url])
    assert result.exit_code == code, result.output
    return result.output


def test_limits_targets_and_budgets_can_be_removed_and_alerts_listed(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ferryman(url, "tenants", "create", "acme", "--rpm", "5", "--tpm", "900", "--max-concurrent", "2",
             "--large-share", "0.3")
    ferryman(url, "tenants", "update", "acme", "--rpm", "none", "--large-share", "null", "--max-concurrent", "4")
    billing = Billing(url)
    [tenant] = billing.list_tenants()
    assert (tenant["rpm"], tenant["tpm"], tenant["max_concurrent"], tenant["large_share"]) == (None, 900, 4, None)
    assert "takes a whole number or 'none', not 'lots'" in ferryman(url, "tenants", "update", "acme", "--tpm", "lots",
                                                                     code=1)
    assert billing.list_tenants()[0]["tpm"] == 900

    key_id = int(ferryman(url, "keys", "create", "acme", "--rpm", "7").split()[1])
    ferryman(url, "keys", "update", str(key_id), "--rpm", "none", "--tpm", "50")
    [key] = billing.list_keys()
    assert (key["rpm"], key["tpm"]) == (None, 50)

    ferryman(url, "tenants", "budget", "acme", "--limit-usd", "0.000010", "--alert-percents", "1")
    ferryman(url, "tenants", "budget", "acme", "--limit-usd", "5", "--key-id", str(key_id))
    secret, _ = billing.create_key(tenant["id"], "spender")
    principal = billing.authenticate(secret)
    hold = billing.reserve(principal, "req-1", "ferryman-small", 10, 1)
    billing.settle(hold, prompt_tokens=10, completion_tokens=1, latency_ms=1.0, route="ferryman-small")
    [alert] = billing.list_alerts()
    listed = ferryman(url, "tenants", "alerts", "acme").splitlines()
    assert listed[0].split()[:5] == ["id", "tenant", "key_id", "budget_id", "period_key"]
    assert listed[1].split()[:2] == [str(alert["id"]), "acme"]
    assert alert["period_key"] in listed[1]
    assert len(ferryman(url, "tenants", "alerts").splitlines()) == 2

    assert "deleted" in ferryman(url, "tenants", "budget-delete", "acme")
    assert [b["key_id"] for b in billing.list_budgets()] == [key_id]  # the key's own budget stays
    ferryman(url, "tenants", "budget-delete", "acme", "--key-id", str(key_id))
    assert billing.list_budgets() == []
    assert "has no budget" in ferryman(url, "tenants", "budget-delete", "acme", code=1)


@pytest.mark.slow
def test_a_layout_the_model_cannot_be_sharded_into_is_refused():
    result = runner.invoke(app, ["plan", "capacity", "--layouts", "2x1,3x1", "--duration", "1"])
    assert result.exit_code == 1
    assert ("layout TP3 PP1 x1: tensor-parallel degree 3 does not divide llama-3-70b's 64 attention heads "
            "(8 KV heads) evenly; it can use TP 1, 2, 4, 8") in " ".join(result.output.split())
    result = runner.invoke(app, ["plan", "simulate", "--layout", "1x81", "--duration", "1"])
    assert result.exit_code == 1
    assert "81 pipeline stages for llama-3-70b's 80 layers" in result.output
