"""Replicas of an engine behind the gateway, reached over HTTP (our engine server, vLLM, any OpenAI-compatible
server that accepts token-id prompts and returns `token_ids`).

Why it looks like this: a replica can die at any moment. Requests that had not started are retried on another
replica with backoff; a stream that breaks mid-way is continued on another replica from the tokens already
sent (prompt + sent tokens, the remaining max_tokens), so the tenant sees one uninterrupted answer, identical
under greedy decoding. A replica that goes silent (hung, stopped, partitioned) counts as dead once no byte
arrived for `inter_token_timeout_s` after the response began, or no response head in that long, or no first
line in `read_timeout_s` (the catalog's first_token_timeout_s; our replicas send a heartbeat at once and while a
request waits). Each replica has the circuit breaker every remote model uses (backends/breaker.py): failures in a
row open it, a silent replica opens it at once (a hung replica costs one request one time-out, the next ones
nothing), a health probe of /health (bounded by connect_timeout_s) marks it down or brings it back; with every
replica open or down the model is refused at once, so a route group's next tier serves. The tenant's `cache_salt` goes along (vLLM
takes it too), so replicas keep the prefix cache partitioned by tenant.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import AsyncIterator

import httpx

from backends.base import BackendUnavailable, GenerationRequest, TokenDelta, Usage
from backends.breaker import Breaker

log = logging.getLogger("ferryman.remote")


class ReplicaFailed(Exception):
    pass


class ReplicaSilent(ReplicaFailed):
    """No first token, or no byte mid-stream, in time: hung. Its breaker opens at once (backends/breaker.py)."""


@dataclass
class Replica:
    url: str
    breaker: Breaker
    in_flight: int = 0


class RemoteBackend:
    def __init__(self, name: str, urls: list[str], *, max_attempts: int = 4, backoff_s: float = 0.05,
                 breaker_threshold: int = 3, cooldown_s: float = 5.0, health_interval_s: float = 1.0,
                 connect_timeout_s: float = 2.0, read_timeout_s: float = 30.0, inter_token_timeout_s: float = 5.0):
        self.name = name
        self.replicas = [Replica(u.rstrip("/"), Breaker(f"replica {u.rstrip('/')} of {name}", breaker_threshold,
                                                         cooldown_s)) for u in urls]
        self.max_attempts, self.backoff_s = max_attempts, backoff_s
        self.health_interval_s = health_interval_s
        self.timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self.read_timeout_s, self.inter_token_timeout_s = read_timeout_s, inter_token_timeout_s
        self.client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout)
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        if self.client:
            await self.client.aclose()

    async def abort(self, request_id: str) -> None:
        """Nothing to do: closing the stream (the gateway does, by leaving generate) aborts it on the replica."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        sent: list[int] = []
        failed: set[str] = set()
        for attempt in range(self.max_attempts):
            replica = self._pick(avoid=failed)
            if replica is None:  # every replica down or open: skip this model at once, waiting helps no one
                raise BackendUnavailable(f"no replica of {self.name} is up: {self.state()['reason']}")
            try:
                async for delta in self._stream(replica, request, sent):
                    sent += delta.token_ids
                    yield delta
                    if delta.finish_reason:
                        replica.breaker.succeeded()
                        return
                raise ReplicaFailed("stream ended without a finish reason")
            except (httpx.TransportError, ReplicaFailed) as exc:
                replica.breaker.failed(str(exc) or exc.__class__.__name__, at_once=isinstance(exc, ReplicaSilent))
                failed.add(replica.url)
                log.warning("replica %s failed after %d tokens (%s); %s", replica.url, len(sent), exc,
                            "continuing elsewhere" if sent else "retrying")
                if not sent:
                    await asyncio.sleep(self.backoff_s * 2**attempt)
        raise BackendUnavailable(f"no replica of {self.name} could serve the request")

    def state(self) -> dict:
        """What /ready reports: up while any replica may take traffic, else down; and each replica's own state."""
        each = {r.url: r.breaker.state() for r in self.replicas}
        if any(r.breaker.available() for r in self.replicas):
            return {"state": "up", "replicas": each}
        reasons = [f"{url} {s['state']}: {s['reason']}" for url, s in each.items()]
        return {"state": "down", "reason": "; ".join(reasons), "replicas": each}

    def _pick(self, avoid: set[str]) -> Replica | None:
        """The least busy available replica, preferring ones that have not failed this request."""
        ready = [r for r in self.replicas if r.breaker.available()]
        return min(ready, key=lambda r: (r.url in avoid, r.in_flight)) if ready else None

    async def _stream(self, replica: Replica, request: GenerationRequest, sent: list[int]) -> AsyncIterator[TokenDelta]:
        """One replica's stream, asked to continue after `sent` tokens. Usage is rewritten to the whole answer."""
        p, already = request.params, len(sent)  # `sent` keeps growing while we stream
        body = {"model": self.name, "prompt": request.prompt_token_ids + sent, "max_tokens": p.max_tokens - len(sent),
                "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed, "stop": p.stop, "stream": True,
                "priority": request.priority, "cache_salt": request.cache_salt,
                "tenant_weight": request.tenant_weight,
                "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
                "repetition_penalty": p.repetition_penalty, "logit_bias": p.logit_bias,
                "structured_outputs": p.structured, "top_k": p.top_k, "ignore_eos": p.ignore_eos}
        if p.logprobs:
            body["logprobs"] = p.top_logprobs
        if request.public_prefix_len:
            body["public_prefix_len"] = request.public_prefix_len
        replica.in_flight += 1
        try:
            response = await self._open(replica, body)
            try:
                if response.status_code >= 500:
                    raise ReplicaFailed(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise BackendUnavailable(f"replica refused the request: HTTP {response.status_code}")
                async for line in self._lines(response):
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield self._delta(json.loads(line[6:]), request, already)
            finally:
                await response.aclose()
        finally:
            replica.in_flight -= 1

    async def _open(self, replica: Replica, body: dict) -> httpx.Response:
        """Send the request; a streaming server answers with headers at once, so a silent one is hung."""
        request = self.client.build_request("POST", f"{replica.url}/v1/completions", json=body)
        wait_s = min(self.inter_token_timeout_s, self.read_timeout_s)
        try:
            async with asyncio.timeout(wait_s):
                return await self.client.send(request, stream=True)
        except TimeoutError:
            raise ReplicaSilent(f"no response in {wait_s:g} s") from None

    async def _lines(self, response: httpx.Response) -> AsyncIterator[str]:
        """The response's lines; a replica silent for too long has failed (its stream is continued elsewhere)."""
        lines, wait_s = response.aiter_lines(), self.read_timeout_s
        while True:
            try:
                async with asyncio.timeout(wait_s):
                    line = await anext(lines)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ReplicaSilent(f"no data for {wait_s:g} s") from None
            wait_s = self.inter_token_timeout_s  # once it has spoken, silence means hung
            yield line

    @staticmethod
    def _delta(chunk: dict, request: GenerationRequest, already: int) -> TokenDelta:
        choice = chunk["choices"][0]
        usage = None
        if u := chunk.get("usage"):
            cached = min(u.get("prompt_tokens_details", {}).get("cached_tokens", 0), len(request.prompt_token_ids))
            usage = Usage(len(request.prompt_token_ids), already + u["completion_tokens"], cached)
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        return TokenDelta(choice["text"], choice.get("token_ids", []), choice.get("finish_reason"), usage, logprobs)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._check(r) for r in self.replicas))
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, replica: Replica) -> None:
        """A probe of the replica's /health, bounded by connect_timeout_s (a hung replica answers none); the breaker
        logs only a change of state (a line a second per replica is noise)."""
        try:
            status = (await self.client.get(f"{replica.url}/health", timeout=self.timeout.connect)).status_code
            replica.breaker.probed(status == 200, f"health check: HTTP {status}")
        except httpx.HTTPError as exc:
            replica.breaker.probed(False, f"health check: {exc.__class__.__name__}")
