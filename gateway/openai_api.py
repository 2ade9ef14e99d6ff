"""OpenAI-compatible routes. Thin: parse, hand to the Ferry, shape the answer."""
from __future__ import annotations

import json
import time
from typing import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import TokenDelta
from gateway.errors import APIError
from gateway.ferry import Ferry, Ticket
from gateway.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1")


def ferry_of(request: Request) -> Ferry:
    return request.app.state.ferry


@router.get("/models")
async def list_models(request: Request, authorization: str | None = Header(None)):
    ferry = ferry_of(request)
    await ferry.authenticate(authorization)
    names = ["auto", *ferry.backends]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "ferryman"} for n in names]}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, authorization: str | None = Header(None)):
    return await _complete(request, body, authorization, chat=True)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, authorization: str | None = Header(None)):
    return await _complete(request, body, authorization, chat=False)


async def _complete(request: Request, body, authorization: str | None, chat: bool):
    ferry = ferry_of(request)
    principal = await ferry.authenticate(authorization)
    prompt_ids, query = ferry.prompt_ids(body)
    ticket = await ferry.admit(principal, body, prompt_ids, query)
    kept = None
    if ticket.cascade:
        ticket, kept = await ferry.cascade(ticket, body, query)
    deltas = _replay(kept) if kept is not None else ferry.run(ticket)
    shape = ChatShape(ticket) if chat else CompletionShape(ticket)
    if body.stream:
        return StreamingResponse(_sse(deltas, ticket, shape, body.include_usage()),
                                 media_type="text/event-stream", headers=ticket.headers)
    text, finish = "", None
    async for delta in deltas:
        text += delta.text
        finish = delta.finish_reason or finish
    headers = {**ticket.headers, "x-ferryman-cost-usd": _usd(ticket.total_cost_micros())}
    return JSONResponse(shape.whole(text, finish, _usage(ticket)), headers=headers)


async def _replay(deltas: list[TokenDelta]) -> AsyncIterator[TokenDelta]:
    for delta in deltas:
        yield delta


async def _sse(deltas: AsyncIterator[TokenDelta], ticket: Ticket, shape, include_usage: bool) -> AsyncIterator[str]:
    try:
        if first := shape.opening():
            yield _event(first)
        async for delta in deltas:
            if delta.text or delta.finish_reason:
                yield _event(shape.chunk(delta.text, delta.finish_reason))
    except APIError as exc:
        yield _event({"error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": exc.param}})
        return
    if include_usage:
        yield _event(shape.usage_chunk(_usage(ticket)))
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _usage(ticket: Ticket) -> dict:
    u = ticket.usage
    prompt, completion = (u.prompt_tokens, u.completion_tokens) if u else (len(ticket.request.prompt_token_ids), len(ticket.completion_ids))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens if u else 0},
            "cost_usd": float(_usd(ticket.total_cost_micros()))}


def _usd(micros: int | None) -> str:
    return f"{(micros or 0) / 1_000_000:.6f}"


class ChatShape:
    """chat.completion and chat.completion.chunk objects."""

    def __init__(self, ticket: Ticket):
        self.base = {"id": "chatcmpl-" + ticket.request_id[4:], "created": int(time.time()), "model": ticket.model,
                     "system_fingerprint": None}

    def whole(self, text: str, finish: str | None, usage: dict) -> dict:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        return {**self.base, "object": "chat.completion", "choices": [choice], "usage": usage}

    def opening(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def chunk(self, text: str, finish: str | None) -> dict:
        return self._chunk({"content": text} if text else {}, finish)

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def _chunk(self, delta: dict, finish: str | None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}


class CompletionShape:
    """text_completion objects (streamed chunks share the same object type)."""

    def __init__(self, ticket: Ticket):
        self.base = {"id": "cmpl-" + ticket.request_id[4:], "object": "text_completion", "created": int(time.time()),
                     "model": ticket.model, "system_fingerprint": None}

    def whole(self, text: str, finish: str | None, usage: dict) -> dict:
        return {**self.base, "choices": [self._choice(text, finish)], "usage": usage}

    def opening(self) -> None:
        return None

    def chunk(self, text: str, finish: str | None) -> dict:
        return {**self.base, "choices": [self._choice(text, finish)]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.base, "choices": [], "usage": usage}

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
