"""Any OpenAI-compatible server as a backend (a vLLM / SGLang / TGI cluster, llama.cpp's server, a hosted
provider): messages go as messages, text comes back as text; nothing assumes our tokenizer or token ids.

This is the proxy's hot path, so per request it does little: a pool of keep-alive connections per upstream
(backends/wire.py, a lean HTTP/1.1 client), the body built from the request as it came, no re-tokenizing when the
upstream reports usage. A streaming client
gets a streamed upstream call (with `stream_options.include_usage`); a whole-answer client gets a plain one.
Bodies are always read to their end so the connection goes back to the pool.

Only what the client sent goes upstream (request.extra): no sampling defaults of ours replace the upstream's.
Failures before the first token (connect error, no first token in `first_token_timeout_s`, HTTP 429 or 5xx) raise
BackendUnavailable, so the gateway can pass the request to the next model of its route group, and count against
the model's circuit breaker (backends/breaker.py); HTTP 401/403 is the operator's key (UpstreamAuthFailed, the
model out of service until a health probe gets through); other 4xx are the caller's: BackendRejected, carrying
the upstream's own error type, code and param.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

from backends.base import BackendRejected, BackendUnavailable, GenerationRequest, TokenDelta, UpstreamAuthFailed, Usage
from backends.breaker import Breaker
from backends.wire import Pool, WireError, WireTimeout


class TimedOut(BackendUnavailable):
    """No first token (a whole answer: no answer) in time: the upstream is hung or overloaded."""


# What parsing an answer that is not an OpenAI chat completion raises (bad JSON, missing or mistyped fields).
NOT_AN_ANSWER = (ValueError, KeyError, IndexError, TypeError, AttributeError)


class OpenAIUpstream:
    def __init__(self, name: str, base_url: str, *, api_key: str | None = None, upstream_model: str | None = None,
                 timeout_s: float = 120.0, connect_timeout_s: float = 5.0,
                 first_token_timeout_s: float = 30.0, max_connections: int = 256, health_path: str | None = "/models",
                 health_interval_s: float = 2.0, breaker_threshold: int = 3, cooldown_s: float = 5.0):
        self.name, self.base_url = name, base_url.rstrip("/")
        self.upstream_model = upstream_model or name
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeouts = {"timeout_s": timeout_s, "connect_timeout_s": connect_timeout_s,
                         "max_connections": max_connections}
        self.first_token_timeout_s = min(first_token_timeout_s, timeout_s)
        self.health_path, self.health_interval_s = health_path, health_interval_s
        self.breaker = Breaker(name, breaker_threshold, cooldown_s)
        self.client: Pool | None = None
        self._probes: asyncio.Task | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = Pool(self.base_url, self.headers, **self.timeouts)
        if self._probes is None and self.health_path:
            self._probes = asyncio.create_task(self._probe_loop())

    async def stop(self) -> None:
        if self._probes is not None:
            self._probes.cancel()
            self._probes = None
        if self.client is not None:
            self.client.close()
            self.client = None

    async def abort(self, request_id: str) -> None:
        """Nothing to do: leaving generate closes the upstream stream, which is how an OpenAI server aborts."""

    def state(self) -> dict:
        return self.breaker.state()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """The deltas; a failure before the first one counts against the breaker, and while the breaker is open
        (or the upstream is down) the request is refused at once, so a route group's next tier serves it."""
        await self.start()
        if not self.breaker.available():
            raise BackendUnavailable(f"{self.name} is out of service: {self.breaker.reason}",
                                     code=self.breaker.code)
        started = False
        try:
            deltas = self._streamed(request, self._body(request)) if request.stream else self._whole(request)
            async for delta in deltas:
                if not started:
                    started = True
                    self.breaker.succeeded()
                yield delta
        except UpstreamAuthFailed as exc:
            self.breaker.auth_failed(str(exc))
            raise
        except BackendUnavailable as exc:
            if not started and exc.status != 429:  # rate limited is busy, not broken: its Retry-After says when
                self.breaker.failed(str(exc), at_once=isinstance(exc, TimedOut))
            raise

    async def _probe_loop(self) -> None:
        while True:
            await self._probe()
            await asyncio.sleep(self.health_interval_s)

    async def _probe(self) -> None:
        """GET the health path (/v1/models by default): any answer but 5xx is alive; 401/403 is a refused key."""
        try:
            async with asyncio.timeout(self.timeouts["connect_timeout_s"]):
                answer, _ = await self.client.post(self.health_path, b"", "GET")
        except (WireError, TimeoutError) as exc:
            return self.breaker.probed(False, f"health probe {self.health_path}: {exc or 'no answer in time'}")
        if answer.status in (401, 403):
            return self.breaker.probed(False, f"the upstream refused Ferryman's credentials (HTTP {answer.status})",
                                       "upstream_auth_failed")
        self.breaker.probed(answer.status < 500, f"health probe {self.health_path}: HTTP {answer.status}")

    def _body(self, request: GenerationRequest) -> dict:
        """Only what the client sent (request.extra): no sampling defaults of ours replace the upstream's."""
        body = {"model": self.upstream_model, "messages": request.messages, **request.extra}
        if request.params.logprobs:  # the cascade judges the answer by its token log-probabilities
            body["logprobs"] = True
        if request.stream:
            body["stream"], body["stream_options"] = True, {"include_usage": True}
        return body

    async def _whole(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        try:
            response, content = await self.client.post("/chat/completions", _json(self._body(request)))
        except WireTimeout as exc:
            raise TimedOut(f"{self.name}: {exc}") from None
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
            delta.usage = self._usage(answer.get("usage"))
        except NOT_AN_ANSWER as exc:
            raise self._garbled(exc) from None
        yield delta

    async def _streamed(self, request: GenerationRequest, body: dict) -> AsyncIterator[TokenDelta]:
        """Deltas as they come; the finish delta is held until the body ends, so it carries the usage."""
        answered, finish, usage = False, None, None
        first = asyncio.get_running_loop().time() + self.first_token_timeout_s  # until the first delta
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout_at(first):
                    response, chunks = await stack.enter_async_context(
                        self.client.stream("/chat/completions", _json(body)))
                    if response.status != 200:
                        _raise_for(self.name, response.status, response.headers, b"".join([c async for c in chunks]))
                lines = _lines(chunks)
                while (line := await _next(lines, None if answered else first)) is not None:
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    usage = _reported_usage(chunk) or usage
                    for choice in chunk.get("choices") or ():  # a usage-only chunk has none
                        delta = self._delta(choice, request)
                        finish = choice.get("finish_reason") or finish
                        if delta.text or delta.tool_calls or delta.choice_logprobs:
                            answered = True
                            yield delta
        except TimeoutError:
            raise TimedOut(f"{self.name}: no first token in {self.first_token_timeout_s:g} s") from None
        except WireError as exc:
            raise BackendUnavailable(f"{self.name}: {exc}") from None
        except NOT_AN_ANSWER as exc:
            raise self._garbled(exc) from None
        if finish is None:  # llama-cpp-python ends a stream it interrupts with [DONE] alone: never call that "stop"
            raise BackendUnavailable(f"{self.name} ended its stream without a finish_reason: the answer was cut short")
        yield TokenDelta("", [], finish, self._usage(usage))

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

    @staticmethod
    def _usage(reported: dict | None) -> Usage | None:
        """The upstream's own count; None when it sent none (or nothing plausible): the gateway then counts, by one
        rule however the request ended (gateway/served.py, ServedModel.count_usage)."""
        counts = _counts(reported)
        return None if counts is None else Usage(*counts)


async def _next(lines: AsyncIterator[bytes], deadline: float | None) -> bytes | None:
    """The next line, or None at the end; before the first delta, only until the first-token deadline."""
    if deadline is None:
        return await anext(lines, None)
    async with asyncio.timeout_at(deadline):
        return await anext(lines, None)


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


def _reported_usage(chunk: dict) -> dict | None:
    """A chunk's usage: OpenAI's `usage`, or Groq's `x_groq.usage` (where Groq puts it on a stream's last chunk)."""
    groq = chunk.get("x_groq")
    return chunk.get("usage") or (groq.get("usage") if isinstance(groq, dict) else None)


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
    """An upstream's refusal as the gateway treats it: 401/403 the operator's credentials; 429, 5xx, 404 (the model
    is not served there now) and 408 this model's trouble; any other 4xx the request's fault, passed on as it came."""
    if status == 200:
        return
    error = _error(content)
    message = error.get("message") or (f"HTTP {status} with an empty body" if not content.strip()
                                       else f"HTTP {status}: {content[:200].decode(errors='replace')}")
    if status == 429:
        retry = headers.get("retry-after")
        raise BackendUnavailable(f"{name} is rate limited upstream: {message}", 429,
                                 float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
                                 "upstream_rate_limited")
    if status in (401, 403):
        raise UpstreamAuthFailed(f"{name}: the upstream refused Ferryman's credentials (HTTP {status}: {message})")
    if status >= 500 or status in (404, 408):
        raise BackendUnavailable(f"{name} answered HTTP {status}: {message}")
    raise BackendRejected(message, status, error.get("type"), error.get("code"), error.get("param"))


def _error(content: bytes) -> dict:
    """The upstream's OpenAI error object ({message, type, code, param}), as far as it sent one."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(error, dict):
        return {"message": str(error)} if error else {}
    fields = {k: error.get(k) for k in ("message", "type", "code", "param")}
    return {k: v for k, v in fields.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}


def _floats(logprobs: dict | None) -> list[float]:
    return [t["logprob"] for t in (logprobs or {}).get("content") or ()]
