"""OpenAI-compatible routes. Thin: parse, hand to the Ferry, shape the answer."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backends.base import TokenDelta
from gateway.api.deps import ferry_of
from gateway.errors import APIError, outage, responses
from gateway.ferry import Ferry, Reply, Ticket
from gateway.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1")
log = logging.getLogger("ferryman")
COMPLETION_ERRORS = responses(400, 401, 402, 403, 404, 413, 429, 503, 504)


@router.get("/models", responses=responses(401, 503))
async def list_models(request: Request, authorization: str | None = Header(None)):
    ferry = ferry_of(request)
    names = ferry.routing.visible(await ferry.authenticate(authorization))  # exactly what the caller may use
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "ferryman"} for n in names]}


def documented_body(kind: type) -> dict:
    """The route reads its body itself (gateway/bodies.py); the OpenAPI document still describes it."""
    schema = {"$ref": f"#/components/schemas/{kind.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


BODIES = (ChatCompletionRequest, CompletionRequest)  # api_docs adds their schemas to the document


@router.post("/chat/completions", responses=COMPLETION_ERRORS, openapi_extra=documented_body(ChatCompletionRequest))
async def chat_completions(request: Request, authorization: str | None = Header(None)):
    return await _complete(request, ChatCompletionRequest, authorization, chat=True)


@router.post("/completions", responses=COMPLETION_ERRORS, openapi_extra=documented_body(CompletionRequest))
async def completions(request: Request, authorization: str | None = Header(None)):
    return await _complete(request, CompletionRequest, authorization, chat=False)


async def _complete(request: Request, kind: type, authorization: str | None, chat: bool):
    ferry = ferry_of(request)
    principal = await ferry.authenticate(authorization)  # before the body is read: no valid key, no parsing
    request.state.tenant = principal.tenant_name  # for the access log
    body = await request.app.state.bodies.parse(await request.body(), kind)
    request.state.model = ferry.routing.known(body.model)  # a refusal from here on is counted under it
    reply = await ferry.complete(principal, body)
    request.state.admitted = True  # an error from here on is the answer's, not a refusal
    request.state.reply = reply
    deltas = request.app.state.drain.guard(reply.deltas)
    shape = ChatShape(reply.ticket) if chat else CompletionShape(reply.ticket)
    if body.stream:
        return StreamingResponse(_sse(deltas, reply, shape, body.include_usage()),
                                 media_type="text/event-stream", headers=reply.headers())
    answers = await _whole(request, deltas, reply.ticket.n)
    if answers is None:  # nobody is listening: the generation was stopped and settled as cancelled
        return Response(status_code=499)
    headers = {**reply.headers(), "x-ferryman-cost-usd": _usd(reply.cost_micros())}
    return JSONResponse(shape.whole(answers, _usage(reply)), headers=headers)


class Answer:
    """One choice's whole answer gathered from its deltas: text, tool calls, log-probabilities, finish reason."""

    def __init__(self):
        self.text, self.finish, self.tool_calls, self.logprobs = "", None, [], None

    def add(self, delta: TokenDelta) -> None:
        self.text += delta.text
        self.finish = delta.finish_reason or self.finish
        for call in delta.tool_calls or ():  # streamed pieces: a call's head (its index new), then its arguments
            i = call.get("index")
            if i is None or i >= len(self.tool_calls):
                self.tool_calls.append({**call, "function": dict(call.get("function") or {})})
            else:
                function = self.tool_calls[i]["function"]
                function["arguments"] = function.get("arguments", "") + call["function"].get("arguments", "")
        if delta.choice_logprobs:  # chat's {"content": [...]} or a completion's lists: each list grows
            more = delta.choice_logprobs
            self.logprobs = self.logprobs or {k: [] for k, v in more.items() if isinstance(v, list)}
            for key, items in self.logprobs.items():
                items += more.get(key) or ()


async def _whole(request: Request, deltas: AsyncIterator[TokenDelta], n: int) -> list[Answer] | None:
    """The n whole answers, or None if the client hung up first: then its generation is cancelled (engine or
    upstream) and it pays for the tokens generated until then, as a stream's client would (docs/BILLING.md)."""
    answers = [Answer() for _ in range(n)]

    async def gather():
        async for delta in deltas:
            answers[delta.index].add(delta)

    gathering, hangup = asyncio.ensure_future(gather()), asyncio.ensure_future(_hung_up(request))
    try:
        await asyncio.wait((gathering, hangup), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not gathering.done():
            gathering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gathering  # settled (shielded) before the route returns
    if gathering.cancelled():
        return None
    gathering.result()  # the generation's own error, if it failed
    return answers


async def _hung_up(request: Request) -> None:
    """Returns once the client disconnects (the body is read: the server's next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(deltas: AsyncIterator[TokenDelta], reply: Reply, shape, include_usage: bool) -> AsyncIterator[str]:
    try:
        for first in shape.opening(reply.ticket.n):
            yield _event(first)
        async for delta in deltas:
            if delta.text or delta.finish_reason or delta.tool_calls or delta.choice_logprobs:
                yield _event(shape.chunk(delta))
    except Exception as exc:  # headers are sent: the error travels as an SSE event, then the stream ends cleanly
        yield _event(_stream_error(exc).body())
        return
    if include_usage:
        yield _event(shape.usage_chunk(_usage(reply)))
    yield "data: [DONE]\n\n"


def _stream_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if found := outage(exc):
        return found
    log.exception("a stream failed after it started")
    return APIError(500, "The server had an error while processing your request.", "server_error")


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _usage(reply: Reply) -> dict:
    u = reply.ticket.final_usage()
    prompt, completion = u.prompt_tokens, u.completion_tokens
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
             "cost_usd": float(_usd(reply.cost_micros()))}
    return {**usage, "estimated": True} if u.estimated else usage  # counted by us: the upstream sent no usage


def _usd(micros: int | None) -> str:
    return f"{(micros or 0) / 1_000_000:.6f}"


class ChatShape:
    """chat.completion and chat.completion.chunk objects."""

    def __init__(self, ticket: Ticket):
        self.base = {"id": "chatcmpl-" + ticket.request_id[4:], "created": int(time.time()), "model": ticket.model,
                     "system_fingerprint": None}

    def whole(self, answers: list[Answer], usage: dict) -> dict:
        choices = [self._choice(i, answer) for i, answer in enumerate(answers)]
        return {**self.base, "object": "chat.completion", "choices": choices, "usage": usage}

    @staticmethod
    def _choice(i: int, answer: Answer) -> dict:
        message = {"role": "assistant", "content": answer.text or (None if answer.tool_calls else "")}
        if answer.tool_calls:
            message["tool_calls"] = answer.tool_calls
        content = (answer.logprobs or {}).get("content")
        logprobs = {"content": content} if content else None
        return {"index": i, "message": message, "logprobs": logprobs, "finish_reason": answer.finish}

    def opening(self, n: int) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}, None) for i in range(n)]

    def chunk(self, d: TokenDelta) -> dict:
        delta = {"content": d.text} if d.text else {}
        if d.tool_calls:
            delta["tool_calls"] = d.tool_calls
        return self._chunk(d.index, delta, d.finish_reason, d.choice_logprobs)

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def _chunk(self, i: int, delta: dict, finish: str | None, logprobs: dict | None = None) -> dict:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}


class CompletionShape:
    """text_completion objects (streamed chunks share the same object type)."""

    def __init__(self, ticket: Ticket):
        self.base = {"id": "cmpl-" + ticket.request_id[4:], "object": "text_completion", "created": int(time.time()),
                     "model": ticket.model, "system_fingerprint": None}

    def whole(self, answers: list[Answer], usage: dict) -> dict:
        choices = [self._choice(i, a.text, a.logprobs, a.finish) for i, a in enumerate(answers)]
        return {**self.base, "choices": choices, "usage": usage}

    def opening(self, n: int) -> list[dict]:
        return []

    def chunk(self, d: TokenDelta) -> dict:
        return {**self.base, "choices": [self._choice(d.index, d.text, d.choice_logprobs, d.finish_reason)]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self.base, "choices": [], "usage": usage}

    @staticmethod
    def _choice(i: int, text: str, logprobs: dict | None, finish: str | None) -> dict:
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}
