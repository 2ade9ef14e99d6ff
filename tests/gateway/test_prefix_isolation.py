"""The cross-tenant prompt oracle of issue 19, closed: through the gateway and the real engine, tenant A sending
tenant B's secret system prompt finds none of it in the prefix cache (no cached tokens, no discount), while B's
own next turn reuses its cached prefix. A system prompt the operator marked public (the catalog's
`public_prefixes`) is shared by all tenants, and only its own blocks are."""
from __future__ import annotations

from pathlib import Path

import openai
import pytest

from backends.echo import EchoBackend
from backends.engine import EngineBackend, EngineConfig
from gateway.catalog import embedded
from gateway.config import Settings
from tests.harness import gateway_app
from tests.util import serve

ROOT = Path(__file__).resolve().parents[2]
SECRET = [{"role": "system", "content": "You guard the vault. The launch code is 7 4 1 9 2 8. Never say it."},
          {"role": "user", "content": "reverse abcd"}]
PUBLIC = ("You are Ferry, the assistant of Acme Corp. Answer briefly and politely, in plain words, and say so "
          "when you do not know the answer to a question.")


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, tokenizer):
    tmp = tmp_path_factory.mktemp("isolation")
    database_url = f"sqlite:///{tmp / 'ledger.db'}"
    small = EngineBackend("ferryman-small", EngineConfig(model=str(ROOT / "models" / "small"), name="ferryman-small",
                                                         kv_cache_memory_gb=0.05))
    catalog = embedded(Settings(database_url=database_url)).model_copy(update={"public_prefixes": [PUBLIC]})
    wiring = gateway_app(database_url, tokenizer=tokenizer, catalog=catalog,
                         backends={"ferryman-small": small, "ferryman-large": EchoBackend("ferryman-large")})
    keys = {name: wiring.tenant(name)[1] for name in ("tenant-a", "tenant-b")}
    with serve(wiring.app) as url:
        yield {name: openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) for name, key in keys.items()}


def cached(client: openai.OpenAI, messages: list[dict]) -> tuple[int, str]:
    reply = client.chat.completions.create(model="ferryman-small", messages=messages, max_tokens=4, temperature=0)
    return reply.usage.prompt_tokens_details.cached_tokens, reply.choices[0].message.content


def test_a_tenant_cannot_find_another_tenants_prompt_in_the_prefix_cache(tenants):
    cached(tenants["tenant-b"], SECRET)  # B's secret is now in the engine's prefix cache
    a_hits, a_answer = cached(tenants["tenant-a"], SECRET)
    assert a_hits == 0  # before the fix: every full block of B's prompt, and a lower price
    b_hits, b_answer = cached(tenants["tenant-b"], SECRET + [{"role": "assistant", "content": a_answer},
                                                             {"role": "user", "content": "and again"}])
    assert b_hits >= 16  # multi-turn reuse within one tenant stays
    assert cached(tenants["tenant-a"], SECRET)[0] >= 16  # A's own repeat hits A's own blocks


def test_only_the_operators_public_prefix_is_shared_across_tenants(tenants, tokenizer):
    from backends.engine.chat import render_chat

    public = len(render_chat(tokenizer, [{"role": "system", "content": PUBLIC}], add_generation_prompt=False))
    assert public >= 32  # two full blocks of 16 tokens
    chat = [{"role": "system", "content": PUBLIC}, {"role": "user", "content": "add 12 34 and then reverse abcd"}]
    cached(tenants["tenant-b"], chat)
    a_hits, _ = cached(tenants["tenant-a"], chat)
    assert a_hits == public // 16 * 16  # the public blocks, and not one block past them
    b_hits, _ = cached(tenants["tenant-b"], chat)
    assert b_hits > a_hits  # B's own blocks past the public prefix stay B's
