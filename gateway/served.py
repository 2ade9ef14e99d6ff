"""A catalog model as the gateway serves it: its backend, and its own way of counting and rendering a prompt.

No tokenizer is shared between models. Token-id models (our engine, our replicas) get the prompt rendered with
their checkpoint's own tokenizer and chat template. Text upstreams (kind: openai) get the messages as they came;
their prompt is only estimated here (an upper bound, for the budget hold), the upstream's own count is billed.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from jinja2 import TemplateError

from backends.base import TokenDelta, Usage
from backends.engine.chat import encode_text, render_chat
from backends.engine.tools import ToolCallStream, ToolFormat, tool_format
from backends.server_answer import chat_logprobs, completion_logprobs
from backends.server_api import RequestError, response_grammar, tool_grammar
from gateway.catalog import Catalog, EngineEntry, Entry, OpenAIEntry
from gateway.config import ROOT
from gateway.errors import APIError, invalid
from gateway.public_prefixes import public_heads
from gateway.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("ferryman")

# What a text upstream gets, each only when the request sent it (or the catalog's `defaults:` set it): an
# upstream's own defaults are not ours to replace. Token-id models (our engine, our replicas) honour the same
# OpenAI parameters themselves: penalties and logprobs in the sampler, response_format and forced tool calls as a
# grammar, tools through the checkpoint's chat template (a template that renders no tools refuses them).
PASS_THROUGH = ("tools", "response_format", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                "logit_bias", "repetition_penalty", "top_k", "tool_choice", "parallel_tool_calls", "user", "max_tokens", "max_completion_tokens",
                "temperature", "top_p", "seed", "stop")


@dataclass
class Prompt:
    token_ids: list[int]  # empty for a text upstream
    query: str  # what the router scores and an opted-in tenant's record keeps: the last user turn
    messages: list[dict] | None = None  # the chat as it goes to a text upstream
    tokens: int | None = None  # counted (the token ids), or for a text upstream an upper bound
    estimated: bool = False
    tools: list[dict] | None = None  # the tools a text upstream is offered
    sampling: dict = field(default_factory=dict)  # token-id models: SamplingParams fields beyond the basic ones
    tool_format: ToolFormat | None = None  # token-id models offered tools: how their calls are parsed
    logprobs: bool = False  # token-id models: the answer carries OpenAI's logprobs objects (chat's or completion's)
    chat: bool = False

    def __post_init__(self):
        if self.tokens is None:
            self.tokens = len(self.token_ids)


class ServedModel:
    def __init__(self, entry: Entry, backend, tokenizer=None, context_length: int | None = None):
        self.entry, self.backend, self.tokenizer = entry, backend, tokenizer
        self.name, self.text_only = entry.name, entry.kind == "openai"
        self.context_length = entry.context_length or context_length
        self.slots = asyncio.Semaphore(entry.max_concurrency) if entry.max_concurrency else None
        self.public_heads: list[list[int]] = []  # token ids of the catalog's public prefixes (token-id models)
        # No token spells more characters than the longest vocabulary entry, so a text longer than
        # context x that cannot fit: it is refused before seconds of CPU go into tokenizing it.
        self.longest_token = max(map(len, tokenizer.get_vocab()), default=1) if hasattr(tokenizer, "get_vocab") else None

    def refusal(self, body) -> APIError | None:
        """A 400 naming the first parameter this model cannot honour; None when it can honour them all."""
        if self.text_only:
            if isinstance(body, CompletionRequest):
                return invalid(f"The model '{self.name}' serves chat completions only (/v1/chat/completions).",
                               "model")
            if body.n > 1:
                return invalid(f"The model '{self.name}' answers one choice per request (n = 1).", "n")
            return self._image_refusal(body)
        if self._offered_tools(body) and tool_format(self.tokenizer) is None:
            return invalid(f"The model '{self.name}' cannot call tools: its chat template renders none.", "tools")
        if getattr(body, "tool_choice", None) not in (None, "none", "auto") and not self._offered_tools(body):
            return invalid("tool_choice needs tools.", "tool_choice")
        return self._image_refusal(body)

    @staticmethod
    def _offered_tools(body) -> list[dict] | None:
        return getattr(body, "tools", None) if getattr(body, "tool_choice", None) != "none" else None

    def _image_refusal(self, body) -> APIError | None:
        if self.entry.vision or not isinstance(body, ChatCompletionRequest):
            return None
        i = next((i for i, m in enumerate(body.messages) if m.has_images()), None)
        return None if i is None else invalid(
            f"The model '{self.name}' takes text parts only; image parts need a vision model.", f"messages.{i}.content")

    def prompt(self, body) -> Prompt:
        self._refuse_certainly_too_long(body)
        if not self.text_only and any(not 0 <= t < len(self.tokenizer) for t in body.logit_bias or ()):
            raise invalid(f"logit_bias names token ids outside this model's vocabulary (0 to {len(self.tokenizer) - 1}).",
                          "logit_bias")
        if isinstance(body, ChatCompletionRequest):
            return self._chat(body)
        if isinstance(body.prompt, str):
            prompt = Prompt(encode_text(self.tokenizer, body.prompt), body.prompt)
        elif any(not 0 <= t < len(self.tokenizer) for t in body.prompt):
            raise invalid("prompt contains token ids outside the vocabulary", "prompt")
        else:
            prompt = Prompt(list(body.prompt), self.tokenizer.decode(body.prompt))
        prompt.sampling = {**_sampling(body), "top_logprobs": body.logprobs or 0}
        prompt.logprobs = body.logprobs is not None
        return prompt

    def _refuse_certainly_too_long(self, body) -> None:
        if self.text_only or not self.context_length or not self.longest_token:
            return
        text = (sum(len(m.text()) for m in body.messages) if isinstance(body, ChatCompletionRequest)
                else len(body.prompt) if isinstance(body.prompt, str) else 0)
        if text > self.context_length * self.longest_token:
            at_least = text // self.longest_token
            raise invalid(f"This model's maximum context length is {self.context_length} tokens; the prompt has "
                          f"at least {at_least}.", "messages" if isinstance(body, ChatCompletionRequest) else "prompt")

    def _chat(self, body: ChatCompletionRequest) -> Prompt:
        query = last_user_turn(body)
        if self.text_only:
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
            return Prompt([], query, messages, self._upper_bound(messages, body.tools), estimated=True, tools=body.tools)
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in body.messages]
        tools = self._offered_tools(body)
        try:
            prompt = Prompt(render_chat(self.tokenizer, messages, tools=tools), query)
        except (ValueError, TemplateError) as exc:  # a role or part this checkpoint's template cannot take
            raise invalid(f"The model '{self.name}' cannot take these messages: {exc}", "messages") from None
        prompt.tool_format = tool_format(self.tokenizer) if tools else None
        prompt.logprobs, prompt.chat = bool(body.logprobs), True
        try:
            grammar = (tool_grammar(prompt.tool_format, tools, body.tool_choice, body.parallel_tool_calls)
                       or response_grammar(body.response_format))
        except RequestError as exc:
            raise invalid(str(exc), exc.param) from None
        prompt.sampling = {**_sampling(body), "top_logprobs": body.top_logprobs or 0, "structured": grammar}
        return prompt

    async def answer(self, prompt: Prompt, deltas: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenDelta]:
        """A token-id model's deltas (one choice's) as OpenAI answers them: tool calls parsed out of the text in
        the checkpoint's format and streamed as they are written, logprobs as OpenAI's chat or completion objects (as our replicas give them)."""
        calls = ToolCallStream(prompt.tool_format) if prompt.tool_format else None
        offset = 0  # a completion's text so far: each token's text_offset
        async for delta in deltas:
            if prompt.logprobs and delta.logprobs is not None and delta.token_ids:
                delta.choice_logprobs = ({"content": chat_logprobs(self.tokenizer, delta)} if prompt.chat
                                         else completion_logprobs(self.tokenizer, delta, offset))
            offset += len(delta.text)
            if calls is not None:
                delta.text, found = calls.add(delta.text)
                if delta.finish_reason:
                    rest, more = calls.finish()
                    delta.text, found = delta.text + rest, found + more
                    delta.finish_reason = "tool_calls" if calls.calls else delta.finish_reason
                delta.tool_calls = found or None
            yield delta

    def _upper_bound(self, messages: list[dict], tools: list[dict] | None) -> int:
        """The budget hold's prompt: at most one token per byte (byte-level BPE never does worse) of every text the
        upstream renders (contents, tool calls, tools), the chat format's few per turn, and room for a template's
        own preamble (a system prompt the upstream adds). With the catalog's tokenizer, at least the prompt as its
        chat template renders it, which is what the bill counts: a template's long preamble (tool instructions,
        a default system prompt) is then in the hold however long it is."""
        size = sum(len(_text(m).encode()) for m in messages)
        bound = size + 8 * len(messages) + TEMPLATE_ALLOWANCE + (len(json.dumps(tools).encode()) if tools else 0)
        if getattr(self.tokenizer, "chat_template", None):
            bound = max(bound, self.count_prompt(messages, tools))
        return bound

    def count_usage(self, prompt: Prompt, completion: str, calls: list[str]) -> Usage:
        """A text upstream's tokens when it reported none: the same rule however the request ended (finished,
        cancelled, failed mid-way). With the catalog's `tokenizer`: the messages rendered by its chat template
        with the tools, and the answer's text and tool calls, counted; without: an estimate (count())."""
        return Usage(self.count_prompt(prompt.messages or [], prompt.tools),
                     self.count(completion + "".join(calls)), 0, estimated=True)  # however the deltas split it

    def count_prompt(self, messages: list[dict], tools: list[dict] | None) -> int:
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{**m, "content": _content(m)} for m in messages]
            try:
                return len(self.tokenizer.apply_chat_template(chat, tools=tools, add_generation_prompt=True,
                                                              tokenize=True, return_dict=False))
            except (ValueError, TypeError, KeyError, AttributeError, TemplateError):
                pass  # a message or tool this template cannot take: counted as text below
        text = "".join(map(_text, messages)) + (json.dumps(tools) if tools else "")
        return self.count(text) + PER_TURN * len(messages)

    def count(self, text: str) -> int:
        """Tokens of a text: the catalog's tokenizer when named, else one per four bytes, rounded up (English text
        in BPE vocabularies runs about four bytes a token)."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return -(-len(text.encode()) // 4)

    def with_defaults(self, body):
        """The request with the catalog's `defaults:` for the sampling parameters it did not send."""
        unset = {k: v for k, v in self.entry.defaults.model_dump(exclude_none=True).items()
                 if k not in body.model_fields_set}
        return body.model_copy(update=unset) if unset else body

    def tenant_weight(self, tenant_name: str) -> int:
        """The tenant's weight in our engine's fair share of seats (an upstream schedules by its own rules)."""
        return getattr(self.entry, "tenant_weights", {}).get(tenant_name, 1)

    def extra(self, body) -> dict:
        """The OpenAI parameters a text upstream gets: those the request sent, as they came; and the model's
        `max_output_tokens` as max_tokens when the request named no limit."""
        if not self.text_only:
            return {}
        sent = body.model_fields_set
        extra = {k: v for k in PASS_THROUGH if k in sent and (v := getattr(body, k, None)) is not None}
        if self.entry.max_output_tokens and body.requested_max_tokens() is None:
            extra["max_tokens"] = self.entry.max_output_tokens
        return extra

    @contextlib.asynccontextmanager
    async def slot(self):
        """Hold one of the model's `max_concurrency` places for the request (none: unlimited)."""
        if self.slots is None:
            yield
            return
        async with self.slots:
            yield


TEMPLATE_ALLOWANCE = 64  # tokens a chat template may add on its own (a default system prompt): in the hold
PER_TURN = 4  # tokens a chat format adds per message (role markers), when no tokenizer renders it


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def _text(message: dict) -> str:
    """Every text of a message the upstream reads: its content, and the names and arguments of its tool calls."""
    calls = [c.get("function") or {} for c in message.get("tool_calls") or () if isinstance(c, dict)]
    return _content(message) + "".join(f"{f.get('name') or ''}{f.get('arguments') or ''}" for f in calls)


def _sampling(body) -> dict:
    return {"presence_penalty": body.presence_penalty or 0.0, "frequency_penalty": body.frequency_penalty or 0.0,
            "logit_bias": dict(body.logit_bias or {}), "repetition_penalty": body.repetition_penalty or 1.0,
            "top_k": body.top_k if body.top_k is not None else -1}


def last_user_turn(body: ChatCompletionRequest) -> str:
    return next((m.text() for m in reversed(body.messages) if m.role == "user"), body.messages[-1].text())


def served_model(entry: Entry, catalog: Catalog, backend=None, tokenizer=None) -> ServedModel:
    """The entry's backend and tokenizer, built from the catalog unless a test injected them."""
    if isinstance(entry, OpenAIEntry):
        from backends.openai_upstream import OpenAIUpstream

        counter = _tokenizer(entry.tokenizer) if entry.tokenizer else None
        backend = backend or OpenAIUpstream(
            entry.name, entry.base_url, api_key=entry.api_key(), upstream_model=entry.upstream_model,
            timeout_s=entry.timeout_s, connect_timeout_s=entry.connect_timeout_s,
            first_token_timeout_s=entry.first_token_timeout_s, max_connections=entry.max_concurrency or 256,
            health_path=entry.health_path, health_interval_s=entry.health_interval_s)
        return ServedModel(entry, backend, counter)
    checkpoint = _local(entry.path if isinstance(entry, EngineEntry) else entry.tokenizer)
    if backend is None:
        backend = _engine(entry, catalog) if isinstance(entry, EngineEntry) else _replicas(entry)
    tokenizer = tokenizer or getattr(backend, "tokenizer", None) or _tokenizer(checkpoint)
    model = ServedModel(entry, backend, tokenizer, _context_length(checkpoint))
    model.public_heads = public_heads(tokenizer, catalog.public_prefixes)
    return model


def _engine(entry: EngineEntry, catalog: Catalog):
    """An in-process engine; with idle_unload_s set it loads on first use and unloads when idle."""
    from backends.engine import EngineBackend, EngineConfig

    draft = entry.speculation not in (None, "ngram")
    config = EngineConfig(model=str(_local(entry.path)), name=entry.name, quantization=entry.quantization,
                          speculative_method="draft" if draft else entry.speculation,
                          speculative_model=str(_local(catalog.model(entry.speculation).path)) if draft else None)

    def load():
        log.info("loading %s from %s", entry.name, entry.path)
        return EngineBackend(entry.name, config)

    if entry.idle_unload_s is None:
        return load()
    from backends.idle import ScaleToZero

    return ScaleToZero(entry.name, load, entry.idle_unload_s)


def _replicas(entry):
    from backends.remote import RemoteBackend

    return RemoteBackend(entry.name, entry.urls, connect_timeout_s=entry.connect_timeout_s,
                         read_timeout_s=min(entry.first_token_timeout_s, entry.timeout_s),
                         inter_token_timeout_s=entry.inter_token_timeout_s)


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_local(path))


def _local(path: Path) -> Path:
    """A relative path from the working directory, else from the repository (so `models/small` works anywhere)."""
    return path if path.is_absolute() or path.exists() else ROOT / path


def _context_length(checkpoint: Path) -> int | None:
    """The context the engine serves: a sliding-window checkpoint is capped at its window (see families)."""
    from backends.engine.models.families import check_context

    config = checkpoint / "config.json"
    if not config.exists():
        return None
    cfg = json.loads(config.read_text())
    try:
        return check_context(cfg, None)
    except ValueError:  # a tokenizer-only directory of a family our engine does not run: its own limit
        return int(cfg.get("max_position_embeddings", 2048))
