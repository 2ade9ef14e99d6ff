"""The catalog's `tenant_weights` reach our engine with each request: a named tenant's weight, 1 for the others;
a weight below 1 is refused when the catalog loads."""
from __future__ import annotations

import openai
import pytest
from pydantic import ValidationError

from backends.echo import EchoBackend
from gateway.catalog import Catalog, embedded
from gateway.config import Settings
from tests.harness import gateway_app
from tests.util import serve


class Recording(EchoBackend):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.weights: list[int] = []

    async def generate(self, request):
        self.weights.append(request.tenant_weight)
        async for delta in super().generate(request):
            yield delta


def test_each_request_carries_its_tenants_catalog_weight(tmp_path, tokenizer):
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    catalog = embedded(Settings(database_url=database_url)).model_dump()
    catalog["models"][0]["tenant_weights"] = {"heavy": 3}
    small = Recording("ferryman-small")
    wiring = gateway_app(database_url, tokenizer=tokenizer, catalog=Catalog.model_validate(catalog),
                         backends={"ferryman-small": small, "ferryman-large": EchoBackend("ferryman-large")})
    keys = {name: wiring.tenant(name)[1] for name in ("heavy", "light")}
    with serve(wiring.app) as url:
        for name in ("heavy", "light"):
            client = openai.OpenAI(base_url=url + "/v1", api_key=keys[name], max_retries=0)
            client.chat.completions.create(model="ferryman-small", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2)
    assert small.weights == [3, 1]


def test_a_weight_below_one_is_refused(tmp_path):
    catalog = embedded(Settings(database_url="sqlite://")).model_dump()
    catalog["models"][0]["tenant_weights"] = {"heavy": 0}
    with pytest.raises(ValidationError, match="tenant_weights"):
        Catalog.model_validate(catalog)
