"""A real gateway on a loopback port: real billing (SQLite in a temp dir), real limiter, the bundled tokenizer,
instant echo backends (so these tests measure the gateway, not a model) and a transparent router."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from billing import Billing
from tests.harness import ADMIN_KEY, echo_backends, gateway_app
from tests.util import serve

ROOT = Path(__file__).resolve().parents[2]


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
    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", tokenizer=tokenizer,
                         backends=echo_backends(tokenizer.decode, delay_s), **settings)
    tenant_id, key = wiring.tenant()
    return wiring.app, wiring.billing, tenant_id, key, wiring.backends


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
