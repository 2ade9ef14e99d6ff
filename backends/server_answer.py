"""An engine replica's answers in OpenAI's shapes: whole, or as stream chunks, for n choices.

Completion choices carry `token_ids` (the replicas protocol continues a cut stream from them), and each
choice's finishing chunk carries its usage (what RemoteBackend bills by). A chat answer's tool calls are parsed
from the text in the checkpoint's format (backends/engine/tools.py) and streamed as `tool_calls` deltas as the
model writes them (id and name, then the arguments' JSON text piece by piece); logprobs are OpenAI's objects, token strings decoded by the checkpoint's tokenizer.
"""
from __future__ import annotations

import time

from backends.base import TokenDelta, Usage
from backends.engine.tools import ToolCallStream


class _Answer:
    def __init__(self, tokenizer, model: str) -> None:
        self.tokenizer, self.model = tokenizer, model

    def start(self, request_id: str, n: int) -> None:
        self.base = {"id": request_id, "created": int(time.time()), "model": self.model}
        self.usages: list[Usage | None] = [None] * n
        self.n = n

    def usage(self) -> dict | None:
        done = [u for u in self.usages if u is not None]
        if not done:
            return None
        prompt = done[0].prompt_tokens  # the prompt counts once, as OpenAI and vLLM count it for n choices
        completion = sum(u.completion_tokens for u in done)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": done[0].cached_tokens}}


class CompletionAnswer(_Answer):
    def start(self, request_id: str, n: int) -> None:
        super().start(request_id, n)
        self.texts, self.ids, self.finish = [""] * n, [[] for _ in range(n)], [None] * n
        self.logprobs = [_completion_logprobs() for _ in range(n)]

    def chunks(self, i: int, d: TokenDelta) -> list[dict]:
        self.usages[i] = d.usage or self.usages[i]
        offset = len(self.texts[i])
        self.texts[i] += d.text
        chunk = {**self.base, "object": "text_completion",
                 "choices": [self._choice(i, d.text, d.token_ids, self._logprobs(d, offset), d.finish_reason)]}
        if d.usage:
            chunk["usage"] = self._choice_usage(d.usage)
        return [chunk]

    def usage_chunk(self) -> dict:
        return {**self.base, "object": "text_completion", "choices": [], "usage": self.usage()}

    def add(self, i: int, d: TokenDelta) -> None:
        self.texts[i] += d.text
        self.ids[i] += d.token_ids
        self.finish[i] = d.finish_reason or self.finish[i]
        self.usages[i] = d.usage or self.usages[i]
        self._logprobs(d, len(self.texts[i]) - len(d.text), self.logprobs[i])

    def whole(self) -> dict:
        choices = [self._choice(i, self.texts[i], self.ids[i], self.logprobs[i] if self.logprobs[i]["tokens"] else None,
                                self.finish[i]) for i in range(self.n)]
        return {**self.base, "object": "text_completion", "choices": choices, "usage": self.usage()}

    def _logprobs(self, d: TokenDelta, offset: int, into: dict | None = None) -> dict | None:
        if d.logprobs is None:
            return None
        return completion_logprobs(self.tokenizer, d, offset, into)

    @staticmethod
    def _choice(i: int, text: str, ids: list[int], logprobs: dict | None, finish: str | None) -> dict:
        return {"index": i, "text": text, "token_ids": ids, "logprobs": logprobs, "finish_reason": finish}

    @staticmethod
    def _choice_usage(u: Usage) -> dict:
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _completion_logprobs() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def completion_logprobs(tokenizer, d: TokenDelta, offset: int, into: dict | None = None) -> dict:
    """A delta's tokens in OpenAI's completion `logprobs` object (appended to `into`); `offset`: the answer's text
    before this delta."""
    into = into if into is not None else _completion_logprobs()
    token = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str
    tops = d.top_logprobs or [[]] * len(d.token_ids)
    for t, lp, top in zip(d.token_ids, d.logprobs or [], tops):
        into["tokens"].append(token(t))
        into["token_logprobs"].append(lp)
        into["top_logprobs"].append({token(a): v for a, v in top})
        into["text_offset"].append(offset)
    return into


class ChatAnswer(_Answer):
    def __init__(self, tokenizer, model: str, tool_format) -> None:
        super().__init__(tokenizer, model)
        self.tool_format = tool_format  # called at start: the request's format is known once it is rendered

    def start(self, request_id: str, n: int) -> None:
        super().start(request_id, n)
        fmt = self.tool_format()
        self.tools = [ToolCallStream(fmt) if fmt else None for _ in range(n)]
        self.texts, self.finish, self.started = [""] * n, [None] * n, [False] * n
        self.logprobs: list[list[dict]] = [[] for _ in range(n)]

    def chunks(self, i: int, d: TokenDelta) -> list[dict]:
        """The stream chunks one engine delta makes: the role first, then content, tool calls, finish."""
        first = not self.started[i]
        content, calls = self._advance(i, d)
        out = [self._chunk(i, {"role": "assistant", "content": ""}, None)] if first else []
        delta = {"content": content} if content else {}
        if calls:
            delta["tool_calls"] = calls
        logprobs = {"content": self._logprobs(d)} if d.logprobs is not None else None
        if delta or d.finish_reason or logprobs:
            out.append(self._chunk(i, delta, self.finish[i] if d.finish_reason else None, logprobs))
        return out

    def usage_chunk(self) -> dict:
        return {**self.base, "object": "chat.completion.chunk", "choices": [], "usage": self.usage()}

    def add(self, i: int, d: TokenDelta) -> None:
        self._advance(i, d)
        if d.logprobs is not None:
            self.logprobs[i] += self._logprobs(d)

    def whole(self) -> dict:
        choices = []
        for i in range(self.n):
            calls = self.tools[i].calls if self.tools[i] else []
            message = {"role": "assistant", "content": self.texts[i] or (None if calls else "")}
            if calls:
                message["tool_calls"] = calls
            logprobs = {"content": self.logprobs[i]} if self.logprobs[i] else None
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": self.finish[i]})
        return {**self.base, "object": "chat.completion", "choices": choices, "usage": self.usage()}

    def _advance(self, i: int, d: TokenDelta) -> tuple[str, list[dict]]:
        """The content and tool-call deltas this delta makes visible."""
        self.usages[i], self.started[i] = d.usage or self.usages[i], True
        stream = self.tools[i]
        content, calls = stream.add(d.text) if stream else (d.text, [])
        if d.finish_reason and stream:
            rest, more = stream.finish()
            content, calls = content + rest, calls + more
        self.texts[i] += content
        if d.finish_reason:
            self.finish[i] = "tool_calls" if stream and stream.calls else d.finish_reason
        return content, calls

    def _logprobs(self, d: TokenDelta) -> list[dict]:
        return chat_logprobs(self.tokenizer, d)

    def _chunk(self, i: int, delta: dict, finish: str | None, logprobs: dict | None = None) -> dict:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**self.base, "object": "chat.completion.chunk", "choices": [choice]}


def chat_logprobs(tokenizer, d: TokenDelta) -> list[dict]:
    """A delta's tokens as entries of OpenAI's chat `logprobs.content`."""
    def entry(token_id: int, logprob: float) -> dict:
        token = tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    tops = d.top_logprobs or [[]] * len(d.token_ids)
    return [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]}
            for t, lp, top in zip(d.token_ids, d.logprobs or [], tops)]
