"""200 requests at once against a budget that fits about 50, through two replicas sharing one database."""
import random
import threading
import time

import pytest

from billing import Billing, BudgetExceeded
from billing.reports import totals

SMALL = "ferryman-small"
WORST = 200 * 200_000 // 1_000_000 + 300 * 800_000 // 1_000_000  # 200 prompt + max_tokens 300 on the small model


def replica(db_url: str) -> Billing:
    b = Billing(db_url)
    b.create_schema()
    b.ensure_admin_defaults()
    return b


@pytest.mark.slow
def test_concurrent_requests_on_two_replicas_never_overspend(db_url):
    a, b = replica(db_url), replica(db_url)
    tenant = a.create_tenant("acme")
    secret_1, key_1 = a.create_key(tenant["id"], "one")
    secret_2, _ = a.create_key(tenant["id"], "two")
    limit = 50 * WORST + 123
    a.set_budget(tenant["id"], limit_micros=limit, period="daily")
    a.set_budget(tenant["id"], key_id=key_1["id"], limit_micros=30 * WORST, period="monthly")
    principals = [a.authenticate(secret_1), b.authenticate(secret_2)]

    n = 200
    start = threading.Barrier(n)
    accepted, refused, errors, over = [], [], [], []
    running = True

    def request(i: int) -> None:
        rng = random.Random(i)
        ledger, principal = (a, b)[i % 2], principals[rng.random() < 0.5]
        start.wait()
        try:
            res = ledger.reserve(principal, f"req-{i}", SMALL, 200, 300)
        except BudgetExceeded:
            refused.append(i)
            return
        accepted.append(i)
        time.sleep(rng.uniform(0, 0.01))
        outcome = rng.choice(["ok", "ok", "error", "cancelled"])
        if outcome == "error":
            ledger.release(res)
            return
        usage = dict(prompt_tokens=200, cached_tokens=rng.randint(0, 200), completion_tokens=rng.randint(1, 300),
                     status=outcome)
        if i % 10 == 0:  # the same request settled on both replicas at once: one record, one charge
            twin = threading.Thread(target=lambda: b.settle(res, **usage))
            twin.start()
            a.settle(res, **usage)
            twin.join()
        else:
            ledger.settle(res, **usage)

    def guarded(i: int) -> None:
        try:
            request(i)
        except Exception as exc:  # surfaced by the assertion below, with the request that failed
            errors.append((i, repr(exc)))

    def monitor() -> None:
        while running:
            budget = next(x for x in a.list_budgets(tenant["id"]) if x["key_id"] is None)
            if budget["spent_micros"] + budget["reserved_micros"] > limit:
                over.append(budget)
            time.sleep(0.005)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running = False
    watcher.join()

    assert errors == []
    assert over == []
    assert len(accepted) + len(refused) == n
    assert len(accepted) >= 50
    assert refused
    ledger = a.ledger_totals(tenant["id"])
    assert ledger["spent_micros"] <= limit
    assert (ledger["reserved_micros"], ledger["open_reservations"]) == (0, 0)
    key_budget = next(x for x in b.list_budgets(tenant["id"]) if x["key_id"] == key_1["id"])
    assert key_budget["spent_micros"] <= key_budget["limit_micros"]
    assert key_budget["reserved_micros"] == 0
    records = b.usage(tenant_id=tenant["id"], limit=1000)
    assert sorted(r["request_id"] for r in records) == sorted(f"req-{i}" for i in accepted)
    report = totals(b.report(tenant_id=tenant["id"]))
    assert report["requests"] == len(accepted)
    assert report["cost_micros"] == ledger["spent_micros"] == sum(r["cost_micros"] for r in records)
    a.close(), b.close()
