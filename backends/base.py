"""The one small protocol every backend speaks: a generation request in, a stream of token deltas out.

Backends know nothing of tenants or money; the gateway owns those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 1  # 0 interactive, 1 standard, 2 batch: lower is served first
    # Prefix-cache partition (the gateway sets the tenant): cached blocks are shared only within one salt, so
    # no tenant can observe another's prompts through cached tokens, cost or latency.
    cache_salt: str | None = None
    public_prefix_len: int = 0  # leading prompt tokens an operator marked public: shared across salts


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (billed cheaper)


@dataclass
class TokenDelta:
    """New text since the last delta. The last delta of a stream has finish_reason and usage set."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    usage: Usage | None = None
    logprobs: list[float] | None = None


class Backend(Protocol):
    name: str  # the model name tenants see, e.g. "ferryman-small"

    async def start(self) -> None: ...  # load weights, start the step loop

    async def stop(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def abort(self, request_id: str) -> None: ...


class BackendUnavailable(Exception):
    """No replica could serve the request (all down, breakers open, retries spent)."""
