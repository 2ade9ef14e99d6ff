"""The proxy leg to a `kind: openai` upstream at wire speed: pooled keep-alive connections, a plain (non-streamed)
upstream call for a whole-answer client, usage-only chunks billed. The upstream here is a raw asyncio server that
counts the TCP connections it accepts and keeps every request body."""
from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from gateway.catalog import Catalog
from tests.harness import free_port, gateway_app
from tests.util import serve

USAGE = {"prompt_tokens": 24, "completion_tokens": 3, "total_tokens": 27}
CHUNKS = ["one ", "two ", "three"]


class CountingUpstream:
    """An OpenAI-compatible upstream on loopback that counts accepted connections."""

    def __init__(self):
        self.connections, self.bodies = 0, []
        self.delay_s = 0.0  # before each chat answer (a slow model)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                data = await reader.readexactly(length)
                if head.startswith(b"GET "):  # the gateway's health probe (GET /v1/models)
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    continue
                body = json.loads(data)
                self.bodies.append(body)
                await asyncio.sleep(self.delay_s)
                writer.write(_streamed() if body.get("stream") else _whole())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _whole() -> bytes:
    answer = json.dumps({"id": "x", "object": "chat.completion", "model": "up", "usage": USAGE, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(CHUNKS)}, "finish_reason": "stop"}]}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer)


def _streamed() -> bytes:
    """Content chunks, a finish chunk, then a usage-only chunk (no choices), as OpenAI sends with include_usage."""
    events = [{"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]} for c in CHUNKS]
    events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": USAGE}]
    out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    for data in [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]:
        out += b"%x\r\n%s\r\n" % (len(data), data)
    return out + b"0\r\n\r\n"


@pytest.fixture
def proxy(tmp_path):
    upstream = CountingUpstream()
    catalog = Catalog.model_validate({"models": [{
        "name": "up", "kind": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1",
        "price": {"input": 1.0, "output": 2.0}}]})
    wiring = gateway_app(f"sqlite:///{tmp_path / 'ledger.db'}", catalog=catalog, router=None)
    tenant_id, key = wiring.tenant("wire")
    with serve(wiring.app) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
            yield client, upstream, wiring.billing, tenant_id


def test_sequential_requests_reuse_one_upstream_connection(proxy):
    client, upstream, billing, tenant_id = proxy
    for i in range(100):
        r = client.post("/v1/chat/completions", json={"model": "up", "messages": [{"role": "user", "content": f"q{i}"}]})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "one two three"
    for i in range(20):
        with client.stream("POST", "/v1/chat/completions", json={
                "model": "up", "stream": True, "messages": [{"role": "user", "content": f"s{i}"}]}) as r:
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in r.iter_lines() if line.startswith("data: {") and '"choices":[{' in line)
        assert text == "one two three"
    assert upstream.connections <= 2, f"{upstream.connections} upstream TCP connections for 120 sequential requests"
    whole, streamed = upstream.bodies[:100], upstream.bodies[100:]
    assert not any(b.get("stream") for b in whole)  # a whole-answer client gets a plain upstream call
    assert all(b["stream"] and b["stream_options"] == {"include_usage": True} for b in streamed)
    records = billing.usage(tenant_id, limit=200)
    assert len(records) == 120
    assert all((r["prompt_tokens"], r["completion_tokens"]) == (24, 3) for r in records)  # the usage-only chunk's
