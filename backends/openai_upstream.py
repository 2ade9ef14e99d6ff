"""Any OpenAI-compatible server as a backend (a vLLM / SGLang / TGI cluster, llama.cpp's server, a hosted
provider): messages go as messages, text comes back as text; nothing assumes our tokenizer or token ids.

This is the proxy's hot path, so per request it does little: one pooled keep-alive client per upstream, the
body built from the request as it came, no re-tokenizing when the upstream reports usage. A streaming client
gets a streamed upstream call (with `stream_options.include_usage`); a whole-answer client gets a plain one.
Bodies are always read to their end so the connection goes back to the pool.

Failures before the first token (connect error, timeout, HTTP 429 or 5xx) raise BackendUnavailable, so the
gateway can pass the request to the next model of its route group; other 4xx are the caller's: BackendRejected.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

import httpx

from backends.base import BackendRejected, BackendUnavailable, GenerationRequest, TokenDelta, Usage


class OpenAIUpstream:
    def __init__(self, name: str, base_url: str, *, api_key: str | None = None, upstream_model: str | None = None,
                 tokenizer=None, timeout_s: float = 120.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 256):
        self.name, self.base_url = name, base_url.rstrip("/")
        self.upstream_model = upstream_model or name
        self.tokenizer = tokenizer  # only to count when the upstream reports no usage
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                            limits=self.limits)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def abort(self, request_id: str) -> None:
        """Nothing to do: leaving generate closes the upstream stream, which is how an OpenAI server aborts."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        await self.start()
        body = self._body(request)
        if request.stream:
            async for delta in self._streamed(request, body):
                yield delta
        else:
            yield await self._whole(request, body)

    def _body(self, request: GenerationRequest) -> dict:
        p = request.params
        body = {"model": self.upstream_model, "messages": request.messages, "temperature": p.temperature,
                "top_p": p.top_p, **request.extra}
        if "max_completion_tokens" not in body:
            body["max_tokens"] = p.max_tokens
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = p.stop
        if p.logprobs:  # the cascade judges the answer by its token log-probabilities
            body["logprobs"] = True
        if request.stream:
            body["stream"], body["stream_options"] = True, {"include_usage": True}
        return body

    async def _whole(self, request: GenerationRequest, body: dict) -> TokenDelta:
        try:
            response = await self.client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.name}: {type(exc).__name__} {exc}".strip()) from None
        _raise_for(self.name, response.status_code, response.headers, response.content)
        answer = response.json()
        choice = answer["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        delta = TokenDelta(text, [], choice.get("finish_reason") or "stop", None, None,
                           message.get("tool_calls") or None, choice.get("logprobs"))
        delta.logprobs = _floats(choice.get("logprobs")) if request.params.logprobs else None
        delta.usage = self._usage(answer.get("usage"), request, [text])
        return delta

    async def _streamed(self, request: GenerationRequest, body: dict) -> AsyncIterator[TokenDelta]:
        """Deltas as they come; the finish delta is held until the body ends, so it carries the usage."""
        texts, finish, usage = [], None, None
        try:
            async with self.client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    _raise_for(self.name, response.status_code, response.headers, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():  # a usage-only chunk has none
                        delta = self._delta(choice, request)
                        finish = choice.get("finish_reason") or finish
                        if delta.text or delta.tool_calls or delta.choice_logprobs:
                            texts.append(delta.text)
                            yield delta
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"{self.name}: {type(exc).__name__} {exc}".strip()) from None
        yield TokenDelta("", [], finish or "stop", self._usage(usage, request, texts))

    @staticmethod
    def _delta(choice: dict, request: GenerationRequest) -> TokenDelta:
        d = choice.get("delta") or {}
        logprobs = choice.get("logprobs")
        floats = _floats(logprobs) if request.params.logprobs else None
        return TokenDelta(d.get("content") or "", [], None, None, floats, d.get("tool_calls") or None, logprobs)

    def _usage(self, reported: dict | None, request: GenerationRequest, texts: list[str]) -> Usage:
        if reported:
            cached = (reported.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            return Usage(reported["prompt_tokens"], reported["completion_tokens"], cached)
        # No usage from the upstream: count with the model's tokenizer when configured, else estimate.
        prompt = json.dumps(request.messages, ensure_ascii=False)
        return Usage(self.count(prompt), self.count("".join(texts)), 0, estimated=True)

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return -(-len(text.encode()) // 4)  # about four bytes a token in English BPE vocabularies


def _raise_for(name: str, status: int, headers, content: bytes) -> None:
    if status == 200:
        return
    message = _error_message(content) or f"HTTP {status}"
    if status == 429:
        retry = headers.get("retry-after")
        raise BackendUnavailable(f"{name} is rate limited upstream: {message}", 429,
                                 float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)
    if status >= 500 or status in (404, 408):  # 404: the upstream does not serve this model (now)
        raise BackendUnavailable(f"{name} answered HTTP {status}: {message}")
    raise BackendRejected(f"{name} refused the request: {message}", status)


def _error_message(content: bytes) -> str:
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return content[:200].decode(errors="replace")
    return (error.get("message") if isinstance(error, dict) else str(error or "")) or ""


def _floats(logprobs: dict | None) -> list[float]:
    return [t["logprob"] for t in (logprobs or {}).get("content") or ()]
