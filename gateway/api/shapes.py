"""OpenAI's response objects, built from a reply's deltas: a whole answer per choice (`Answer`), chat.completion(.chunk)
and text_completion objects (`ChatShape`, `CompletionShape`), and the usage block with the request's cost."""
from __future__ import annotations

import time

from backends.base import TokenDelta
from gateway.ferry import Reply, Ticket


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


def usage_of(reply: Reply) -> dict:
    """The usage block: tokens as billed, and what the request cost (every try)."""
    u = reply.ticket.final_usage()
    prompt, completion = u.prompt_tokens, u.completion_tokens
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
             "cost_usd": float(usd(reply.cost_micros()))}
    return {**usage, "estimated": True} if u.estimated else usage  # counted by us: the upstream sent no usage


def usd(micros: int | None) -> str:
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
