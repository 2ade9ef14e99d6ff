"""No input gets a 5xx (issue 19, point 4): schemathesis generates requests from the gateway's own OpenAPI
document, valid and invalid, for every /v1 and /admin operation, against a real gateway on a loopback port
(real billing and tokenizer, echo backends answering under the catalog's real model names, so valid requests
are admitted, generated, streamed and settled). Fixed seed, bounded examples: the same cases every run."""
from __future__ import annotations

import random
import socket

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import ADMIN_KEY, make_gateway
from tests.util import serve

MODELS = ["auto", "ferryman-small", "ferryman-large"]
EXAMPLES = 10  # per operation; about 30 operations: ~300 requests


@pytest.fixture(scope="module")
def live(tmp_path_factory, tokenizer):
    app, billing, tenant_id, key, _ = make_gateway(tmp_path_factory.mktemp("fuzz"), tokenizer,
                                                   refusal_delay_s=0)  # thousands of refusals: answers, not pace
    with serve(app) as url:
        yield url, key, billing, tenant_id


# Round two (issue 26): tiny per-request limits, so that generated message lists, content parts and token-id
# prompts cross them, and the HTTP limits in front (as `ferryman serve` runs them) with a small head budget.
ROUND_TWO = dict(max_messages=2, max_content_parts=2, max_prompt_token_ids=4, max_header_bytes=2048, max_headers=16,
                 max_request_line_bytes=512, refusal_delay_s=0)


@pytest.fixture(scope="module")
def limited(tmp_path_factory, tokenizer):
    app, billing, tenant_id, key, _ = make_gateway(tmp_path_factory.mktemp("fuzz2"), tokenizer, **ROUND_TWO)
    with serve(app, app.state.settings) as url:
        yield url, key, billing, tenant_id


def fuzz(operation, url: str, key: str, failures: list[str]) -> None:
    documented = set(operation.definition.raw["responses"])

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def no_5xx(case):
        if isinstance(case.body, dict) and "model" in case.body:
            # A real model name most of the time, so that requests get past routing into the backends.
            case.body["model"] = random.Random(repr(case.body)).choice([*MODELS, case.body["model"]])
        token = key if case.path.startswith("/v1/") else ADMIN_KEY
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.body!r:.200}: {response.status_code} "
                            f"{response.text[:300]}")
        elif response.status_code >= 400 and not response.json().get("error", {}).get("message"):
            failures.append(f"{case.method} {case.formatted_path}: not an OpenAI error object: {response.text[:300]}")
        elif str(response.status_code) not in documented:
            failures.append(f"{case.method} {case.path}: {response.status_code} is not in its OpenAPI responses")

    no_5xx()


@pytest.mark.slow
def test_no_input_gets_a_5xx(live):
    """derandomize=True: hypothesis draws from a fixed seed, so every run sends the same cases."""
    url, key, billing, tenant_id = live
    api = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    # The tenant's own routes first: the admin operations may revoke its key or change its limits.
    operations = sorted((op for op in operations if op.path.startswith(("/v1/", "/admin/"))),
                        key=lambda op: (not op.path.startswith("/v1/"), op.path, op.method))
    assert len(operations) > 20
    failures: list[str] = []
    for operation in operations:
        fuzz(operation, url, key, failures)
    assert failures == []
    assert billing.ledger_totals(tenant_id)["open_reservations"] == 0  # every hold settled or released
    assert httpx.get(url + "/health").status_code == 200



@pytest.mark.slow
def test_round_two_inputs_limits_and_raw_heads_get_no_5xx(limited):
    """The /v1 operations again, against per-request limits they often cross (400 naming the limit) and behind the
    HTTP limits; then generated request heads (header names, values and counts, request targets, raw bytes) sent
    over a raw socket: each answer is a documented 4xx or a 2xx, never a 5xx, in the OpenAI error shape."""
    url, key, billing, tenant_id = limited
    api = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [r.ok() for r in api.get_all_operations()]
    operations = sorted((op for op in operations if op.path.startswith("/v1/") and op.method.upper() == "POST"),
                        key=lambda op: op.path)
    failures: list[str] = []
    for operation in operations:
        fuzz(operation, url, key, failures)
    port = int(url.rsplit(":", 1)[1])
    header = st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=3000))

    @given(target=st.binary(min_size=1, max_size=800), headers=st.lists(header, max_size=24))
    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def raw_heads(target, headers):
        body = b'{"model":"ferryman-small","prompt":"hi","max_tokens":1}'
        head = [b"POST /v1/completions" + (b"?" + target if target[:1] != b" " else target) + b" HTTP/1.1",
                b"Host: x", b"Authorization: Bearer " + key.encode(), b"Content-Length: %d" % len(body),
                *[name + b": " + value for name, value in headers]]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
            raw = b""
            while b"\r\n\r\n" not in raw and (chunk := s.recv(65536)):
                raw += chunk
        status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0
        if not 200 <= status < 500:
            failures.append(f"raw head {target[:60]!r} with {len(headers)} headers: {raw[:200]!r}")

    raw_heads()
    assert failures == []
    assert billing.ledger_totals(tenant_id)["open_reservations"] == 0
