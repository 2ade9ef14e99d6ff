"""The OpenAI request bodies an engine replica takes, and what they become: sampling parameters, grammar, prompt.

One set of fields for /v1/completions and /v1/chat/completions, as vLLM's server takes them (including its
extensions `top_k`, `repetition_penalty`, `ignore_eos`, `structured_outputs`, `cache_salt`, and token-id
prompts), so the official `openai` client, the gateway's `kind: openai` and its `kind: replicas` protocol all
speak to the same server.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from backends.base import SamplingParams
from backends.engine import tools as tool_formats
from backends.engine.chat import encode_text, render_chat


class RequestError(ValueError):
    """A request the replica cannot serve as asked: a 400 naming the parameter."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingBody(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    logit_bias: dict[int, float] | None = None
    ignore_eos: bool = False
    response_format: dict | None = None
    structured_outputs: dict | None = None  # vLLM's: {"json": schema} or {"grammar": EBNF}
    priority: int = 1
    cache_salt: str | None = None
    tenant_weight: int = Field(1, ge=1, le=1000)  # the tenant's weight in the fair share of seats (Scheduler)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def params(self, max_tokens: int, logprobs: bool, top_logprobs: int, grammar: dict | None) -> SamplingParams:
        if self.logit_bias and any(not -100 <= b <= 100 for b in self.logit_bias.values()):
            raise RequestError("logit_bias values must lie in [-100, 100]", "logit_bias")
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
            stop=self.stops(), ignore_eos=self.ignore_eos, logprobs=logprobs, top_logprobs=top_logprobs,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, logit_bias=dict(self.logit_bias or {}),
            structured=grammar or self.grammar())

    def grammar(self) -> dict | None:
        """response_format (OpenAI's) or structured_outputs (vLLM's) as the engine's grammar spec."""
        return self.structured_outputs or response_grammar(self.response_format)

    def choice_seed(self, i: int) -> int | None:
        """Choice i of n draws from seed + i: reproducible, and the choices differ."""
        return None if self.seed is None else (self.seed + i + 2**63) % 2**64 - 2**63


class CompletionBody(SamplingBody):
    prompt: list[int] | str
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)  # completions: how many alternatives per token
    public_prefix_len: int = Field(0, ge=0)

    def prompt_ids(self, tokenizer) -> list[int]:
        if isinstance(self.prompt, list):
            return list(self.prompt)
        if tokenizer is None:
            raise RequestError("this replica takes token-id prompts only", "prompt")
        return encode_text(tokenizer, self.prompt)  # special tokens typed in the text stay text

    def sampling(self, room: int) -> SamplingParams:
        asked = self.max_completion_tokens or self.max_tokens
        return self.params(asked or room, self.logprobs is not None, self.logprobs or 0, None)


class ChatBody(SamplingBody):
    messages: list[dict] = Field(min_length=1)
    tools: list[dict] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def tool_format(self, tokenizer) -> tool_formats.ToolFormat | None:
        """The checkpoint's tool-call format when this request offers tools (and does not say "none")."""
        if not self.tools or self.tool_choice == "none":
            return None
        if any(t.get("type") != "function" or "name" not in (t.get("function") or {}) for t in self.tools):
            raise RequestError("tools must be function tools with a name", "tools")
        fmt = tool_formats.tool_format(tokenizer)
        if fmt is None:
            raise RequestError("this model's chat template renders no tools", "tools")
        return fmt

    def prompt_ids(self, tokenizer) -> list[int]:
        if tokenizer is None:
            raise RequestError("this replica has no tokenizer for chat", "messages")
        offered = self.tools if self.tool_choice != "none" else None
        try:
            return render_chat(tokenizer, self.messages, tools=offered)
        except Exception as exc:  # a template's TemplateError, a bad role or part: the messages' fault
            raise RequestError(f"the chat template cannot take these messages: {exc}", "messages") from None

    def sampling(self, room: int, fmt: tool_formats.ToolFormat | None) -> SamplingParams:
        if self.top_logprobs and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
        asked = self.max_completion_tokens or self.max_tokens
        return self.params(asked or room, self.logprobs, self.top_logprobs or 0, self.tool_grammar(fmt))

    def tool_grammar(self, fmt: tool_formats.ToolFormat | None) -> dict | None:
        return tool_grammar(fmt, self.tools, self.tool_choice, self.parallel_tool_calls)


def response_grammar(response_format: dict | None) -> dict | None:
    """OpenAI's response_format as the engine's grammar spec (None: free text)."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json": {}}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise RequestError("response_format.json_schema.schema must be a JSON schema object", "response_format")
        return {"json": schema}
    raise RequestError(f"response_format type {kind!r} is not one of text, json_object, json_schema",
                       "response_format")


def tool_grammar(fmt: tool_formats.ToolFormat | None, tools: list[dict] | None, tool_choice,
                 parallel_tool_calls: bool | None) -> dict | None:
    """tool_choice "required" or a named function: a grammar that admits only calls."""
    if fmt is None or tool_choice in (None, "auto", "none"):
        return None
    offered = tools
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        offered = [t for t in tools if t["function"]["name"] == name]
        if not offered:
            raise RequestError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    parallel = parallel_tool_calls is not False and not isinstance(tool_choice, dict)
    return {"grammar": tool_formats.grammar(fmt, offered, parallel)}
