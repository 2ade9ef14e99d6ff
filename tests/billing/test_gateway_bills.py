"""Bills through the served gateway match docs/BILLING.md: a server-side failure costs nothing, before or after
the first token (its record stays), an abandoned stream pays for what was generated, and a 402 says whether
the budget is spent (no retry) or only held by requests in flight (retry, with Retry-After)."""
import asyncio
import threading
import time

import httpx

from backends.base import BackendUnavailable, TokenDelta, Usage
from backends.echo import EchoBackend
from tests.billing.helpers import gateway_app
from tests.util import serve

PROMPT = "hello there"  # 11 bytes + BOS = 12 prompt tokens; small model: 0.2 in / 0.8 out USD per 1M


def small_cost(prompt: int, completion: int) -> int:
    return -(-(prompt * 200_000 + completion * 800_000) // 1_000_000)


class Scripted(EchoBackend):
    """Per request, as the prompt says: fail before any token, fail after two, stream slowly, or wait for `gate` and answer
    one token (a request in flight that ends up costing far less than its hold)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.gate = threading.Event()

    async def generate(self, request):
        text = bytes(request.prompt_token_ids[1:]).decode()
        if text == "down":
            raise BackendUnavailable("every replica is down")
        if text == "break":
            for token in request.prompt_token_ids[:2]:
                yield TokenDelta(chr(token), [token], None)
            raise BackendUnavailable("replica died mid-stream")
        if text == "slow":
            async for delta in super().generate(request):
                await asyncio.sleep(0.05)
                yield delta
            return
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        yield TokenDelta("x", [120], "stop", Usage(len(request.prompt_token_ids), 1))


def scripted_gateway(db_url: str):
    backends = {name: Scripted(name) for name in ("ferryman-small", "ferryman-large")}
    app, billing = gateway_app(db_url, backends=backends)
    tenant = billing.create_tenant("acme")
    key = billing.create_key(tenant["id"])[0]
    return app, billing, tenant["id"], key, backends["ferryman-small"]


def complete(client: httpx.Client, key: str, prompt: str, max_tokens: int) -> httpx.Response:
    return client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "ferryman-small", "prompt": prompt, "max_tokens": max_tokens})


def records(billing) -> dict[str, dict]:
    return {r["request_id"]: r for r in billing.usage(limit=1000)}


def test_failures_settle_at_zero_before_and_after_the_first_token_and_disconnects_pay_what_was_generated(sqlite_url):
    app, billing, tenant_id, key, _ = scripted_gateway(sqlite_url)
    billing.set_budget(tenant_id, limit_micros=1_000_000)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert complete(client, key, "down", 10).status_code == 503
        broke = client.post("/v1/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "ferryman-small", "prompt": "break", "max_tokens": 10, "stream": True})
        assert "error" in broke.text
        with client.stream("POST", "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "ferryman-small", "prompt": "slow", "max_tokens": 50,
                                 "stream": True}) as left:
            next(left.iter_lines())  # the client reads one event and hangs up
        deadline = time.time() + 10
        while billing.ledger_totals(tenant_id)["open_reservations"] and time.time() < deadline:
            time.sleep(0.05)
    by_status = {r["status"]: r for r in records(billing).values()}
    assert sorted(r["status"] for r in records(billing).values()) == ["cancelled", "unavailable", "unavailable"]
    [down] = [r for r in records(billing).values() if r["completion_tokens"] == 0]
    assert down["status"] == "unavailable" and down["cost_micros"] == 0  # its record stays, at zero
    mid = next(r for r in records(billing).values() if r["status"] == "unavailable" and r["completion_tokens"])
    # "break": 2 tokens were sent, then an SSE error event: a failure of ours, so free (its tokens stay on record)
    assert (mid["completion_tokens"], mid["cost_micros"], mid["baseline_cost_micros"]) == (2, 0, None)
    left = by_status["cancelled"]
    assert 1 <= left["completion_tokens"] < 50 and left["cost_micros"] == small_cost(5, left["completion_tokens"])
    assert billing.ledger_totals(tenant_id) == {"spent_micros": left["cost_micros"],
                                                "reserved_micros": 0, "open_reservations": 0}
    billing.close()


def test_402_says_retry_when_the_budget_is_only_held_and_no_retry_when_it_is_spent(sqlite_url):
    app, billing, tenant_id, key, backend = scripted_gateway(sqlite_url)
    # A waiting request holds 12 prompt + 10 max tokens = 11 micro-USD, then costs 12 + 1 = 4.
    # The next one asks for 30 tokens (27): 11 + 27 > 32 while the first is in flight, 4 + 27 <= 32 after.
    billing.set_budget(tenant_id, limit_micros=32)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        waiting = threading.Thread(target=complete, args=(client, key, "hello there", 10))
        waiting.start()
        deadline = time.time() + 10
        while not billing.ledger_totals(tenant_id)["open_reservations"] and time.time() < deadline:
            time.sleep(0.01)
        held = complete(client, key, PROMPT, 30)
        assert held.status_code == 402 and held.json()["error"]["code"] == "budget_held"
        assert held.headers["x-should-retry"] == "true" and int(held.headers["retry-after"]) >= 1
        assert "requests in flight settle" in held.json()["error"]["message"]
        backend.gate.set()
        waiting.join()
        assert complete(client, key, PROMPT, 30).status_code == 200  # the same request, a moment later
        spent = complete(client, key, PROMPT, 40)  # 35 > 32 - 8, and nothing is held
        assert spent.status_code == 402 and spent.json()["error"]["code"] == "budget_exceeded"
        assert spent.headers["x-should-retry"] == "false" and "retry-after" not in spent.headers
    assert billing.ledger_totals(tenant_id) == {"spent_micros": 8, "reserved_micros": 0, "open_reservations": 0}
    billing.close()
