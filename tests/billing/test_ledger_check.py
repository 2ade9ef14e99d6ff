"""`ferryman ledger check`: after concurrent traffic, budgets made late and a period change, every budget counter,
budget shown, report and CSV equals the records to the micro-dollar; a corrupted counter makes it exit 1."""
import random
import threading

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from billing import Billing, BudgetExceeded
from billing.models import budget_spend
from billing.reconcile import differences
from gateway.cli import app

SMALL, LARGE = "ferryman-small", "ferryman-large"


def traffic(billing: Billing, secrets: list[str], n: int, tag: str) -> None:
    """n requests at once over the given keys: settled, failed, released or refused, as they fall."""
    start = threading.Barrier(n)

    def one(i: int) -> None:
        rng = random.Random(f"{tag}{i}")
        principal = billing.authenticate(secrets[i % len(secrets)])
        start.wait()
        try:
            hold = billing.reserve(principal, f"{tag}-{i}", rng.choice([SMALL, LARGE]), 50, 100)
        except BudgetExceeded:
            return
        outcome = rng.choice(["ok", "ok", "cancelled", "error", "release"])
        if outcome == "release":
            billing.release(hold)
        else:
            billing.settle(hold, prompt_tokens=50, cached_tokens=rng.randint(0, 50),
                           completion_tokens=rng.randint(0, 100), status=outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.slow
def test_ledger_check_reconciles_every_figure_and_fails_on_a_corrupted_counter(db_url):
    billing = Billing(db_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    acme, demo = billing.create_tenant("acme"), billing.create_tenant("demo")
    acme_keys = [billing.create_key(acme["id"], name)[0] for name in ("one", "two")]
    demo_key, demo_key_row = billing.create_key(demo["id"], "main")
    billing.set_budget(acme["id"], limit_micros=4_000, period="daily")
    traffic(billing, acme_keys + [demo_key], 30, "before")  # demo has no budget yet
    billing.set_budget(demo["id"], limit_micros=10**9, period="monthly")  # made after its traffic
    billing.set_budget(demo["id"], key_id=demo_key_row["id"], limit_micros=10**9, period="daily")
    billing.set_budget(acme["id"], limit_micros=10**9, period="monthly")  # daily -> monthly
    traffic(billing, acme_keys + [demo_key], 30, "after")
    spent = {b["tenant_id"]: b["spent_micros"] for b in billing.list_budgets() if b["key_id"] is None}
    assert spent[demo["id"]] == sum(r["cost_micros"] for r in billing.usage(demo["id"], limit=1000))
    assert spent[acme["id"]] == sum(r["cost_micros"] for r in billing.usage(acme["id"], limit=1000))
    assert spent[demo["id"]] > 0
    assert differences(billing) == []

    runner = CliRunner()
    clean = runner.invoke(app, ["ledger", "check", "--database-url", db_url])
    assert clean.exit_code == 0, clean.output
    assert "reconciles" in clean.output

    with billing.engine.begin() as conn:  # one micro-dollar too many on one counter
        conn.execute(update(budget_spend).where(budget_spend.c.spent_micros > 0)
                     .values(spent_micros=budget_spend.c.spent_micros + 1))
    found = differences(billing)
    assert found
    assert all("counter spent" in line or "as shown" in line for line in found)
    broken = runner.invoke(app, ["ledger", "check", "--database-url", db_url])
    assert broken.exit_code == 1
    assert "counter spent" in broken.output
    billing.close()
