"""OpenAI-compatible routes. Thin: parse, hand to the Ferry, shape the answer."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from backends.base import TokenDelta
from gateway.api.deps import ferry_of
from gateway.api.shapes import Answer, ChatShape, CompletionShape, usage_of, usd
from gateway.errors import APIError, outage, responses
from gateway.ferry import Ferry, Reply
from gateway.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1")
# The two completion routes are served as plain Starlette routes (SERVED, added ahead of FastAPI's in gateway/app.py):
# FastAPI's route matching and dependency solving cost 0.15-0.2 ms of a request's ~2 ms through the gateway (an
# interleaved A/B in front of an 8 ms upstream). This router only describes them in the OpenAPI document.
documented = APIRouter(prefix="/v1")
log = logging.getLogger("ferryman")
COMPLETION_ERRORS = responses(400, 401, 402, 403, 404, 413, 429, 503, 504)


@router.get("/models", responses=responses(401, 503))
async def list_models(request: Request, authorization: str | None = Header(None)):
    ferry = ferry_of(request)
    names = ferry.routing.visible(await ferry.authenticate(authorization))  # exactly what the caller may use
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "ferryman"} for n in names]}


def documented_body(kind: type) -> dict:
    """The route reads its body and its Authorization header itself (gateway/bodies.py; a Header parameter costs
    FastAPI's dependency solving on every request); the OpenAPI document still describes both, as FastAPI would."""
    schema = {"$ref": f"#/components/schemas/{kind.__name__}"}
    authorization = {"in": "header", "name": "authorization", "required": False,
                     "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Authorization"}}
    return {"parameters": [authorization],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


BODIES = (ChatCompletionRequest, CompletionRequest)  # api_docs adds their schemas to the document


@documented.post("/chat/completions", responses=COMPLETION_ERRORS, openapi_extra=documented_body(ChatCompletionRequest))
async def chat_completions(request: Request):
    return await _complete(request, ChatCompletionRequest, request.headers.get("authorization"), chat=True)


@documented.post("/completions", responses=COMPLETION_ERRORS, openapi_extra=documented_body(CompletionRequest))
async def completions(request: Request):
    return await _complete(request, CompletionRequest, request.headers.get("authorization"), chat=False)


SERVED = {"/v1/chat/completions": chat_completions, "/v1/completions": completions}


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
    headers = {**reply.headers(), "x-ferryman-cost-usd": usd(reply.cost_micros())}
    return JSONResponse(shape.whole(answers, usage_of(reply)), headers=headers)


async def _whole(request: Request, deltas: AsyncIterator[TokenDelta], n: int) -> list[Answer] | None:
    """The n whole answers, or None if the client hung up first: then its generation is cancelled (engine or
    upstream) and it pays for the tokens generated until then, as a stream's client would (docs/BILLING.md).
    Gathered on the request's own task (a task of its own cost a loop turn on every answer's way); a watcher
    cancels it when the client leaves."""
    answers, task, gathering = [Answer() for _ in range(n)], asyncio.current_task(), True
    hangup = asyncio.ensure_future(_hung_up(request))
    hangup.add_done_callback(lambda _: gathering and task.cancel())
    try:
        async for delta in deltas:
            answers[delta.index].add(delta)
    except asyncio.CancelledError:
        if not hangup.done() or hangup.cancelled():
            raise  # not the client leaving (the server stopping): not ours to swallow
        task.uncancel()
        return None  # the generation was stopped and settled as cancelled, shielded, before this
    finally:
        gathering = False
        hangup.cancel()
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
        yield _event(shape.usage_chunk(usage_of(reply)))
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
