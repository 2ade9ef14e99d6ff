"""A real gateway on a loopback port: real billing (SQLite in a temp dir), real limiter, the bundled tokenizer,
instant echo backends (so these tests measure the gateway, not a model) and a transparent router."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from backends.echo import EchoBackend
from billing import Billing, RateLimiter
from gateway.app import create_app
from gateway.config import Settings
from tests.util import LengthRouter, serve

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "fm-admin-test-key"


@dataclass
class Gateway:
    url: str
    billing: Billing
    tenant_id: int
    api_key: str
    backends: dict

    def records(self) -> list[dict]:
        return self.billing.usage(self.tenant_id)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "models" / "large")


def make_gateway(tmp_path, tokenizer, delay_s: float = 0.0, **settings) -> tuple:
    config = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_key=ADMIN_KEY, **settings)
    billing = Billing(config.database_url)
    billing.create_schema()
    billing.ensure_admin_defaults()
    decode = lambda ids: tokenizer.decode(ids)
    backends = {name: EchoBackend(name, decode, delay_s) for name in ("ferryman-small", "ferryman-large")}
    app = create_app(config, billing=billing, limiter=RateLimiter(), router=LengthRouter(),
                     backends=backends, tokenizer=tokenizer)
    tenant = billing.create_tenant("acme")
    key, _ = billing.create_key(tenant["id"], "test")
    return app, billing, tenant["id"], key, backends


@pytest.fixture
def gateway(tmp_path, tokenizer):
    app, billing, tenant_id, key, backends = make_gateway(tmp_path, tokenizer)
    with serve(app) as url:
        yield Gateway(url, billing, tenant_id, key, backends)


@pytest.fixture
def slow_gateway(tmp_path, tokenizer):
    app, billing, tenant_id, key, backends = make_gateway(tmp_path, tokenizer, delay_s=0.05)
    with serve(app) as url:
        yield Gateway(url, billing, tenant_id, key, backends)
