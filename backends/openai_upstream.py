"""Any OpenAI-compatible server as a backend (a vLLM / SGLang / TGI cluster, llama.cpp's server, a hosted
provider): messages go as messages, text comes back as text; nothing assumes our tokenizer or token ids.

This is the proxy's hot path, so per request it does little: a pool of keep-alive connections per upstream
(backends/wire.py, a lean HTTP/1.1 client), the body built from the request as it came, no re-tokenizing when the
upstream reports usage. A streaming client
gets a streamed upstream call (with `stream_options.include_usage`); a whole-answer client gets a plain one.
Bodies are always read to their end so the connection goes back to the pool.

Failures before the first token (connect error, timeout, HTTP 429 or 5xx) raise BackendUnavailable, so the
gateway can pass the request to the next model of its route group; other 4xx are the caller's: BackendRejected.
"""
from __future__ import annotations

import json
from typing import AsyncIterator

from backends.base import BackendRejected, BackendUnavailable, GenerationRequest, TokenDelta, Usage
from backends.wire import Pool, WireError


# What parsing an answer that is not an OpenAI chat completion raises (bad JSON, missing or mistyped fields).
NOT_AN_ANSWER = (ValueError, KeyError, IndexError, TypeError, AttributeError)


class OpenAIUpstream:
    def __init__(self, name: str, base_url: str, *, api_key: str | None = None, upstream_model: str | None = None,
                 tokenizer=None, timeout_s: float = 120.0, connect_timeout_s: float = 5.0,
                 max_connections: int = 256):
        self.name, self.base_url = name, base_url.rstrip("/")
        self.upstream_model = upstream_model or name
        self.tokenizer = tokenizer  # only to count when the upstream reports no usage
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeouts = {"timeout_s": timeout_s, "connect_timeout_s": connect_timeout_s,
                         "max_connections": max_connections}
        self.client: Pool | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = Pool(self.base_url, self.headers, **self.timeouts)

    async def stop(self) -> None:
        if self.client is not None:
            self.client.close()
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
            response, content = await self.client.post("/chat/completions", _json(body))
        except WireError as exc:
            raise BackendUnavailable(f"{self.name}: {exc}") from None
        _raise_for(self.name, response.status, response.headers, content)
        try:
            answer = json.loads(content)
            choice = answer["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            delta = TokenDelta(text, [], choice.get("finish_reason") or "stop", None, None,
                               message.get("tool_calls") or None, choice.get("logprobs"))
            delta.logprobs = _floats(choice.get("logprobs")) if request.params.logprobs else None
            delta.usage = self._usage(answer.get("usage"), request, [text])
        except NOT_AN_ANSWER as exc:
            raise self._garbled(exc) from None
        return delta

    async def _streamed(self, request: GenerationRequest, body: dict) -> AsyncIterator[TokenDelta]:
        """Deltas as they come; the finish delta is held until the body ends, so it carries the usage."""
        texts, finish, usage = [], None, None
        try:
            async with self.client.stream("/chat/completions", _json(body)) as (response, chunks):
                if response.status != 200:
                    _raise_for(self.name, response.status, response.headers, b"".join([c async for c in chunks]))
                async for line in _lines(chunks):
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():  # a usage-only chunk has none
                        delta = self._delta(choice, request)
                        finish = choice.get("finish_reason") or finish
                        if delta.text or delta.tool_calls or delta.choice_logprobs:
                            texts.append(delta.text)
                            yield delta
        except WireError as exc:
            raise BackendUnavailable(f"{self.name}: {exc}") from None
        except NOT_AN_ANSWER as exc:
            raise self._garbled(exc) from None
        yield TokenDelta("", [], finish or "stop", self._usage(usage, request, texts))

    def _garbled(self, exc: Exception) -> BackendUnavailable:
        """An upstream's malformed answer is its fault, not the caller's: never a 400 or a 500 to the tenant."""
        return BackendUnavailable(f"{self.name} answered something that is not an OpenAI chat completion "
                                  f"({type(exc).__name__})")

    @staticmethod
    def _delta(choice: dict, request: GenerationRequest) -> TokenDelta:
        d = choice.get("delta") or {}
        logprobs = choice.get("logprobs")
        floats = _floats(logprobs) if request.params.logprobs else None
        return TokenDelta(d.get("content") or "", [], None, None, floats, d.get("tool_calls") or None, logprobs)

    def _usage(self, reported: dict | None, request: GenerationRequest, texts: list[str]) -> Usage:
        counts = _counts(reported)
        if counts is not None:
            return Usage(*counts)
        # No usable usage from the upstream: count with the model's tokenizer when configured, else estimate.
        prompt = json.dumps(request.messages, ensure_ascii=False)
        return Usage(self.count(prompt), self.count("".join(texts)), 0, estimated=True)

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return -(-len(text.encode()) // 4)  # about four bytes a token in English BPE vocabularies


def _json(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body's lines (an SSE event may span chunks, a chunk may hold several events), without line ends."""
    rest = b""
    async for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if rest:
        yield rest.rstrip(b"\r")


def _counts(reported) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) tokens as the upstream reported them; None when absent or not plausible
    counts (a negative or non-integer count must not become a bill)."""
    try:
        counts = (reported["prompt_tokens"], reported["completion_tokens"],
                  (reported.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    except (KeyError, TypeError, AttributeError):
        return None
    plausible = all(type(n) is int and n >= 0 for n in counts) and counts[2] <= counts[0]
    return counts if plausible else None


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
