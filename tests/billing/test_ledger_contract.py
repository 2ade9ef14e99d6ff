"""The ledger contract (billing.rules.Ledger), one suite run unchanged against every ledger: SQLite, PostgreSQL,
and PostgreSQL with holds in Redis (its batch writer running, as in a gateway). Budget counters, records and the
caller's answer must agree to the micro-dollar after retries, reaped holds, a crash between commit and
acknowledgement, and a budget made or changed part-way through a period."""
import asyncio
import time
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from billing import Billing, BudgetExceeded, rules
from billing.models import budget_alerts, budget_spend
from billing.reconcile import differences
from tests.billing.test_gateway_budget import forget_keys

LARGE, SMALL = "ferryman-large", "ferryman-small"  # large: 2 / 0.5 / 8 micro-USD per token in / cached / out


class Clock:
    def __init__(self):
        self.now = datetime(2026, 5, 31, 23, 59)

    def __call__(self) -> datetime:
        return self.now


class Book:
    """A ledger under test, and what the suite needs around it: records visible, counters, a writer crash."""

    def __init__(self, billing: Billing):
        self.billing, self.clock = billing, billing.clock
        self.writer = billing.writer(interval_s=0.01)
        if self.writer:
            self.writer.start()

    def flush(self) -> None:
        """Wait until every settled record is in the database (at once without Redis)."""
        deadline = time.monotonic() + 10
        while self.billing.unwritten() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.billing.unwritten() == 0

    def spent(self, tenant_id: int, key_id: int | None = None) -> int:
        budget = next(b for b in self.billing.list_budgets(tenant_id) if b["key_id"] == key_id)
        return budget["spent_micros"]

    def records_cost(self, tenant_id: int) -> int:
        return sum(r["cost_micros"] for r in self.billing.usage(tenant_id, limit=10_000))

    def close(self) -> None:
        if self.writer:
            self.writer.stop()
        self.billing.close()


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+redis"])
def book(request):
    clock = Clock()
    redis_url = prefix = None
    if request.param == "sqlite":
        url = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
    if request.param.endswith("redis"):
        redis_url, prefix = request.getfixturevalue("redis_url"), f"fm-test-{uuid.uuid4().hex}"
    billing = Billing(url, clock=clock, redis_url=redis_url, redis_prefix=prefix or "ferryman")
    billing.create_schema()
    billing.ensure_admin_defaults()
    book = Book(billing)
    yield book
    book.close()
    if prefix:
        forget_keys(redis_url, prefix)


def customer(book: Book, limit_micros: int | None = None, period: str = "monthly", **budget):
    b = book.billing
    tenant = b.create_tenant(f"t-{uuid.uuid4().hex[:8]}")
    secret, key = b.create_key(tenant["id"], "main")
    if limit_micros is not None:
        b.set_budget(tenant["id"], limit_micros=limit_micros, period=period, **budget)
    return tenant["id"], key["id"], secret


def test_settle_charges_the_actual_cost_once_and_returns_the_stored_record(book):
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=10_000)
    hold = b.reserve(b.authenticate(secret), "r1", LARGE, 100, 200)
    assert hold.amount_micros == 100 * 2 + 200 * 8
    first = b.settle(hold, prompt_tokens=100, cached_tokens=40, completion_tokens=20)
    assert first.cost_micros == 60 * 2 + 20 + 20 * 8
    retried = b.settle(hold, prompt_tokens=100, completion_tokens=200)  # a retry after a lost answer
    assert retried == first
    book.flush()
    assert book.spent(tenant) == first.cost_micros
    assert book.records_cost(tenant) == first.cost_micros
    assert asyncio.run(b.ledger.record("r1")) == first
    assert asyncio.run(b.ledger.holds(tenant)) == (0, 0)


def test_the_same_settle_at_once_on_two_tasks_charges_once(book):
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=10_000)
    hold = b.reserve(b.authenticate(secret), "twice", LARGE, 10, 10)

    async def both():
        return await asyncio.gather(*[b.ledger.settle(hold, prompt_tokens=10, completion_tokens=n) for n in (3, 7)])

    one, other = asyncio.run(both())
    assert one == other
    book.flush()
    assert book.spent(tenant) == one.cost_micros
    assert book.records_cost(tenant) == one.cost_micros


@pytest.mark.slow
def test_a_reaped_hold_settles_late_to_the_stored_zero_cost_record(book):
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=10_000)
    orphan = b.reserve(b.authenticate(secret), "orphan", LARGE, 100, 100)
    assert b.reap_expired(book.clock() + timedelta(hours=1)) == 1
    late = b.settle(orphan, prompt_tokens=100, completion_tokens=100)  # its replica was only slow, not dead
    assert late.status == "expired"
    assert late.cost_micros == 0
    book.flush()
    assert asyncio.run(b.ledger.record("orphan")) == late
    assert book.spent(tenant) == 0
    assert book.records_cost(tenant) == 0
    assert asyncio.run(b.ledger.holds(tenant)) == (0, 0)
    assert b.reap_expired(book.clock() + timedelta(hours=2)) == 0


def test_a_crash_between_commit_and_acknowledgement_loses_and_doubles_nothing(book):
    """The settlement committed, its acknowledgement never arrived (to the gateway: the answer to its settle; to the
    Redis writer: its XACK): the request settled again and the batch written again change nothing."""
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=10_000)
    budget = b.list_budgets(tenant)[0]
    principal = b.authenticate(secret)
    holds = [b.reserve(principal, f"c{i}", SMALL, 100, 100) for i in range(4)]
    records = [b.settle(hold, prompt_tokens=100, completion_tokens=10 * i) for i, hold in enumerate(holds)]
    book.flush()
    if book.writer:  # the writer died after its commit: the same entries are delivered again
        book.writer.commit([{"record": vars(r), "budgets": [(budget["id"], budget["period_key"], 10_000)],
                             "alerts": []} for r in records])
    again = [b.settle(hold, prompt_tokens=100, completion_tokens=100) for hold in holds]
    assert again == records
    book.flush()
    assert book.spent(tenant) == sum(r.cost_micros for r in records)
    assert book.records_cost(tenant) == sum(r.cost_micros for r in records)


def test_a_budget_made_after_traffic_starts_at_the_spend_already_made(book):
    b = book.billing
    tenant, key, secret = customer(book)
    principal = b.authenticate(secret)
    spent = sum(b.settle(b.reserve(principal, f"early{i}", LARGE, 100, 100), prompt_tokens=100,
                         completion_tokens=50).cost_micros for i in range(3))
    assert spent == 3 * (200 + 400)
    b.set_budget(tenant, limit_micros=spent + 500, period="monthly")
    b.set_budget(tenant, key_id=key, limit_micros=spent + 900, period="daily")
    assert book.spent(tenant) == spent
    assert book.spent(tenant, key) == spent
    principal = b.authenticate(secret)
    with pytest.raises(BudgetExceeded) as refused:
        b.reserve(principal, "over", LARGE, 100, 100)  # 1000 worst case, 500 left
    assert refused.value.spent_micros == spent
    assert refused.value.scope == "tenant"
    b.settle(b.reserve(principal, "fits", LARGE, 50, 50), prompt_tokens=50, completion_tokens=50)
    book.flush()
    assert book.spent(tenant) == spent + 500
    assert book.spent(tenant, key) == spent + 500
    assert book.records_cost(tenant) == spent + 500


def test_a_budget_moved_from_daily_to_monthly_keeps_the_spend(book):
    b = book.billing
    book.clock.now = datetime(2026, 6, 2, 12, 0)
    tenant, _, secret = customer(book, limit_micros=5_000, period="daily")
    book.clock.now = datetime(2026, 6, 1, 12, 0)  # yesterday's request, then today's
    b.settle(b.reserve(b.authenticate(secret), "june1", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)
    book.clock.now = datetime(2026, 6, 2, 12, 0)
    b.settle(b.reserve(b.authenticate(secret), "june2", LARGE, 100, 10), prompt_tokens=100, completion_tokens=10)
    book.flush()
    assert book.spent(tenant) == 280  # today's only
    b.set_budget(tenant, limit_micros=5_000, period="monthly")
    assert book.spent(tenant) == 1000 + 280  # the month's
    b.settle(b.reserve(b.authenticate(secret), "june2b", LARGE, 0, 10), prompt_tokens=0, completion_tokens=10)
    book.flush()
    assert book.spent(tenant) == 1000 + 280 + 80
    assert book.records_cost(tenant) == 1000 + 280 + 80
    b.set_budget(tenant, limit_micros=440, period="daily")  # and back: today's counter counts today's records again
    assert book.spent(tenant) == 280 + 80
    with pytest.raises(BudgetExceeded):
        b.reserve(b.authenticate(secret), "june2c", LARGE, 0, 11)  # 88 > 440 - 360
    b.settle(b.reserve(b.authenticate(secret), "june2d", LARGE, 0, 10), prompt_tokens=0, completion_tokens=10)
    book.flush()
    assert book.spent(tenant) == 440


def test_a_request_counts_in_the_period_it_was_admitted_in(book):
    """Admitted at 23:59 on the last of May, settled after midnight: May's budget and May's report day."""
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=100_000)
    hold = b.reserve(b.authenticate(secret), "midnight", LARGE, 100, 100)
    book.clock.now = datetime(2026, 6, 1, 0, 1)
    record = b.settle(hold, prompt_tokens=100, completion_tokens=100)
    assert record.day == "2026-05-31"
    book.flush()
    assert b.usage(tenant)[0]["day"] == "2026-05-31"
    assert book.spent(tenant) == 0  # June's counters: nothing in June
    book.clock.now = datetime(2026, 5, 31, 23, 59)
    assert book.spent(tenant) == record.cost_micros


def test_holds_never_pass_the_tenant_or_the_key_budget_and_take_both_or_neither(book):
    b = book.billing
    tenant, key, secret = customer(book, limit_micros=3_000)
    b.set_budget(tenant, key_id=key, limit_micros=2_000)
    principal = b.authenticate(secret)
    first = b.reserve(principal, "a", LARGE, 100, 100)  # 1000 on both
    second = b.reserve(principal, "b", LARGE, 100, 100)  # the key's 2000 all held
    with pytest.raises(BudgetExceeded) as refused:
        b.reserve(principal, "c", LARGE, 0, 1)
    assert refused.value.scope == "key"
    assert refused.value.retryable
    b.settle(first, prompt_tokens=100, completion_tokens=10)  # 280: 720 of the key's hold comes back
    b.release(second)
    assert asyncio.run(b.ledger.holds(tenant)) == (0, 0)
    b.settle(b.reserve(principal, "c", LARGE, 100, 65), prompt_tokens=100, completion_tokens=65)  # 720: the rest
    book.flush()
    assert book.spent(tenant, key) == 1000
    assert book.spent(tenant) == 1000
    assert book.records_cost(tenant) == 1000


def test_a_server_failure_with_no_token_is_free_and_the_alert_fires_once(book):
    b = book.billing
    tenant, _, secret = customer(book, limit_micros=1_000, alert_percents=[50])
    principal = b.authenticate(secret)
    failed = b.settle(b.reserve(principal, "f", LARGE, 100, 100), prompt_tokens=100, completion_tokens=0,
                      status="error")
    assert failed.cost_micros == 0
    for i in range(3):
        b.settle(b.reserve(principal, f"s{i}", LARGE, 100, 10), prompt_tokens=100, completion_tokens=10)  # 280 each
    book.flush()
    with b.engine.connect() as conn:
        assert conn.execute(select(budget_alerts.c.spent_micros)).scalars().all() == [560]
    assert book.spent(tenant) == 840


@pytest.mark.slow
def test_each_alert_threshold_fires_once_per_period_also_two_at_once(book):
    """Thresholds 25, 50 and 100%: each alerts once when spend reaches it, a settlement that passes two alerts both,
    retries and later settlements add none, and the next period alerts afresh. The same rows on every ledger."""
    b = book.billing
    tenant, key, secret = customer(book, limit_micros=1_000, period="daily", alert_percents=[100, 25, 50])
    b.set_budget(tenant, key_id=key, limit_micros=2_000, period="daily", alert_percents=[10, 50])
    assert [x["alert_percents"] for x in b.list_budgets(tenant)] == [[25, 50, 100], [10, 50]]

    def charge(rid: str, completion_tokens: int) -> None:  # LARGE output: 8 micro-USD a token
        hold = b.reserve(b.authenticate(secret), rid, LARGE, 0, completion_tokens)
        b.settle(hold, prompt_tokens=0, completion_tokens=completion_tokens)
        b.settle(hold, prompt_tokens=0, completion_tokens=completion_tokens)  # a retry: no second alert

    def alerts() -> set[tuple]:
        book.flush()
        rows = [("key" if a["key_id"] else "tenant", a["period_key"], a["alert_percent"], a["spent_micros"])
                for a in b.list_alerts(tenant)]
        assert len(rows) == len(set(rows))
        return set(rows)

    charge("a", 20)  # 160: the key's 10% (200) not yet, nothing
    assert alerts() == set()
    charge("b", 50)  # 560: the tenant's 25% and 50% at once, the key's 10%
    day = "2026-05-31"
    first = {("tenant", day, 25, 560), ("tenant", day, 50, 560), ("key", day, 10, 560)}
    assert alerts() == first
    charge("c", 40)  # 880: nothing new
    assert alerts() == first
    charge("d", 15)  # 1000: the tenant's 100% and the key's 50%
    first |= {("tenant", day, 100, 1000), ("key", day, 50, 1000)}
    assert alerts() == first
    with b.engine.connect() as conn:
        assert sorted(conn.execute(select(budget_spend.c.alerted_percent)).scalars()) == [50, 100]

    book.clock.now += timedelta(days=1)  # a new period: every threshold afresh
    charge("e", 70)  # 560
    day = "2026-06-01"
    assert alerts() - first == {("tenant", day, 25, 560), ("tenant", day, 50, 560), ("key", day, 10, 560)}
    assert differences(b) == []


def test_an_overrun_is_billed_in_full_and_the_budget_passes_by_at_most_that_overrun(book):
    """An upstream generated 500 tokens on a 100-token hold: the record and the budget keep the true cost, the
    budget is over by exactly that request's overrun, no further hold fits (not even a retry later), and every
    figure still reconciles."""
    b = book.billing
    tenant, key, secret = customer(book, limit_micros=2_000)
    b.set_budget(tenant, key_id=key, limit_micros=2_000)
    principal = b.authenticate(secret)
    b.settle(b.reserve(principal, "before", LARGE, 100, 10), prompt_tokens=100, completion_tokens=10)  # 280
    hold = b.reserve(principal, "over", LARGE, 100, 100)  # 1000 of the 1720 left
    record = b.settle(hold, prompt_tokens=100, completion_tokens=500)
    assert (record.cost_micros, record.token_cost_micros) == (200 + 4000, 4200)
    overrun = rules.overrun_micros(hold, record)
    assert overrun == 3200
    book.flush()
    assert book.spent(tenant) == book.spent(tenant, key) == book.records_cost(tenant) == 280 + 4200
    assert book.spent(tenant) - 2_000 <= overrun
    with pytest.raises(BudgetExceeded) as refused:
        b.reserve(b.authenticate(secret), "after", LARGE, 0, 1)
    assert refused.value.spent_micros == 4480 and not refused.value.retryable
    assert asyncio.run(b.ledger.holds(tenant)) == (0, 0)
    assert differences(b) == []
