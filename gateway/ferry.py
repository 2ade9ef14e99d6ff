"""A request's life in the gateway: authenticate, admit, route, generate, settle.

Routes stay thin; everything that touches money or limits happens here, in one order:
rate limit, then budget reservation, then work, then settlement in a `finally` so that success,
error, timeout and client disconnect all settle exactly once.
"""
from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import anyio

from backends.base import Backend, BackendUnavailable, GenerationRequest, SamplingParams, TokenDelta, Usage
from billing import Billing, BudgetExceeded, Principal, RateLimited, RateLimiter, Reservation, UnknownPrice
from gateway import metrics
from gateway.config import Settings
from gateway.errors import APIError, invalid
from gateway.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

PRIORITY = {"interactive": 0, "standard": 1, "batch": 2}


@dataclass
class Ticket:
    """An admitted request: it holds a rate-limit slot and a budget reservation until settled."""

    request_id: str
    principal: Principal
    model: str
    route: str  # "small" | "large"
    difficulty: float | None
    request: GenerationRequest
    reservation: Reservation
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    completion_ids: list[int] = field(default_factory=list)
    usage: Usage | None = None
    first_token_at: float | None = None
    cost_micros: int | None = None
    cascade: bool = False  # a small-model first try whose answer may be escalated
    logprobs: list[float] = field(default_factory=list)
    earlier_cost_micros: int = 0  # what an escalated request's small-model try already cost

    def total_cost_micros(self) -> int:
        return (self.cost_micros or 0) + self.earlier_cost_micros


class Ferry:
    def __init__(self, settings: Settings, billing: Billing, limiter: RateLimiter, router,
                 backends: dict[str, Backend], tokenizer, context_len: int):
        self.settings, self.billing, self.limiter, self.router = settings, billing, limiter, router
        self.backends, self.tokenizer, self.context_len = backends, tokenizer, context_len
        self.vocab_size = len(tokenizer)
        # SQLite commits in microseconds, so a thread hop costs more than it saves; a networked ledger's
        # commit waits milliseconds, which must not stall every other request on the event loop.
        self.ledger_in_thread = billing.engine.dialect.name != "sqlite"

    async def ledger(self, fn, *args, **kwargs):
        if self.ledger_in_thread:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    # --- who is asking -------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        return await self.ledger(self.principal_for, authorization)

    def principal_for(self, authorization: str | None) -> Principal:
        """The caller's tenant and key (blocking: it may read the ledger)."""
        key = _bearer(authorization)
        principal = self.billing.authenticate(key) if key else None
        if principal is None:
            raise APIError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return principal

    def check_admin(self, authorization: str | None) -> None:
        key, admin = _bearer(authorization), self.settings.admin_key
        if not (key and admin and hmac.compare_digest(key.encode(), admin.encode())):
            raise APIError(401, "This endpoint needs the admin key.", "invalid_request_error", "invalid_api_key")

    # --- admission -----------------------------------------------------------------------------

    def prompt_ids(self, body: ChatCompletionRequest | CompletionRequest) -> tuple[list[int], str]:
        """Token ids the model sees, and the text the router scores (the last user turn)."""
        if isinstance(body, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
            return self.tokenizer.encode(text, add_special_tokens=False), query
        if isinstance(body.prompt, list):
            if any(not 0 <= t < self.vocab_size for t in body.prompt):
                raise invalid("prompt contains token ids outside the vocabulary", "prompt")
            return list(body.prompt), self.tokenizer.decode(body.prompt)
        ids = [self.tokenizer.bos_token_id] + self.tokenizer.encode(body.prompt, add_special_tokens=False)
        return ids, body.prompt

    def choose(self, principal: Principal, model: str, query: str) -> tuple[str, str, float | None]:
        """(model, route, difficulty): `auto` asks the router (or, in cascade mode, tries small first);
        a named model pins the choice."""
        s = self.settings
        if model == s.small_model or model == s.large_model:
            return model, "small" if model == s.small_model else "large", None
        if model != "auto":
            raise APIError(404, f"The model '{model}' does not exist.", "invalid_request_error", "model_not_found", "model")
        if s.cascade:
            return s.small_model, "cascade-small", None
        score = self.router.score(query)
        threshold = self.router.threshold_for(principal.quality_floor, principal.large_share)
        return (s.large_model, "large", score) if score >= threshold else (s.small_model, "small", score)

    async def admit(self, principal: Principal, body: SamplingFields, prompt_ids: list[int], query: str,
                    pin: tuple[str, str] | None = None) -> Ticket:
        model, route, difficulty = (*pin, None) if pin else self.choose(principal, body.model, query)
        room = self.context_len - len(prompt_ids)
        if room < 1:
            raise invalid(f"This model's maximum context length is {self.context_len} tokens; "
                          f"the prompt has {len(prompt_ids)}.", "messages", )
        max_tokens = body.requested_max_tokens() or min(room, self.settings.default_max_tokens)
        if max_tokens > room:
            raise invalid(f"max_tokens is too large: the prompt has {len(prompt_ids)} tokens and this model's "
                          f"context length is {self.context_len}, so at most {room} may be generated.", "max_tokens")
        request_id = f"req-{uuid.uuid4().hex}"
        rate_headers = await self._admit_rate(principal, len(prompt_ids) + max_tokens)
        try:
            reservation = await self.ledger(self.billing.reserve, principal, request_id, model, len(prompt_ids),
                                            max_tokens)
        except BudgetExceeded as exc:
            await self.limiter.release(principal)
            raise APIError(402, str(exc), "insufficient_quota", "budget_exceeded", headers={"x-should-retry": "false"})
        except UnknownPrice:
            await self.limiter.release(principal)
            raise APIError(503, f"The model '{model}' has no price set; an operator must set one.", "server_error",
                           "model_unpriced")
        except BaseException:
            await self.limiter.release(principal)
            raise
        priority = body.priority or principal.priority
        cascade = route == "cascade-small"
        params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=body.stops(), logprobs=cascade)
        request = GenerationRequest(request_id, prompt_ids, params, PRIORITY.get(priority, 1))
        headers = {**rate_headers, "x-request-id": request_id, "x-ferryman-route": route}
        if difficulty is not None:
            headers["x-ferryman-difficulty"] = f"{difficulty:.4f}"
        return Ticket(request_id, principal, model, route, difficulty, request, reservation, headers, cascade=cascade)

    async def cascade(self, ticket: Ticket, body: SamplingFields, query: str) -> tuple[Ticket, list[TokenDelta] | None]:
        """Run the small model's try to the end; keep its answer, or escalate to the large model when the
        small model's own confidence is low. The try is billed as its own record either way."""
        deltas = [delta async for delta in self.run(ticket)]
        p = ticket.principal
        if not self.router.cascade_escalate(ticket.logprobs, p.quality_floor, p.large_share):
            return ticket, deltas
        large = await self.admit(p, body, ticket.request.prompt_token_ids, query,
                                 pin=(self.settings.large_model, "cascade-large"))
        large.earlier_cost_micros = ticket.cost_micros or 0
        large.headers["x-ferryman-escalated-from"] = ticket.request_id
        return large, None

    async def _admit_rate(self, principal: Principal, tokens: int) -> dict[str, str]:
        try:
            return await self.limiter.admit(principal, tokens)
        except RateLimited as exc:
            headers = {**exc.headers, "retry-after": str(max(1, round(exc.retry_after_s)))}
            raise APIError(429, str(exc), "rate_limit_exceeded", "rate_limit_exceeded", headers=headers)

    # --- work and settlement -------------------------------------------------------------------

    async def run(self, ticket: Ticket) -> AsyncIterator[TokenDelta]:
        """Stream the backend's deltas; settle exactly once however the stream ends."""
        status = "error"
        backend = self.backends[ticket.model]
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                async for delta in backend.generate(ticket.request):
                    self._observe(ticket, delta)
                    yield delta
            status = "ok"
        except asyncio.TimeoutError:
            status = "timeout"
            raise APIError(504, "The request timed out.", "timeout", "timeout")
        except BackendUnavailable as exc:
            raise APIError(503, f"The model is unavailable right now: {exc}", "server_error", "model_unavailable")
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        finally:
            # A disconnect cancels this task, and the cancellation would strike again at every await here:
            # shield the settlement, or the hold and the record would be lost with the client.
            with anyio.CancelScope(shield=True):
                if status != "ok":
                    await _quietly(backend.abort(ticket.request_id))
                await self.settle(ticket, status)

    def _observe(self, ticket: Ticket, delta: TokenDelta) -> None:
        if ticket.first_token_at is None and delta.token_ids:
            ticket.first_token_at = time.perf_counter()
            metrics.TTFT.labels(ticket.route).observe(ticket.first_token_at - ticket.started)
        ticket.completion_ids += delta.token_ids
        ticket.logprobs += delta.logprobs or []
        if delta.usage is not None:
            ticket.usage = delta.usage

    async def settle(self, ticket: Ticket, status: str) -> None:
        usage = ticket.usage or Usage(len(ticket.request.prompt_token_ids), len(ticket.completion_ids))
        latency = time.perf_counter() - ticket.started
        try:
            record = await self.ledger(
                self.billing.settle, ticket.reservation, prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens, latency_ms=latency * 1000, route=ticket.route,
                difficulty=ticket.difficulty, status=status, baseline_model=self.settings.large_model)
            ticket.cost_micros = record.cost_micros
        finally:
            await self.limiter.release(ticket.principal)
        metrics.REQUESTS.labels(ticket.route, status).inc()
        metrics.LATENCY.labels(ticket.route).observe(latency)
        metrics.TOKENS.labels(ticket.route, "prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(ticket.route, "completion").inc(usage.completion_tokens)
        metrics.COST.labels(ticket.model).inc(record.cost_micros / 1e6)


def _bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # the request is already failing; its own error is the one to report
        pass
