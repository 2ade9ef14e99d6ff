"""Real `ferryman engine serve` replicas that hang (SIGSTOP) or are told to stop (SIGTERM) mid-stream.

Hung: RemoteBackend's inter-token timeout fails the silent replica over to a live one, which continues the
stream from the tokens already sent: the gateway sees one answer, identical under greedy decoding, resumed within the
bound. Stopped: the replica drains (health 503, new requests 503 + Retry-After), finishes the stream in flight,
and exits 0.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.remote import RemoteBackend
from tests.backends.test_failover import MODEL, PROMPT, _start_replica
from tests.harness import free_port, wait_healthy

pytestmark = pytest.mark.slow

TOKEN_TIMEOUT_S = 1.5
SLACK_S = 3.0  # the live replica's prefill of prompt + sent tokens, on a shared CPU


@pytest.fixture(scope="module")
def replicas():
    procs = {p: _start_replica(p) for p in (free_port(), free_port())}
    try:
        for port, proc in procs.items():
            wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield procs
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def _request(request_id: str) -> GenerationRequest:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    prompt = [tok.bos_token_id] + tok.encode(PROMPT, add_special_tokens=False)
    return GenerationRequest(request_id, prompt, SamplingParams(max_tokens=300, temperature=0), cache_salt="acme")


async def _generate(large: RemoteBackend, request: GenerationRequest, on_delta=lambda n: None) -> list:
    """(arrival time, delta) of each delta; on_delta(number so far) runs after each."""
    out = []
    async for delta in large.generate(request):
        out.append((time.monotonic(), delta))
        on_delta(len(out))
    return out


def test_hung_replica_fails_over_within_the_inter_token_timeout(replicas):
    large = RemoteBackend("ferryman-large", [f"http://127.0.0.1:{p}" for p in replicas], health_interval_s=0.2,
                          inter_token_timeout_s=TOKEN_TIMEOUT_S)
    stopped = {}

    def stop_the_serving_replica(n: int) -> None:
        if n == 5:
            [serving] = [rep for rep in large.replicas if rep.in_flight]
            stopped["proc"] = replicas[int(serving.url.rsplit(":", 1)[1])]
            stopped["proc"].send_signal(signal.SIGSTOP)  # alive to the kernel, silent to everyone
            stopped["at"] = time.monotonic()

    async def scenario():
        await large.start()
        try:
            reference = await _generate(large, _request("reference"))
            return reference, await _generate(large, _request("hung"), stop_the_serving_replica)
        finally:
            await large.stop()

    reference, deltas = asyncio.run(scenario())
    try:
        assert "proc" in stopped
        assert stopped["proc"].poll() is None
        tokens = lambda ds: [t for _, d in ds for t in d.token_ids]
        assert tokens(deltas) == tokens(reference)
        assert len(tokens(reference)) == 300  # the same greedy answer
        assert "".join(d.text for _, d in deltas) == "".join(d.text for _, d in reference)
        resumed = next(at for at, _ in deltas[5:] if at > stopped["at"])
        assert resumed - stopped["at"] < TOKEN_TIMEOUT_S + SLACK_S  # not the 30 s read timeout
        # the silent replica's breaker opened at once (one time-out, not three); the other never failed
        assert sorted(rep.breaker.failures for rep in large.replicas) == [0, large.replicas[0].breaker.threshold]
        assert deltas[-1][1].usage.completion_tokens == 300  # usage covers the whole answer, both replicas
    finally:
        stopped["proc"].send_signal(signal.SIGCONT)


def _pieces(response: httpx.Response):
    """(arrival time, chunk) of each data line of an SSE stream."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield time.monotonic(), json.loads(line[6:])


def test_sigterm_drains_the_replica_and_exits_zero(replicas):
    port, proc = next(iter(replicas.items()))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)  # the replica the previous test stopped is back
    body = {"prompt": PROMPT, "max_tokens": 300, "temperature": 0}
    expected = httpx.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]

    texts, finish = [], None
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        for _, chunk in _pieces(r):
            texts.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0]["finish_reason"] or finish
            if len(texts) == 3:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.1)  # the signal is handled on the replica's event loop
                assert httpx.get(url + "/health", timeout=5).status_code == 503
                refused = httpx.post(url + "/v1/completions", json=body, timeout=5)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "draining"
    assert "".join(texts) == expected["text"]
    assert finish == expected["finish_reason"]  # the stream in flight finished
    assert proc.wait(30) == 0
