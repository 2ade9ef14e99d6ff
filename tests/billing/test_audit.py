"""The audit log, on SQLite and PostgreSQL: every change, who made it, before -> after; append-only; filters, pages
and CSV. And people's admin keys: stored hashed, revoked at once, the bootstrap key minted once."""
import csv
import io
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from billing import Billing
from billing.audit import SYSTEM, Actor, to_csv
from billing.auth import hash_key
from billing.models import admin_keys, audit_log

ALICE = Actor("alice", "operator")


def actions(billing: Billing) -> list[tuple]:
    return [(e["actor"], e["action"], e["target"]) for e in reversed(billing.audit(limit=None))]


def test_every_change_is_recorded_with_who_what_before_and_after(billing):
    start = len(billing.audit(limit=None))  # the default prices the fixture wrote
    alice = billing.acting(ALICE)
    tenant = alice.create_tenant("acme", rpm=10)
    alice.update_tenant(tenant["id"], rpm=20, priority="batch")
    secret, key = alice.create_key(tenant["id"], "ci")
    alice.update_key(key["id"], tpm=500)
    alice.revoke_key(key["id"])
    budget = alice.set_budget(tenant["id"], limit_micros=1000)
    alice.set_budget(tenant["id"], limit_micros=2000, period="daily")
    alice.delete_budget(budget["id"])
    alice.set_price("m", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=2)
    alice.set_price("m", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=3)

    entries = list(reversed(billing.audit(limit=None)))[start:]
    t, k, b = f"tenant:{tenant['id']}", f"key:{key['id']}", f"budget:{budget['id']}"
    assert [(e["action"], e["target"]) for e in entries] == [
        ("tenant.create", t), ("tenant.update", t), ("key.create", k), ("key.update", k), ("key.revoke", k),
        ("budget.set", b), ("budget.set", b), ("budget.delete", b), ("price.set", "price:m"), ("price.set", "price:m")]
    assert {(e["actor"], e["actor_role"]) for e in entries} == {("alice", "operator")}
    assert entries[0]["before"] is None
    assert entries[0]["after"]["name"] == "acme"
    assert entries[0]["after"]["rpm"] == 10
    # an update keeps only what changed
    assert entries[1]["before"] == {"priority": "standard", "rpm": 10}
    assert entries[1]["after"] == {"priority": "batch", "rpm": 20}
    assert entries[3]["before"] == {"tpm": None}
    assert entries[3]["after"] == {"tpm": 500}
    assert entries[4]["before"] == {"revoked_at": None}
    assert entries[4]["after"]["revoked_at"] is not None
    assert entries[6]["before"] == {"limit_micros": 1000, "period": "monthly"}
    assert entries[6]["after"] == {"limit_micros": 2000, "period": "daily"}
    assert entries[7]["before"]["limit_micros"] == 2000
    assert entries[7]["after"] is None
    assert entries[9]["before"] == {"output_micros_per_m": 2}
    assert entries[9]["after"] == {"output_micros_per_m": 3}
    # a key's secret and its hash appear nowhere in the log
    logged = str(billing.audit(limit=None))
    assert secret not in logged
    assert hash_key(secret) not in logged
    assert "key_hash" not in logged


def test_no_change_and_a_refused_change_record_nothing(billing):
    tenant = billing.create_tenant("acme", rpm=10)
    billing.set_price("m", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=2)
    before = len(billing.audit(limit=None))
    billing.update_tenant(tenant["id"], rpm=10)  # as it was
    billing.set_price("m", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=2)  # same price
    billing.ensure_admin_defaults()  # the bundled prices are there already
    with pytest.raises(ValueError):
        billing.create_tenant("acme")  # a duplicate: refused, nothing written
    with pytest.raises(ValueError):
        billing.update_tenant(tenant["id"], priority="vip")
    with pytest.raises(LookupError):
        billing.revoke_key(999)
    assert len(billing.audit(limit=None)) == before


def test_the_database_refuses_to_change_or_delete_an_entry(billing):
    billing.create_tenant("acme")
    statements = ["update audit_log set actor = 'mallory'", "delete from audit_log"]
    if billing.engine.dialect.name == "postgresql":
        statements.append("truncate audit_log")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            with billing.engine.begin() as conn:
                conn.execute(text(statement))
    assert {e["actor"] for e in billing.audit(limit=None)} == {"system:gateway"}
    assert "tenant.create" in {e["action"] for e in billing.audit(limit=None)}


def test_filters_pages_and_csv(db_url):
    moment = [datetime(2026, 11, 30, 12)]
    billing = Billing(db_url, clock=lambda: moment[0])
    billing.create_schema()
    alice, bob = billing.acting(ALICE), billing.acting(Actor("bob", "admin"))
    for i in range(7):
        moment[0] += timedelta(hours=8)
        (alice if i % 2 else bob).create_tenant(f"t{i}")
    bob.set_price("m", input_micros_per_m=1, cached_input_micros_per_m=1, output_micros_per_m=2)

    assert [e["target"] for e in billing.audit(actor="alice")] == ["tenant:6", "tenant:4", "tenant:2"]
    assert [e["action"] for e in billing.audit(action="price")] == ["price.set"]
    assert len(billing.audit(action="tenant")) == 7
    assert billing.audit(action="tenant.update") == []
    assert billing.audit(action="%") == []  # a kind is matched literally, never as a LIKE pattern
    assert [e["target"] for e in billing.audit(target="tenant:3")] == ["tenant:3"]
    # tenant 1 at 2026-11-30 20:00, then one every 8 h: 12-01 04:00, 12:00, 20:00, 12-02 04:00, ...
    day = date(2026, 12, 1)
    assert [e["target"] for e in billing.audit(since=day, until=day)] == ["tenant:4", "tenant:3", "tenant:2"]
    assert len(billing.audit(since=date(2026, 12, 2))) == 4

    pages, before_id = [], None
    while True:
        page = billing.audit(action="tenant", before_id=before_id, limit=3)
        pages.append([e["target"] for e in page])
        if len(page) < 3:
            break
        before_id = page[-1]["id"]
    assert pages == [["tenant:7", "tenant:6", "tenant:5"], ["tenant:4", "tenant:3", "tenant:2"], ["tenant:1"]]

    rows = list(csv.DictReader(io.StringIO(to_csv(billing.audit(actor="bob", limit=None)))))
    assert [(r["actor"], r["actor_role"], r["action"], r["target"]) for r in rows] == [
        ("bob", "admin", "tenant.create", "tenant:1"), ("bob", "admin", "tenant.create", "tenant:3"),
        ("bob", "admin", "tenant.create", "tenant:5"), ("bob", "admin", "tenant.create", "tenant:7"),
        ("bob", "admin", "price.set", "price:m")]
    assert rows[0]["before"] == ""
    assert '"name": "t0"' in rows[0]["after"]
    assert rows[-1]["after"] == '{"cached_input_micros_per_m": 1, "gpu_hour_micros": null, "input_micros_per_m": 1, ' \
                                '"output_micros_per_m": 2}'
    billing.close()


def test_admin_keys_are_stored_hashed_named_once_and_revoked_at_once(billing):
    root = billing.acting(Actor("root", "admin"))
    secret, key = root.admins.create("carol", "finance")
    assert secret.startswith("fm-admin-")
    assert key["key_prefix"] == secret[:13]
    assert billing.admins.authenticate(secret) == Actor("carol", "finance")
    with billing.engine.connect() as conn:
        stored = conn.execute(select(admin_keys.c.key_hash)).scalars().all()
    assert stored == [hash_key(secret)]
    assert secret not in str(billing.admins.list())

    for name, role in (("carol", "operator"), ("env:x", "admin"), ("dave", "root"), ("", "admin")):
        with pytest.raises(ValueError):
            root.admins.create(name, role)
    revoked = root.admins.revoke("carol")
    assert revoked["revoked_at"] is not None
    assert billing.admins.authenticate(secret) is None
    assert billing.admins.authenticate("fm-admin-unknown") is None
    assert actions(billing)[-2:] == [("root", "admin_key.create", f"admin_key:{key['id']}"),
                                     ("root", "admin_key.revoke", f"admin_key:{key['id']}")]
    with billing.engine.connect() as conn:
        assert conn.execute(select(audit_log.c.after).where(audit_log.c.action == "admin_key.create")).scalar_one()[
            "role"] == "finance"


def test_the_bootstrap_admin_key_is_minted_once(db_url):
    replicas = [Billing(db_url) for _ in range(2)]
    replicas[0].create_schema()
    secret = replicas[0].admins.mint_bootstrap()
    assert secret is not None
    assert replicas[1].admins.mint_bootstrap() is None  # a later start (or another replica) keeps that key
    assert replicas[1].admins.authenticate(secret) == Actor("bootstrap", "admin")
    replicas[0].admins.revoke("bootstrap")
    assert replicas[1].admins.mint_bootstrap() is None  # revoked is not never-set: `admin-keys create` makes another
    assert actions(replicas[0])[-2:] == [(SYSTEM.name, "admin_key.create", "admin_key:1"),
                                         (SYSTEM.name, "admin_key.revoke", "admin_key:1")]
    for b in replicas:
        b.close()
