"""Bills match the docs on failures; a 402's cause is told apart; operator input never reaches the database in a
shape it refuses; demo keys of other replicas keep working. On SQLite and PostgreSQL."""
from datetime import timedelta

import pytest

from billing import Billing, BudgetExceeded

LARGE = "ferryman-large"  # 2 USD in, 0.5 cached, 8 out per 1M tokens: 100 prompt + 100 max tokens hold 1000 micros


def tenant_with_key(b: Billing, name: str, limit_micros: int | None = None):
    tenant = b.create_tenant(name)
    if limit_micros is not None:
        b.set_budget(tenant["id"], limit_micros=limit_micros)
    return b.authenticate(b.create_key(tenant["id"])[0])


@pytest.mark.parametrize("status", ["error", "timeout"])
def test_a_server_failure_before_the_first_token_costs_nothing_but_keeps_its_record(billing, status):
    p = tenant_with_key(billing, "acme", 10_000)
    record = billing.settle(billing.reserve(p, "failed", LARGE, 100, 100), prompt_tokens=100, completion_tokens=0,
                            status=status, baseline_model=LARGE)
    assert (record.status, record.prompt_tokens, record.cost_micros, record.savings_micros) == (status, 100, 0, 0)
    assert billing.usage()[0]["status"] == status
    assert billing.ledger_totals() == {
        "spent_micros": 0, "reserved_micros": 0, "open_reservations": 0}


@pytest.mark.slow
def test_a_client_that_left_pays_for_what_was_generated_a_stream_that_broke_pays_nothing(billing):
    p = tenant_with_key(billing, "acme", 10_000)
    left = billing.settle(billing.reserve(p, "left", LARGE, 100, 100), prompt_tokens=100, completion_tokens=10,
                          status="cancelled")
    left_early = billing.settle(billing.reserve(p, "left-early", LARGE, 100, 100), prompt_tokens=100,
                                completion_tokens=0, status="cancelled")
    broke = billing.settle(billing.reserve(p, "broke", LARGE, 100, 100), prompt_tokens=100, completion_tokens=10,
                           status="error")
    # the broken stream's client got an error event: a failure of ours, free whatever was generated before it
    assert (left.cost_micros, left_early.cost_micros, broke.cost_micros) == (280, 200, 0)
    assert (broke.completion_tokens, billing.ledger_totals()["spent_micros"]) == (10, 480)


def test_budget_refusal_says_whether_it_is_spent_or_only_held_by_requests_in_flight(billing):
    p = tenant_with_key(billing, "acme", 2000)
    first, second = billing.reserve(p, "a", LARGE, 100, 100), billing.reserve(p, "b", LARGE, 100, 100)
    with pytest.raises(BudgetExceeded) as held:
        billing.reserve(p, "c", LARGE, 100, 100)
    assert held.value.retryable
    assert held.value.retry_after_s > 0
    assert "retry shortly" in str(held.value)
    assert (held.value.spent_micros, held.value.reserved_micros, held.value.requested_micros) == (0, 2000, 1000)
    billing.settle(first, prompt_tokens=100, completion_tokens=100)
    billing.settle(second, prompt_tokens=100, completion_tokens=90)  # 1920 spent: 80 left, nothing held
    with pytest.raises(BudgetExceeded) as spent:
        billing.reserve(p, "c", LARGE, 100, 100)
    assert not spent.value.retryable
    assert spent.value.retry_after_s is None
    assert "larger budget" in str(spent.value)
    # Held, but the request could not fit even when every hold is gone: not worth a retry either.
    hold = billing.reserve(p, "d", LARGE, 10, 5)  # 60
    with pytest.raises(BudgetExceeded) as too_big:
        billing.reserve(p, "e", LARGE, 100, 100)
    assert too_big.value.reserved_micros == 60
    assert not too_big.value.retryable
    billing.release(hold)


def test_nul_bytes_control_characters_and_ids_past_the_columns_are_refused_before_the_database(billing):
    tenant = billing.create_tenant("acme")
    for bad in ("ac\x00me", "tab\tname", "\x7f", " ", "x" * 129):
        with pytest.raises(ValueError):
            billing.create_tenant(bad)
        with pytest.raises(ValueError):
            billing.create_key(tenant["id"], bad)
        with pytest.raises(ValueError):
            billing.set_price(bad, input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=1)
        with pytest.raises(ValueError):
            billing.update_tenant(tenant["id"], allowed_models=[bad])
    with pytest.raises(LookupError):
        billing.tenant_by_name("ac\x00me")
    for huge in (2**31, 2**63, 2**70, 0, -1):
        for call in (billing.tenant, billing.key, billing.revoke_key, billing.delete_budget,
                     lambda i: billing.create_key(i, "k"), lambda i: billing.set_budget(i, limit_micros=1)):
            with pytest.raises(LookupError):
                call(huge)
    p = billing.authenticate(billing.create_key(tenant["id"])[0])
    billing.settle(billing.reserve(p, "r", LARGE, 1, 1), prompt_tokens=1, completion_tokens=1)
    assert billing.record_feedback(p, "r\x00", 1.0, None) is False
    assert billing.record_feedback(p, "r", 1.0, "nul \x00 inside") is True
    assert billing.usage()[0]["feedback_comment"] == "nul \ufffd inside"
    assert [t["name"] for t in billing.list_tenants()] == ["acme"]


def test_opted_in_prompt_with_a_nul_byte_still_settles(billing):
    p = tenant_with_key(billing, "keeper")
    billing.update_tenant(p.tenant_id, store_prompts=True)
    billing.keys.forget()
    p = billing.authenticate(billing.create_key(p.tenant_id)[0])
    record = billing.settle(billing.reserve(p, "r", LARGE, 1, 1), prompt_tokens=1, completion_tokens=1,
                            prompt_text="a\x00b")
    assert record.prompt_text == "a\ufffdb"
    assert billing.usage()[0]["prompt_text"] == "a\ufffdb"


def test_each_replica_start_prints_a_demo_key_and_the_others_keep_working(db_url):
    replicas = [Billing(db_url) for _ in range(2)]
    replicas[0].create_schema()
    keys = [b.issue_demo_key() for b in replicas] + [replicas[0].issue_demo_key()]
    checker = Billing(db_url)
    principals = [checker.authenticate(k) for k in keys]
    assert all(p is not None and p.tenant_name == "demo" for p in principals)
    assert len(set(keys)) == 3
    demo = checker.list_keys(principals[0].tenant_id)
    assert all(k["revoked_at"] is None and abs(k["expires_at"] - k["created_at"] - timedelta(days=7)) < timedelta(seconds=1)
               for k in demo)
    later = Billing(db_url, clock=lambda: demo[0]["created_at"] + timedelta(days=8))
    assert later.authenticate(keys[0]) is None  # demo keys lapse on their own
    for b in [*replicas, checker, later]:
        b.close()
