"""No input makes the gateway answer 5xx, stall other tenants, or keep memory: issue 19, points 3 and 4.

A real gateway on a loopback port (echo backends, real billing and tokenizer, see conftest)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.catalog import embedded
from gateway.config import Settings
from tests.gateway.conftest import Gateway
from tests.harness import echo_backends, gateway_app
from tests.util import serve

BAD_INPUTS = [  # (name, path, raw body, status, the parameter the error must name)
    ("seed past int64", "/v1/chat/completions",
     '{"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}',
     400, "seed"),
    ("seed past int64, streamed", "/v1/chat/completions",
     '{"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551617,'
     ' "stream": true}', 400, "seed"),
    ("lone surrogate in content", "/v1/chat/completions",
     '{"model": "ferryman-small", "messages": [{"role": "user", "content": "a\\ud800b"}]}', 400, "messages[0].content"),
    ("lone surrogate in a content part", "/v1/chat/completions",
     '{"model": "ferryman-small", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     400, "messages[0].content"),
    ("lone surrogate in prompt", "/v1/completions", '{"model": "ferryman-small", "prompt": "\\ud800"}', 400, "prompt"),
    ("lone surrogate in stop", "/v1/completions", '{"model": "ferryman-small", "prompt": "a", "stop": "\\ud800"}',
     400, "stop"),
    ("empty token prompt", "/v1/completions", '{"model": "ferryman-small", "prompt": []}', 400, "prompt"),
    ("missing messages", "/v1/chat/completions", '{"model": "auto"}', 400, "messages"),
    ("bad role", "/v1/chat/completions",
     '{"model": "auto", "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}',
     400, "messages[1].role"),
    ("malformed JSON", "/v1/chat/completions", '{"model": "auto", 30', 400, None),
    ("JSON array body", "/v1/chat/completions", "[1, 2]", 400, None),
    ("invalid UTF-8", "/v1/chat/completions", b'{"model": "\xff\xfe"}', 400, None),
    ("unknown path", "/v1/nothing-here", "{}", 404, None),
]


def post(gw, path: str, body, **headers) -> httpx.Response:
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    return httpx.post(gw.url + path, content=raw, timeout=30,
                      headers={"authorization": f"Bearer {gw.api_key}", "content-type": "application/json", **headers})


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]  # OpenAI's shape, never {"detail": ...}
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return error


@pytest.mark.parametrize("name, path, body, status, param", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_an_openai_4xx_naming_the_parameter_and_changes_nothing(gateway, name, path, body, status, param):
    error = assert_openai_error(post(gateway, path, body), status, param)
    if param:
        assert f"'{param}'" in error["message"]
    assert gateway.records() == []
    assert gateway.billing.ledger_totals(gateway.tenant_id)["open_reservations"] == 0


def test_malformed_json_says_what_is_wrong_and_where(gateway):
    error = assert_openai_error(post(gateway, "/v1/chat/completions", '{"model": "auto", 30'), 400)
    assert "could not parse the JSON body" in error["message"]
    assert "at character 18" in error["message"]


def test_wrong_method_is_an_openai_405(gateway):
    r = httpx.get(gateway.url + "/v1/chat/completions")
    assert_openai_error(r, 405)


def test_a_failure_after_the_stream_started_is_an_sse_error_event_then_a_clean_end(gateway):
    backend = gateway.backends["ferryman-small"]
    echo = backend.generate

    async def breaks_after_two(request):
        n = 0
        async for delta in echo(request):
            if n == 2:
                raise RuntimeError("the engine fell over")
            n += 1
            yield delta

    backend.generate = breaks_after_two
    body = {"model": "ferryman-small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
            "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {gateway.api_key}"}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]]  # two tokens reached the client
    assert events[-1] == {"error": {"message": "The server had an error while processing your request.",
                                    "type": "server_error", "param": None, "code": None}}
    [record] = gateway.records()
    assert record["status"] == "error"
    assert record["completion_tokens"] == 2
    assert gateway.billing.ledger_totals(gateway.tenant_id)["open_reservations"] == 0


def test_openapi_lists_the_error_statuses_of_each_v1_route(gateway):
    paths = httpx.get(gateway.url + "/openapi.json").json()["paths"]
    for route in ("/v1/chat/completions", "/v1/completions"):
        documented = paths[route]["post"]["responses"]
        assert {"400", "401", "402", "404", "413", "429", "503"} <= set(documented)
        assert "422" not in documented  # invalid values are answered 400, and the document says so
        assert documented["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert {"401", "503"} <= set(paths["/v1/models"]["get"]["responses"])


def test_docs_page_works_offline(gateway):
    """/docs is Swagger UI served from the gateway's own files: no CDN on the page."""
    page = httpx.get(gateway.url + "/docs").text
    assert "http://" not in page
    assert "https://" not in page
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in page
        r = httpx.get(gateway.url + asset)
        assert r.status_code == 200
        assert len(r.content) > 10_000


# --- point 3: nothing on the event loop scales with input size ----------------------------------------------

SMALL_BOUND_S = 1.0  # another tenant's tiny request normally answers in ~10 ms here; a stalled loop takes seconds


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Prober(threading.Thread):
    """Another tenant's small requests, one after another, each timed, until stopped."""

    def __init__(self, gw, key: str):
        super().__init__(daemon=True)
        self.gw, self.key, self.latencies, self.statuses, self.done = gw, key, [], [], threading.Event()

    def run(self):
        body = {"model": "ferryman-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with httpx.Client(timeout=60) as client:
            while not self.done.is_set():
                t = time.perf_counter()
                r = client.post(self.gw.url + "/v1/chat/completions", json=body,
                                headers={"authorization": f"Bearer {self.key}"})
                self.latencies.append(time.perf_counter() - t)
                self.statuses.append(r.status_code)
                time.sleep(0.02)


def other_tenant_key(gw) -> str:
    tenant = gw.billing.create_tenant("bystander")
    return gw.billing.create_key(tenant["id"], "probe")[0]


@pytest.mark.slow
def test_huge_bodies_get_413_at_once_and_never_stall_other_tenants(gateway):
    prober = Prober(gateway, other_tenant_key(gateway))
    warm = post(gateway, "/v1/chat/completions", '{"model": "ferryman-small", "messages": [{"role": "user", '
                                                 '"content": "' + "word " * 100 + '"}], "max_tokens": 1}')
    assert warm.status_code == 200
    baseline = rss_mb()
    prober.start()
    five_mb = '{"model": "auto", "messages": [{"role": "user", "content": "' + "a " * (5 << 19) + '"}]}'
    for _ in range(3):
        t = time.perf_counter()
        error = assert_openai_error(post(gateway, "/v1/chat/completions", five_mb), 413)
        assert error["code"] == "request_too_large"
        assert time.perf_counter() - t < 2.0

    def chunked():  # no Content-Length: refused as soon as the count passes the limit
        for _ in range(80):
            yield b" " * 65536

    r = httpx.post(gateway.url + "/v1/chat/completions", content=chunked(), timeout=30,
                   headers={"authorization": f"Bearer {gateway.api_key}", "content-type": "application/json"})
    assert_openai_error(r, 413)
    time.sleep(0.3)
    prober.done.set()
    prober.join(10)
    assert prober.statuses
    assert set(prober.statuses) == {200}
    assert max(prober.latencies) < SMALL_BOUND_S, prober.latencies
    assert rss_mb() - baseline < 100, (baseline, rss_mb())
    assert gateway.records()[0]["completion_tokens"] == 1
    assert len(gateway.records()) == 1


@pytest.mark.slow
def test_a_prompt_that_cannot_fit_is_refused_without_tokenizing_it(gateway):
    """1.5 MB of text (under the 4 MiB body limit): no token of this vocabulary spells more than a few dozen
    characters, so it cannot fit a 512-token context; the 400 comes at once and memory stays where it was."""
    prober = Prober(gateway, other_tenant_key(gateway))
    big = "the quick brown fox jumps over the lazy dog " * 35_000
    body = json.dumps({"model": "ferryman-large", "messages": [{"role": "user", "content": big}]})
    assert_openai_error(post(gateway, "/v1/chat/completions", body), 400, "messages")  # warms allocators
    baseline = rss_mb()
    prober.start()
    for _ in range(3):
        t = time.perf_counter()
        error = assert_openai_error(post(gateway, "/v1/chat/completions", body), 400, "messages")
        assert time.perf_counter() - t < 2.5  # tokenizing 1.5 MB would take ~5 s
    time.sleep(0.2)
    prober.done.set()
    prober.join(10)
    assert "maximum context length is 512 tokens" in error["message"]
    assert set(prober.statuses) == {200}, prober.latencies
    assert max(prober.latencies) < SMALL_BOUND_S, prober.latencies
    assert rss_mb() - baseline < 50, (baseline, rss_mb())


@pytest.fixture
def long_context_gateway(tmp_path, tokenizer):
    """The echo gateway with the bundled pair's context stretched to 200k tokens, so long prompts really get
    tokenized."""
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    catalog = embedded(Settings(database_url=database_url))
    for entry in catalog.models:
        entry.context_length = 200_000
    backends = echo_backends(tokenizer.decode, names=[e.name for e in catalog.models])
    wiring = gateway_app(database_url, tokenizer=tokenizer, backends=backends, catalog=catalog)
    tenant_id, key = wiring.tenant()
    with serve(wiring.app) as url:
        yield Gateway(url, wiring.billing, tenant_id, key, backends)


@pytest.mark.slow
def test_a_long_prompt_is_tokenized_off_the_event_loop(long_context_gateway):
    """300 KB of text takes the tokenizer about a second: it runs in a worker thread, so the other tenant's
    small requests keep their latency meanwhile; memory returns to where it was."""
    gw = long_context_gateway
    prober = Prober(gw, other_tenant_key(gw))
    text = "the quick brown fox jumps over the lazy dog " * 7_000
    body = json.dumps({"model": "ferryman-large", "messages": [{"role": "user", "content": text}], "max_tokens": 1})
    assert post(gw, "/v1/chat/completions", body).status_code == 200  # warms allocators
    baseline = rss_mb()
    prober.start()
    time.sleep(0.2)
    for _ in range(2):
        t = time.perf_counter()
        r = post(gw, "/v1/chat/completions", body)
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens"] > 100_000
        took = time.perf_counter() - t
    prober.done.set()
    prober.join(10)
    assert took > 3 * max(prober.latencies)  # the long prompt really took its time...
    assert set(prober.statuses) == {200}, prober.latencies
    assert max(prober.latencies) < SMALL_BOUND_S, prober.latencies  # ...not theirs
    assert rss_mb() - baseline < 150, (baseline, rss_mb())
