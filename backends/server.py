"""An engine replica as its own server: OpenAI-compatible /v1/completions over any Backend.

The gateway's RemoteBackend talks to it. Each streamed choice carries the new `token_ids` (an extension vLLM
also offers) so that, if this replica dies mid-stream, another can continue from exactly the tokens sent.
No tenants, no money here: replicas sit behind the gateway on a private network; the gateway passes the
tenant's `cache_salt` (as vLLM's API does) so the prefix cache stays partitioned by tenant here too.

While a request waits (queued, or a long prefill) the stream carries an SSE comment every `heartbeat_s`, so the
gateway can tell a busy replica from a hung one by silence alone. On SIGTERM the replica drains: /health and
/ready answer 503, new requests 503 with Retry-After, streams in flight run to their end (at most `grace_s`;
the gateway continues a cut stream on another replica), then it exits 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from backends.base import Backend, GenerationRequest, SamplingParams
from backends.engine.chat import encode_text


class ReplicaCompletion(BaseModel):
    model: str | None = None
    prompt: list[int] | str
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    priority: int = 1
    cache_salt: str | None = None
    public_prefix_len: int = Field(0, ge=0)


def create_replica_app(backend: Backend, tokenizer=None, heartbeat_s: float = 1.0) -> FastAPI:
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        await backend.stop()

    app = FastAPI(title=f"Ferryman engine replica: {backend.name}", lifespan=lifespan)
    app.state.draining, app.state.in_flight = False, 0
    app.add_middleware(_CountInFlight, state=app.state)

    @app.get("/health")
    @app.get("/ready")
    async def health():
        if app.state.draining:  # the gateway's health loop takes this replica out of rotation
            return JSONResponse({"status": "draining", "model": backend.name}, 503)
        return {"status": "ok", "model": backend.name}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "owned_by": "ferryman"}]}

    @app.post("/v1/completions")
    async def completions(body: ReplicaCompletion):
        if app.state.draining:
            return JSONResponse({"error": {"message": "this replica is shutting down", "type": "server_error",
                                           "param": None, "code": "draining"}}, 503, headers={"retry-after": "1"})
        prompt = body.prompt
        if isinstance(prompt, str):
            if tokenizer is None:
                return JSONResponse({"error": {"message": "this replica takes token-id prompts only",
                                               "type": "invalid_request_error", "param": "prompt", "code": None}}, 400)
            prompt = encode_text(tokenizer, prompt)  # special tokens typed in the text stay text
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=stop)
        request = GenerationRequest(f"cmpl-{uuid.uuid4().hex}", list(prompt), params, body.priority,
                                    body.cache_salt, body.public_prefix_len)
        if body.stream:
            return StreamingResponse(_stream(backend, request, heartbeat_s), media_type="text/event-stream")
        return await _whole(backend, request)

    return app


class _CountInFlight:
    """Completions in flight, counted around the whole ASGI call: a stream counts until its last byte is sent
    or its client has gone (a generator's `finally` would miss a stream whose client left before it began)."""

    def __init__(self, app, state) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/completions":
            return await self.app(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def serve_replica(app: FastAPI, host: str, port: int, grace_s: float = 30.0) -> None:
    """Serve until SIGTERM or SIGINT, then drain (see the module's docstring) and return, so the process exits 0."""
    server = _DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                            timeout_graceful_shutdown=2), app, grace_s)
    server.run()


class _DrainingServer(uvicorn.Server):
    """uvicorn's own handler stops at once and re-raises SIGTERM (exit 143); a replica drains first."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app, self.grace_s = app, grace_s

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.drain()))
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def drain(self) -> None:
        self.app.state.draining = True
        deadline = time.monotonic() + self.grace_s
        while self.app.state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.should_exit = True  # streams still running are cut; the gateway continues them elsewhere


def _choice(text: str, token_ids: list[int], finish: str | None) -> dict:
    return {"index": 0, "text": text, "token_ids": token_ids, "logprobs": None, "finish_reason": finish}


async def _stream(backend: Backend, request: GenerationRequest, heartbeat_s: float):
    base = {"id": request.request_id, "object": "text_completion", "created": int(time.time()), "model": backend.name}
    finished = False
    yield ": started\n\n"  # at once, so that from here on the gateway may read silence as a hung replica
    try:
        async for delta in _with_heartbeats(backend.generate(request), heartbeat_s):
            if delta is None:
                yield ": waiting\n\n"  # an SSE comment: clients skip it; the gateway sees a live replica
                continue
            finished = delta.finish_reason is not None
            chunk = {**base, "choices": [_choice(delta.text, delta.token_ids, delta.finish_reason)]}
            if delta.usage:
                chunk["usage"] = _usage(delta.usage)
            yield f"data: {json.dumps(chunk)}\n\n"
    finally:
        if not finished:  # the client went away: free the engine's slot and KV blocks now
            await backend.abort(request.request_id)
    yield "data: [DONE]\n\n"


async def _with_heartbeats(deltas, every_s: float):
    """The deltas, with None after every `every_s` seconds without one."""
    it = aiter(deltas)
    pending = asyncio.ensure_future(anext(it))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            try:
                delta = pending.result()
            except StopAsyncIteration:
                return
            yield delta
            pending = asyncio.ensure_future(anext(it))
    finally:
        pending.cancel()
        await asyncio.wait({pending})  # the generator must stop running before it can be closed
        await it.aclose()


async def _whole(backend: Backend, request: GenerationRequest) -> dict:
    text, ids, finish, usage = "", [], None, None
    async for delta in backend.generate(request):
        text, ids = text + delta.text, ids + delta.token_ids
        finish, usage = delta.finish_reason or finish, delta.usage or usage
    return {"id": request.request_id, "object": "text_completion", "created": int(time.time()), "model": backend.name,
            "choices": [_choice(text, ids, finish)], "usage": _usage(usage) if usage else None}


def _usage(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}
