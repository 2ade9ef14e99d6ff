"""A stand-in for a hosted OpenAI-compatible provider, run as its own process by the catalog tests:

    python -m tests.fake_upstream --port 9000 [--status 429] [--no-usage]

It speaks only text chat completions (a token-id prompt is refused, as a hosted provider would), answers
deterministically, calls the first tool it is offered, and reports usage by its own count (words, not our
tokenizer's tokens), so a test can tell the upstream's usage from any estimate of ours.
"""
from __future__ import annotations

import argparse
import json
import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def usage_of(messages: list[dict], answer: str) -> dict:
    """Its own count: 3 per message plus one per word of content; one per word (or tool argument) answered."""
    prompt = sum(3 + len(str(m.get("content") or "").split()) for m in messages)
    completion = max(1, len(answer.split()))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}}


def reply(body: dict) -> tuple[str, list[dict] | None]:
    """(text, tool calls) for a request."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return f"the tool said {last['content']}", None
    if body.get("tools"):
        name = body["tools"][0]["function"]["name"]
        return "", [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}]
    if last.get("content") == "which parameters?":
        return json.dumps(sorted(k for k in body if k not in ("messages", "stream", "stream_options"))), None
    return f"echo {last.get('content')}", None


def create_app(name: str, status: int, report_usage: bool, key: str | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if key and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "auth"}}, 401)
        if status != 200:
            return JSONResponse({"error": {"message": f"{name} is over capacity", "type": "rate_limit"}}, status,
                                headers={"retry-after": "2"})
        if "prompt" in body or not isinstance(body.get("messages"), list):
            return JSONResponse({"error": {"message": "messages is required; token-id prompts are not accepted",
                                           "type": "invalid_request_error"}}, 400)
        text, calls = reply(body)
        usage = usage_of(body["messages"], text or calls[0]["function"]["arguments"]) if report_usage else None
        if body.get("stream"):
            include = (body.get("stream_options") or {}).get("include_usage")
            return StreamingResponse(stream(body["model"], text, calls, usage if include else None),
                                     media_type="text/event-stream")
        message = {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop",
                  "logprobs": logprobs(text) if body.get("logprobs") else None}
        return {"id": "cmpl-fake", "object": "chat.completion", "model": body["model"], "choices": [choice],
                "usage": usage}

    return app


def logprobs(text: str) -> dict:
    return {"content": [{"token": w, "logprob": -0.5, "bytes": None, "top_logprobs": []} for w in text.split()]}


async def stream(model: str, text: str, calls: list[dict] | None, usage: dict | None):
    def event(delta: dict, finish: str | None = None, **more) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'model': model, 'choices': choices, **more})}\n\n"

    yield event({"role": "assistant", "content": ""})
    for i, word in enumerate(text.split()):
        yield event({"content": (" " if i else "") + word})
    for call in calls or ():  # as OpenAI streams them: id and name first, the arguments in pieces
        args = call["function"]["arguments"]
        yield event({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": ""}}]})
        for piece in (args[: len(args) // 2], args[len(args) // 2:]):
            yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield event({}, "tool_calls" if calls else "stop")
    if usage:
        yield f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'model': model, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--status", type=int, default=200, help="answer every request with this status (429, 503)")
    parser.add_argument("--no-usage", action="store_true", help="never report usage")
    parser.add_argument("--key-env", help="require the API key held by this environment variable")
    args = parser.parse_args()
    key = os.environ[args.key_env] if args.key_env else None
    uvicorn.run(create_app(args.name, args.status, not args.no_usage, key), host="127.0.0.1", port=args.port,
                log_level="warning")
