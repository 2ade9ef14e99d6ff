"""An engine replica as its own server: the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) over any Backend.

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
import dataclasses
import json
import logging
import signal
import time
import uuid

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from fastapi.exceptions import RequestValidationError
from typing import AsyncIterator

from backends.base import Backend, GenerationRequest, SamplingParams, TokenDelta
from backends.server_answer import ChatAnswer, CompletionAnswer
from backends.server_api import ChatBody, CompletionBody, RequestError

log = logging.getLogger("ferryman.replica")


def create_replica_app(backend: Backend, tokenizer=None, heartbeat_s: float = 1.0,
                       context_length: int | None = None) -> FastAPI:
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        await backend.stop()

    app = FastAPI(title=f"Ferryman engine replica: {backend.name}", lifespan=lifespan)
    app.state.draining, app.state.in_flight = False, 0
    app.add_middleware(_CountInFlight, state=app.state)
    app.add_exception_handler(RequestValidationError, _invalid_body)

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
        card = {"id": backend.name, "object": "model", "created": 0, "owned_by": "ferryman",
                "max_model_len": context_length}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        def requests(request_id: str) -> list[GenerationRequest]:
            prompt = body.prompt_ids(tokenizer)
            return _choices(body, request_id, prompt, body.sampling(_room(context_length, prompt)),
                            body.public_prefix_len)

        return await _serve(app, backend, body, "cmpl", requests, CompletionAnswer(tokenizer, backend.name),
                            heartbeat_s)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        fmt = None

        def requests(request_id: str) -> list[GenerationRequest]:
            nonlocal fmt
            fmt = body.tool_format(tokenizer)
            prompt = body.prompt_ids(tokenizer)
            return _choices(body, request_id, prompt, body.sampling(_room(context_length, prompt), fmt), 0)

        answer = ChatAnswer(tokenizer, backend.name, lambda: fmt)
        return await _serve(app, backend, body, "chatcmpl", requests, answer, heartbeat_s)

    return app


async def _serve(app: FastAPI, backend: Backend, body, kind: str, requests, answer, heartbeat_s: float):
    """Turn the body into one generation request per choice, and answer as a stream or whole."""
    if app.state.draining:
        return JSONResponse({"error": {"message": "this replica is shutting down", "type": "server_error",
                                       "param": None, "code": "draining"}}, 503, headers={"retry-after": "1"})
    request_id = f"{kind}-{uuid.uuid4().hex}"
    try:
        choices = requests(request_id)
        for request in choices:
            check = getattr(backend, "check", None)
            if check is not None:
                check(request)
    except RequestError as exc:
        return _error(str(exc), exc.param)
    except ValueError as exc:  # the engine refused the parameters (a grammar that does not compile, ...)
        return _error(str(exc), None)
    answer.start(request_id, len(choices))
    log.debug("request %s: %d choice(s), %d prompt tokens, max_tokens %d, stream %s", request_id, len(choices),
              len(choices[0].prompt_token_ids) if choices else 0, choices[0].params.max_tokens if choices else 0,
              body.stream)
    if body.stream:
        deltas = fan_out(backend.generate, choices)
        return StreamingResponse(_stream(answer, deltas, body.include_usage(), heartbeat_s, backend, choices),
                                 media_type="text/event-stream")
    try:
        async for i, delta in fan_out(backend.generate, choices):
            answer.add(i, delta)
    except ValueError as exc:
        return _error(str(exc), None)
    return answer.whole()


def _choices(body, request_id: str, prompt: list[int], params: SamplingParams,
             public_prefix_len: int) -> list[GenerationRequest]:
    """One request per choice (n of them), each with its own seed; all share the prompt's cached blocks."""
    return [GenerationRequest(request_id if body.n == 1 else f"{request_id}-{i}", list(prompt),
                              dataclasses.replace(params, seed=body.choice_seed(i)), body.priority,
                              body.cache_salt, public_prefix_len, tenant_weight=body.tenant_weight)
            for i in range(body.n)]


def _room(context_length: int | None, prompt: list[int]) -> int:
    """max_tokens when the request names none: the rest of the context (vLLM's default)."""
    return max(1, (context_length or 16 + len(prompt)) - len(prompt))


def _error(message: str, param: str | None, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                   "code": None}}, status)


async def _invalid_body(request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return _error(f"{where or 'body'}: {first.get('msg', 'invalid request')}", where)


class _CountInFlight:
    """Completions in flight, counted around the whole ASGI call: a stream counts until its last byte is sent
    or its client has gone (a generator's `finally` would miss a stream whose client left before it began)."""

    def __init__(self, app, state) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in ("/v1/completions", "/v1/chat/completions"):
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
        if self.app.state.draining:
            return
        self.app.state.draining = True
        log.info("draining: %d request(s) in flight, %g s grace", self.app.state.in_flight, self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while self.app.state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained, exiting" if not self.app.state.in_flight else
                 f"grace over: cutting {self.app.state.in_flight} stream(s); the gateway continues them elsewhere")
        self.should_exit = True  # streams still running are cut; the gateway continues them elsewhere


async def fan_out(generate, choices: list[GenerationRequest]) -> AsyncIterator[tuple[int, TokenDelta]]:
    """Every choice's deltas (`generate(request)` streams one), tagged with its index. Choices after the first
    start once the first has its first token: by then the prompt's blocks are in the prefix cache, so the others
    take them instead of computing the prompt again (n choices, one prefill). The gateway fans out likewise."""
    first = aiter(generate(choices[0]))
    try:
        head = await anext(first)
    except StopAsyncIteration:
        return
    yield 0, head
    streams = [first] + [aiter(generate(c)) for c in choices[1:]]
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for delta in streams[i]:
                await merged.put((i, delta))
        except Exception as exc:  # raised to the reader, which ends the whole answer
            await merged.put((i, exc))
        await merged.put((i, None))

    tasks = [asyncio.create_task(pump(i)) for i in range(len(streams))]
    try:
        running = {i for i in range(len(streams)) if not (i == 0 and head.finish_reason)}
        while running:
            i, item = await merged.get()
            if isinstance(item, Exception):
                raise item
            if item is None:
                running.discard(i)
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()  # a client that left: each stream's own `finally` aborts its request in the engine
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


async def _stream(answer, deltas, include_usage: bool, heartbeat_s: float, backend: Backend,
                  choices: list[GenerationRequest]):
    finished = set()
    yield ": started\n\n"  # at once, so that from here on the gateway may read silence as a hung replica
    try:
        async for item in _with_heartbeats(deltas, heartbeat_s):
            if item is None:
                yield ": waiting\n\n"  # an SSE comment: clients skip it; the gateway sees a live replica
                continue
            i, delta = item
            if delta.finish_reason:
                finished.add(i)
            for chunk in answer.chunks(i, delta):
                yield _event(chunk)
        if include_usage:
            yield _event(answer.usage_chunk())
    except ValueError as exc:  # refused once streaming began (the engine's own check): an error event
        yield _event({"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}})
    finally:
        for i, request in enumerate(choices):
            if i not in finished:  # the client went away: free the engine's slot and KV blocks now
                await backend.abort(request.request_id)
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


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
