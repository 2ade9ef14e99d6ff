"""An engine replica as its own server: OpenAI-compatible /v1/completions over any Backend.

The gateway's RemoteBackend talks to it. Each streamed choice carries the new `token_ids` (an extension vLLM
also offers) so that, if this replica dies mid-stream, another can continue from exactly the tokens sent.
No tenants, no money here: replicas sit behind the gateway on a private network.
"""
from __future__ import annotations

import json
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from backends.base import Backend, GenerationRequest, SamplingParams


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


def create_replica_app(backend: Backend, tokenizer=None) -> FastAPI:
    async def lifespan(app: FastAPI):
        await backend.start()
        yield
        await backend.stop()

    app = FastAPI(title=f"Ferryman engine replica: {backend.name}", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.name}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "owned_by": "ferryman"}]}

    @app.post("/v1/completions")
    async def completions(body: ReplicaCompletion):
        prompt = body.prompt
        if isinstance(prompt, str):
            if tokenizer is None:
                return JSONResponse({"error": {"message": "this replica takes token-id prompts only",
                                               "type": "invalid_request_error", "param": "prompt", "code": None}}, 400)
            prompt = [tokenizer.bos_token_id] + tokenizer.encode(prompt, add_special_tokens=False)
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=stop)
        request = GenerationRequest(f"cmpl-{uuid.uuid4().hex}", list(prompt), params, body.priority)
        if body.stream:
            return StreamingResponse(_stream(backend, request), media_type="text/event-stream")
        return await _whole(backend, request)

    return app


def _choice(text: str, token_ids: list[int], finish: str | None) -> dict:
    return {"index": 0, "text": text, "token_ids": token_ids, "logprobs": None, "finish_reason": finish}


async def _stream(backend: Backend, request: GenerationRequest):
    base = {"id": request.request_id, "object": "text_completion", "created": int(time.time()), "model": backend.name}
    finished = False
    try:
        async for delta in backend.generate(request):
            finished = delta.finish_reason is not None
            chunk = {**base, "choices": [_choice(delta.text, delta.token_ids, delta.finish_reason)]}
            if delta.usage:
                chunk["usage"] = _usage(delta.usage)
            yield f"data: {json.dumps(chunk)}\n\n"
    finally:
        if not finished:  # the client went away: free the engine's slot and KV blocks now
            await backend.abort(request.request_id)
    yield "data: [DONE]\n\n"


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
