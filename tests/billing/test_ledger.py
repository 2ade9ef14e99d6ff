"""Reservation math, settlement, budgets, periods, alerts and the reaper, on SQLite and PostgreSQL."""
import csv
import io
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from billing import Billing, BudgetExceeded, DuplicateRequest, UnknownPrice, rules
from billing.models import budget_alerts, reservations, usage_records
from billing.reports import to_csv, totals

# Default prices (micro-USD per 1M tokens): large 2M in / 0.5M cached / 8M out; small a tenth of that.
LARGE, SMALL = "ferryman-large", "ferryman-small"


class Clock:
    def __init__(self, now: datetime = datetime(2026, 3, 31, 23, 0)):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def ledger(db_url: str, **kw) -> Billing:
    b = Billing(db_url, **kw)
    b.create_schema()
    b.ensure_admin_defaults()
    return b


def tenant_with_key(b: Billing, limit_micros: int | None = None, period: str = "monthly", **budget):
    tenant = b.create_tenant(f"t-{time.perf_counter_ns()}")
    secret, key = b.create_key(tenant["id"], "main")
    if limit_micros is not None:
        b.set_budget(tenant["id"], limit_micros=limit_micros, period=period, **budget)
    return tenant, key, b.authenticate(secret)


def budget_of(b: Billing, tenant_id: int, key_id: int | None = None) -> dict:
    return next(x for x in b.list_budgets(tenant_id) if x["key_id"] == key_id)


def count(b: Billing, table) -> int:
    with b.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_reserve_holds_the_worst_case_and_settle_charges_the_actual_cost(billing):
    tenant, _, p = tenant_with_key(billing, 1_000_000)
    res = billing.reserve(p, "r1", LARGE, prompt_tokens=100, max_tokens=200)
    assert res.amount_micros == 100 * 2 + 200 * 8
    assert budget_of(billing, tenant["id"])["reserved_micros"] == 1800

    record = billing.settle(res, prompt_tokens=100, cached_tokens=50, completion_tokens=20, latency_ms=12.5,
                            route="large", difficulty=0.9)
    assert record.cost_micros == 50 * 2 + 25 + 20 * 8 == billing.cost_micros(LARGE, 100, 50, 20)
    b = budget_of(billing, tenant["id"])
    assert (b["spent_micros"], b["reserved_micros"], b["remaining_micros"]) == (285, 0, 1_000_000 - 285)
    assert count(billing, reservations) == 0


def test_small_model_records_its_savings_against_the_route_groups_baseline(billing):
    _, _, p = tenant_with_key(billing, 1_000_000)
    record = billing.settle(billing.reserve(p, "s1", SMALL, 1000, 100), prompt_tokens=1000, completion_tokens=100,
                            route_group="auto", baseline_model=LARGE)
    assert record.cost_micros == 280 and record.baseline_cost_micros == 2800
    assert record.savings_micros == 2520 and record.route_group == "auto"
    # Another group's strongest tier is another baseline: savings follow each record's own.
    billing.set_price("ext-big", input_micros_per_m=1_000_000, cached_input_micros_per_m=0, output_micros_per_m=0)
    other = billing.settle(billing.reserve(p, "s2", SMALL, 1000, 100), prompt_tokens=1000, completion_tokens=100,
                           route_group="cheap", baseline_model="ext-big")
    assert other.baseline_cost_micros == 1000 and other.savings_micros == 720
    # No group (a pinned model) or an unpriced baseline: no baseline, and no savings claimed.
    pinned = billing.settle(billing.reserve(p, "s3", SMALL, 1000, 100), prompt_tokens=1000, completion_tokens=100)
    unpriced = billing.settle(billing.reserve(p, "s4", SMALL, 1000, 100), prompt_tokens=1000, completion_tokens=100,
                              baseline_model="gone")
    assert pinned.baseline_cost_micros is None is unpriced.baseline_cost_micros and pinned.savings_micros == 0
    row = billing.report(("tenant",))[0]
    assert (row["cost_micros"], row["baseline_cost_micros"], row["savings_micros"]) == (4 * 280, 2800 + 1000 + 560,
                                                                                       2520 + 720)


def test_a_request_over_budget_is_refused_before_any_work_and_changes_nothing(billing):
    tenant, _, p = tenant_with_key(billing, 1000)
    with pytest.raises(BudgetExceeded) as refused:
        billing.reserve(p, "r1", LARGE, prompt_tokens=100, max_tokens=200)
    assert "Lower max_tokens" in str(refused.value) and "$0.001000" in str(refused.value)
    assert (refused.value.requested_micros, refused.value.limit_micros, refused.value.scope) == (1800, 1000, "tenant")
    b = budget_of(billing, tenant["id"])
    assert (b["spent_micros"], b["reserved_micros"]) == (0, 0)
    assert count(billing, reservations) == count(billing, usage_records) == 0
    billing.settle(billing.reserve(p, "r2", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)  # 1000 fits


def test_holds_of_requests_in_flight_count_against_the_budget(billing):
    _, _, p = tenant_with_key(billing, 2000)
    first = billing.reserve(p, "a", LARGE, 100, 100)  # holds 1000
    second = billing.reserve(p, "b", LARGE, 100, 100)  # holds the other 1000
    with pytest.raises(BudgetExceeded):
        billing.reserve(p, "c", LARGE, 0, 1)
    billing.settle(first, prompt_tokens=100, completion_tokens=10)  # costs 280: 720 comes back
    billing.reserve(p, "c", LARGE, 100, 65)  # 720 exactly
    billing.release(second)


def test_settle_is_idempotent_by_request_id(billing):
    tenant, _, p = tenant_with_key(billing, 1_000_000)
    res = billing.reserve(p, "once", LARGE, 10, 10)
    first = billing.settle(res, prompt_tokens=10, completion_tokens=10)
    again = billing.settle(res, prompt_tokens=10, completion_tokens=5, status="error")
    assert again == first and billing.release(res) == first
    assert count(billing, usage_records) == 1
    assert budget_of(billing, tenant["id"])["spent_micros"] == first.cost_micros == 100


def test_release_frees_the_whole_hold_and_records_a_zero_cost_request(billing):
    tenant, _, p = tenant_with_key(billing, 1_000_000)
    record = billing.release(billing.reserve(p, "failed", LARGE, 10, 10), status="error")
    assert (record.cost_micros, record.status) == (0, "error")
    b = budget_of(billing, tenant["id"])
    assert (b["spent_micros"], b["reserved_micros"]) == (0, 0)
    assert count(billing, usage_records) == 1


def test_a_backend_that_overruns_max_tokens_is_billed_its_true_cost(billing):
    tenant, _, p = tenant_with_key(billing, 1_000_000)
    res = billing.reserve(p, "over", LARGE, 10, 10)
    record = billing.settle(res, prompt_tokens=10, completion_tokens=500)
    assert (res.amount_micros, record.cost_micros, record.token_cost_micros) == (100, 4020, 4020)
    assert rules.overrun_micros(res, record) == 4020 - 100
    assert budget_of(billing, tenant["id"])["spent_micros"] == 4020


def test_key_budget_and_tenant_budget_both_apply(billing):
    tenant = billing.create_tenant("acme")
    secret_a, key_a = billing.create_key(tenant["id"], "a")
    secret_b, _ = billing.create_key(tenant["id"], "b")
    billing.set_budget(tenant["id"], limit_micros=3000, period="daily")
    billing.set_budget(tenant["id"], key_id=key_a["id"], limit_micros=1000, period="monthly")
    a, b = billing.authenticate(secret_a), billing.authenticate(secret_b)
    billing.reserve(a, "a1", LARGE, 100, 100)  # 1000: key a is now full
    with pytest.raises(BudgetExceeded) as refused:
        billing.reserve(a, "a2", LARGE, 0, 1)
    assert refused.value.scope == "key" and refused.value.period == "monthly"
    billing.reserve(b, "b1", LARGE, 100, 100)
    billing.reserve(b, "b2", LARGE, 100, 100)  # the tenant's 3000 are all held now
    with pytest.raises(BudgetExceeded) as refused:
        billing.reserve(b, "b3", LARGE, 0, 1)
    assert refused.value.scope == "tenant"
    assert budget_of(billing, tenant["id"])["reserved_micros"] == 3000
    assert budget_of(billing, tenant["id"], key_a["id"])["reserved_micros"] == 1000


def test_daily_budgets_roll_over_at_midnight_utc(db_url):
    clock = Clock(datetime(2026, 3, 31, 23, 59))
    b = ledger(db_url, clock=clock)
    tenant, _, p = tenant_with_key(b, 1000, period="daily")
    b.settle(b.reserve(p, "d1", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)
    with pytest.raises(BudgetExceeded):
        b.reserve(p, "d2", LARGE, 0, 1)
    clock.now = datetime(2026, 4, 1, 0, 0, 1)
    b.settle(b.reserve(p, "d2", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)
    assert budget_of(b, tenant["id"])["period_key"] == "2026-04-01"
    assert b.ledger_totals(tenant["id"])["spent_micros"] == 2000
    assert [(r["day"], r["cost_micros"]) for r in b.report(("day",), tenant_id=tenant["id"])] == [
        ("2026-03-31", 1000), ("2026-04-01", 1000)]
    b.close()


def test_soft_alert_is_recorded_once_per_period(db_url, caplog):
    clock = Clock(datetime(2026, 3, 30, 12, 0))
    b = ledger(db_url, clock=clock)
    _, _, p = tenant_with_key(b, 10_000, period="daily", alert_percents=[50])
    for i in range(8):  # 1000 each: crosses 50% on the fifth
        b.settle(b.reserve(p, f"a{i}", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)
        assert count(b, budget_alerts) == (1 if i >= 4 else 0)
    assert "reached its 50% alert for 2026-03-30" in caplog.text
    clock.now += timedelta(days=1)
    for i in range(5):
        b.settle(b.reserve(p, f"b{i}", LARGE, 100, 100), prompt_tokens=100, completion_tokens=100)
    alerts = b.list_alerts()
    assert [(a["period_key"], a["spent_micros"], a["limit_micros"]) for a in alerts] == [
        ("2026-03-30", 5000, 10_000), ("2026-03-31", 5000, 10_000)]
    b.close()


def test_reaper_releases_holds_of_a_dead_replica_and_a_late_settle_changes_nothing(db_url):
    clock = Clock()
    b = ledger(db_url, clock=clock, reservation_ttl_s=60)
    tenant, _, p = tenant_with_key(b, 10_000)
    orphan = b.reserve(p, "orphan", LARGE, 100, 100)
    live = b.reserve(p, "live", LARGE, 100, 100)
    clock.now += timedelta(seconds=30)
    assert b.reap_expired() == 0
    clock.now += timedelta(seconds=31)
    fresh = b.reserve(p, "fresh", LARGE, 100, 100)
    assert b.reap_expired() == 2
    assert budget_of(b, tenant["id"])["reserved_micros"] == fresh.amount_micros
    late = b.settle(orphan, prompt_tokens=100, completion_tokens=100)
    assert (late.status, late.cost_micros) == ("expired", 0)
    assert b.settle(live, prompt_tokens=1, completion_tokens=1).status == "expired"
    b.settle(fresh, prompt_tokens=100, completion_tokens=1)
    totals_ = b.ledger_totals(tenant["id"])
    assert (totals_["reserved_micros"], totals_["open_reservations"]) == (0, 0)
    assert totals_["spent_micros"] == sum(r["cost_micros"] for r in b.report(tenant_id=tenant["id"])) == 208
    b.close()


def test_on_sqlite_the_money_path_keeps_one_connection_per_thread_and_gives_it_back_on_close(sqlite_url):
    """A pool checkout and return per transaction cost about as much as a hold's statements (issue 27, point 1):
    each thread that reserves and settles keeps one connection. Two threads, two connections, the same ledger; all
    given back on close."""
    import threading

    from sqlalchemy import event

    b = ledger(sqlite_url)
    tenant, _, p = tenant_with_key(b, 1_000_000)
    b.ledger.prices(LARGE)  # cached for the test's length: its lookup is not the money path's
    checkouts = []
    event.listen(b.engine, "checkout", lambda *_: checkouts.append(threading.get_ident()))

    def requests(prefix: str) -> None:
        for i in range(20):
            b.ledger._settle(b.ledger._reserve(p, f"{prefix}{i}", LARGE, 10, 10), prompt_tokens=10,
                             completion_tokens=5)

    threads = [threading.Thread(target=requests, args=(prefix,)) for prefix in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checkouts) == 2 and len(set(checkouts)) == 2  # 80 transactions, one checkout per thread
    assert count(b, usage_records) == 40 and count(b, reservations) == 0
    assert budget_of(b, tenant["id"])["spent_micros"] == 40 * b.cost_micros(LARGE, 10, 0, 5)
    b.close()
    assert b.engine.pool.checkedout() == 0


def test_a_request_id_can_hold_only_one_reservation(billing):
    tenant, _, p = tenant_with_key(billing, 10_000)
    billing.reserve(p, "dup", LARGE, 10, 10)
    with pytest.raises(DuplicateRequest):
        billing.reserve(p, "dup", LARGE, 10, 10)
    assert budget_of(billing, tenant["id"])["reserved_micros"] == 100


def test_without_a_budget_requests_are_still_recorded(billing):
    _, _, p = tenant_with_key(billing)
    record = billing.settle(billing.reserve(p, "free", SMALL, 10, 10), prompt_tokens=10, completion_tokens=10)
    assert record.cost_micros == 10 and count(billing, usage_records) == 1 and count(billing, reservations) == 0


def test_a_price_edit_applies_to_new_requests_not_to_those_in_flight(billing):
    _, _, p = tenant_with_key(billing, 1_000_000)
    in_flight = billing.reserve(p, "old", SMALL, 1000, 0)
    billing.set_price(SMALL, input_micros_per_m=1_000_000, cached_input_micros_per_m=0, output_micros_per_m=0)
    assert billing.settle(in_flight, prompt_tokens=1000, completion_tokens=0).cost_micros == 200
    assert billing.reserve(p, "new", SMALL, 1000, 0).amount_micros == 1000
    with pytest.raises(UnknownPrice):
        billing.reserve(p, "x", "no-such-model", 1, 1)
    with pytest.raises(ValueError):
        billing.set_price(SMALL, input_micros_per_m=-1, cached_input_micros_per_m=0, output_micros_per_m=0)


def test_keys_are_stored_hashed_and_unknown_keys_are_refused(billing):
    tenant = billing.create_tenant("acme", priority="interactive", quality_floor=0.9, large_share=0.3, rpm=10)
    secret, key = billing.create_key(tenant["id"], "k", tpm=500, max_concurrent=2)
    assert secret.startswith("fm-") and len(secret) > 40 and "key_hash" not in key
    with billing.engine.connect() as conn:
        dump = str(conn.execute(text("select * from api_keys")).all())
    assert secret not in dump and secret[10:] not in dump
    p = billing.authenticate(secret)
    assert (p.tenant_name, p.priority, p.quality_floor, p.large_share) == ("acme", "interactive", 0.9, 0.3)
    assert [(lim.scope, lim.rpm, lim.tpm, lim.max_concurrent) for lim in p.limits] == [
        (f"tenant:{tenant['id']}", 10, None, None), (f"key:{key['id']}", None, 500, 2)]
    assert billing.authenticate(secret + "x") is None and billing.authenticate("") is None


def test_revocation_reaches_another_replica_within_the_cache_ttl(db_url):
    a, b = ledger(db_url, cache_ttl_s=0.3), ledger(db_url, cache_ttl_s=0.3)
    tenant = a.create_tenant("acme")
    secret, key = a.create_key(tenant["id"])
    assert a.authenticate(secret) and b.authenticate(secret)
    a.revoke_key(key["id"])
    assert a.authenticate(secret) is None  # the replica that revoked knows at once
    time.sleep(0.35)
    assert b.authenticate(secret) is None
    a.close(), b.close()


def test_expired_keys_stop_working(db_url):
    clock = Clock()
    b = ledger(db_url, clock=clock)
    tenant = b.create_tenant("acme")
    secret, _ = b.create_key(tenant["id"], expires_at=clock.now + timedelta(hours=1))
    assert b.authenticate(secret) is not None
    clock.now += timedelta(hours=1)
    assert b.authenticate(secret) is None
    b.close()


def test_bad_admin_input_is_refused_with_a_clear_error(billing):
    tenant = billing.create_tenant("acme")
    other = billing.create_tenant("other")
    _, other_key = billing.create_key(other["id"])
    bad = [
        lambda: billing.create_tenant("acme"),
        lambda: billing.create_tenant(" "),
        lambda: billing.create_tenant("x", priority="urgent"),
        lambda: billing.create_tenant("y", large_share=1.5),
        lambda: billing.create_key(tenant["id"], rpm=0),
        lambda: billing.create_key(tenant["id"], tpm=10**10),
        lambda: billing.set_budget(tenant["id"], limit_micros=-1),
        lambda: billing.set_budget(tenant["id"], limit_micros=10, period="weekly"),
        lambda: billing.set_budget(tenant["id"], limit_micros=10, alert_percents=[0]),
        lambda: billing.set_budget(tenant["id"], limit_micros=10, key_id=other_key["id"]),
        lambda: billing.update_tenant(tenant["id"], colour="red"),
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()
    for call in (lambda: billing.tenant(999), lambda: billing.revoke_key(999), lambda: billing.delete_budget(999)):
        with pytest.raises(LookupError):
            call()
    assert [t["name"] for t in billing.list_tenants()] == ["acme", "other"] and billing.list_budgets() == []


def test_reports_group_by_tenant_model_and_day_and_match_the_records(billing):
    _, _, p = tenant_with_key(billing, 10_000_000)
    _, _, q = tenant_with_key(billing, 10_000_000)
    for i, (who, model, out) in enumerate([(p, LARGE, 100), (p, SMALL, 100), (p, SMALL, 50), (q, LARGE, 10)]):
        billing.settle(billing.reserve(who, f"r{i}", model, 1000, 100), prompt_tokens=1000, cached_tokens=200,
                       completion_tokens=out, baseline_model=LARGE)
    rows = billing.report()
    assert [(r["tenant"], r["model"], r["requests"]) for r in rows] == [
        (p.tenant_name, LARGE, 1), (p.tenant_name, SMALL, 2), (q.tenant_name, LARGE, 1)]
    small = rows[1]
    assert small["cost_micros"] == 2 * (160 + 10) + 80 + 40 and small["baseline_cost_micros"] == 2 * 1700 + 800 + 400
    assert small["savings_micros"] == small["baseline_cost_micros"] - small["cost_micros"]
    records = billing.usage(limit=100)
    assert totals(rows)["cost_micros"] == sum(r["cost_micros"] for r in records)
    assert totals(rows)["cost_micros"] == billing.ledger_totals()["spent_micros"]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert parsed[1]["cost_usd"] == f"0.{small['cost_micros']:06d}" and parsed[1]["model"] == SMALL
    assert billing.usage(tenant_id=q.tenant_id)[0]["request_id"] == "r3"
    with pytest.raises(ValueError):
        billing.report(("colour",))
