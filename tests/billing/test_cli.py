"""The operator's commands, run through typer against a SQLite ledger."""
import csv
import io
import json

from typer.testing import CliRunner

from billing import Billing
from gateway.cli import app


def test_operator_commands_manage_tenants_keys_budgets_and_report(sqlite_url):
    runner = CliRunner()

    def ferryman(*args: str) -> str:
        result = runner.invoke(app, [*args, "--database-url", sqlite_url])
        assert result.exit_code == 0, result.output
        return result.output

    assert "ledger at revision" in ferryman("db", "upgrade")
    ferryman("tenants", "create", "acme", "--rpm", "60")
    assert "$12.500000 daily" in ferryman("tenants", "budget", "acme", "--limit-usd", "12.5", "--period", "daily")
    secret = ferryman("keys", "create", "acme", "--name", "ci").split()[-1]
    ferryman("prices", "set", "ferryman-small", "--input-usd", "1", "--cached-usd", "0.5", "--output-usd", "2")

    billing = Billing(sqlite_url)
    principal = billing.authenticate(secret)
    assert principal.tenant_name == "acme" and principal.limits[0].rpm == 60
    billing.settle(billing.reserve(principal, "r1", "ferryman-small", 1000, 500), prompt_tokens=1000,
                   completion_tokens=500)
    billing.close()

    rows = list(csv.DictReader(io.StringIO(ferryman("report", "--format", "csv"))))
    assert [(r["tenant"], r["model"], r["cost_micros"], r["cost_usd"]) for r in rows] == [
        ("acme", "ferryman-small", "2000", "0.002000")]
    assert json.loads(ferryman("report", "--format", "json", "--group-by", "model"))["totals"]["requests"] == 1
    assert "$0.002000" in ferryman("report")
    assert "$12.498000" in ferryman("tenants", "budgets", "acme")
    assert "revoked" in ferryman("keys", "revoke", "1")
    refused = runner.invoke(app, ["tenants", "create", "acme", "--database-url", sqlite_url])
    assert refused.exit_code == 1 and "already exists" in refused.output
