"""`ferryman db upgrade` builds exactly the schema the code expects, on SQLite and PostgreSQL."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from billing import Billing
from billing.db import alembic_config, current, make_engine, upgrade
from billing.models import metadata


@pytest.mark.slow
def test_upgrade_matches_the_models_and_is_idempotent(db_url):
    upgrade(db_url)
    upgrade(db_url)
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert current(db_url) == head
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()

    billing = Billing(db_url)
    billing.ensure_admin_defaults()
    tenant = billing.create_tenant("acme")
    billing.set_budget(tenant["id"], limit_micros=1000)
    principal = billing.authenticate(billing.create_key(tenant["id"])[0])
    record = billing.settle(billing.reserve(principal, "r", "ferryman-small", 10, 10), prompt_tokens=10,
                            completion_tokens=10)
    assert record.cost_micros == billing.ledger_totals()["spent_micros"] == 10
    billing.close()
