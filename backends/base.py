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
    top_logprobs: int = 0  # the most likely alternatives to report with each token's logprob
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was already generated
    repetition_penalty: float = 1.0  # HF's: a seen token's (prompt or output) logit divided by it (times, if < 0)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    # Grammar the answer must follow, vLLM's `structured_outputs`: {"json": schema} ({"json": {}} any JSON
    # object) or {"grammar": EBNF}; enforced by masking the logits each step (backends/engine/structured.py).
    structured: dict | None = None

    def shapes_logits(self) -> bool:
        """True when the logits are changed before sampling (speculative decoding does not verify those)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.structured)


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
    tenant_weight: int = 1  # the tenant's weight in our engine's fair share of seats within a priority class
    # Text upstreams (kind: openai) take the chat messages as they came, and OpenAI parameters our engine has
    # no use for (tools, response_format, logprobs, penalties, ...); token-id backends ignore both.
    messages: list[dict] | None = None
    extra: dict = field(default_factory=dict)
    stream: bool = True  # False: the caller takes the whole answer at once (a text upstream is asked for it so)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (billed cheaper)
    estimated: bool = False  # the backend could not count (an upstream reported no usage): an estimate
    gpu_seconds: float | None = None


@dataclass
class TokenDelta:
    """New text since the last delta. The last delta of a stream has finish_reason and usage set."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    usage: Usage | None = None
    logprobs: list[float] | None = None
    tool_calls: list[dict] | None = None  # OpenAI tool-call deltas (a text upstream's), passed on as they came
    choice_logprobs: dict | None = None  # an upstream's OpenAI `logprobs` object for this delta, passed on
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token: the best alternatives (id, logprob)
    index: int = 0  # which of the request's n choices it belongs to (set where the choices' streams merge)


class Backend(Protocol):
    name: str  # the model name tenants see, e.g. "ferryman-small"

    async def start(self) -> None: ...  # load weights, start the step loop

    async def stop(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def abort(self, request_id: str) -> None: ...


class BackendUnavailable(Exception):
    """No replica could serve the request (all down, breakers open, retries spent), or an upstream turned it away
    for now (HTTP 429 or 5xx, no answer in time): another model may serve it. `status` 429 = rate limited;
    `code` is the error code the tenant sees when no other model serves."""

    def __init__(self, message: str, status: int = 503, retry_after_s: float | None = None,
                 code: str = "model_unavailable"):
        super().__init__(message)
        self.status, self.retry_after_s, self.code = status, retry_after_s, code


class UpstreamAuthFailed(BackendUnavailable):
    """The upstream refused the operator's credentials (HTTP 401/403): the operator's problem, never the tenant's.
    The model is taken out of service until a health probe gets through; other models may serve."""

    def __init__(self, message: str):
        super().__init__(message, 503, None, "upstream_auth_failed")


class BackendRejected(Exception):
    """An upstream refused the request itself (HTTP 4xx other than 401/403/404/408/429): the caller's error. The
    upstream's own error type, code and param go to the tenant as they came."""

    def __init__(self, message: str, status: int = 400, type: str | None = None, code=None, param=None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
