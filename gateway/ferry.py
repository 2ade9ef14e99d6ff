"""A request's life in the gateway: authenticate, route, admit, generate, settle.

Routes stay thin; everything that touches money or limits happens here, in one order:
rate limit, then budget reservation, then work, then settlement in a `finally` so that success,
error, timeout and client disconnect all settle exactly once. Which models may serve, in which order, is the route
group's policy's plan (gateway/routing.py, gateway/policies/); Ferry runs the plan (`complete`) and, as a judged try
settles, asks the policy whether its answer stands (`Policy.on_result`: the cascade). Each model renders and counts
its own prompt (gateway/served.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from dataclasses import dataclass, field
from typing import AsyncIterator

import anyio

from backends.base import BackendRejected, BackendUnavailable, GenerationRequest, SamplingParams, TokenDelta, Usage
from backends.server import fan_out
from billing import Billing, BudgetExceeded, Principal, RateLimited, RateLimiter, Reservation, UnknownPrice
from billing.admins import PREFIX as ADMIN_PREFIX
from billing import rules
from billing.audit import Actor
from billing.pricing import usd
from gateway import metrics, tracing
from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.errors import APIError, invalid, outage
from gateway.public_prefixes import public_prefix_len
from gateway.policies import Plan
from gateway.routing import ModelUnavailable, Routing
from gateway.schemas import ChatCompletionRequest, SamplingFields
from gateway.served import Prompt, ServedModel, last_user_turn

log = logging.getLogger("ferryman")
route_log = logging.getLogger("ferryman.routing")  # a plan's fallbacks and escalations, under their own name
PRIORITY = {"interactive": 0, "standard": 1, "batch": 2}
ENV_ADMIN = Actor("env:FERRYMAN_ADMIN_KEY", "admin")
INLINE_BYTES = 32 * 1024  # inputs larger than this are rendered and scored off the event loop
SETTLE_RETRY_S = 15 * 60  # a settlement the ledger missed is retried this long (then the reaper frees the hold)


@dataclass
class Tally:
    """A try's deltas, counted as they pass (`add`): what it is billed by when its backend reports no usage, and
    the log-probabilities its policy judges it by."""

    completion_tokens: int = 0  # for a stream that ends without usage
    choice_tokens: Counter = field(default_factory=Counter)  # likewise, per choice
    texts: list[str] = field(default_factory=list)  # a text upstream's answer, counted if it reports no usage
    calls: list[str] = field(default_factory=list)  # and its tool calls' names and arguments
    named: set = field(default_factory=set)  # (choice, call) whose name is counted: once, though a server repeats it
    usages: dict[int, Usage] = field(default_factory=dict)  # per choice, as its backend reported it
    logprobs: list[float] = field(default_factory=list)

    def add(self, delta: TokenDelta, texts: bool) -> None:
        """texts: keep the answer's text and tool calls (a messages prompt, which a text upstream may not count)."""
        tokens = len(delta.token_ids) or bool(delta.text)
        self.completion_tokens += tokens
        self.choice_tokens[delta.index] += tokens
        if texts:
            self.texts.append(delta.text)
            for i, call in enumerate(delta.tool_calls or ()):
                function = call.get("function") or {} if isinstance(call, dict) else {}
                key = (delta.index, call.get("index", i) if isinstance(call, dict) else i)
                # llama-cpp-python repeats the name in every delta of a streamed call: counted each time, a 48-token
                # call was billed 241 completion tokens
                name = "" if key in self.named else function.get("name") or ""
                self.named.add(key)
                self.calls += [name, function.get("arguments") or ""]
        if delta.logprobs:
            self.logprobs += delta.logprobs
        if delta.usage is not None:
            self.usages[delta.index] = delta.usage


@dataclass
class Ticket:
    """An admitted request: it holds a rate-limit slot and a budget reservation until settled."""

    request_id: str
    principal: Principal
    model: str
    route: str  # the label it is recorded and measured under (Plan.route): the model's name, "cascade-<model>"
    request: GenerationRequest
    reservation: Reservation
    prompt: Prompt
    plan: Plan
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    n: int = 1  # choices: one generation request each, `request` with ids and seeds per choice (choice_requests)
    served: ServedModel | None = None
    tally: Tally = field(default_factory=Tally)
    first_token_at: float | None = None
    cost_micros: int | None = None
    then: Plan | None = None  # a judged try whose answer the policy did not keep: the plan that answers instead
    outcome: str | None = None  # the record's status once settled: ok, error, timeout, cancelled, ...
    trace: tracing.Try | None = None  # its backend and first-token spans, once it runs

    def final_usage(self) -> Usage:
        """The backend's own count; else, for token ids, the ids as they went; for a text upstream that reported
        none, its model's counting rule (the same whether the request finished, failed or was cancelled). With n
        choices: the prompt once (as OpenAI and vLLM count it), every choice's completion tokens."""
        t = self.tally
        if not t.usages and self.prompt.messages is not None and self.served is not None:
            t.usages[0] = self.served.count_usage(self.prompt, "".join(t.texts), t.calls)
        if not t.usages:
            return Usage(self.prompt.tokens, t.completion_tokens, estimated=self.prompt.estimated)
        first = t.usages[min(t.usages)]
        completion = sum(t.usages[i].completion_tokens if i in t.usages else t.choice_tokens[i]
                         for i in range(self.n))
        seconds = [u.gpu_seconds for u in t.usages.values() if u.gpu_seconds is not None]
        estimated = any(u.estimated for u in t.usages.values())
        return Usage(first.prompt_tokens, completion, first.cached_tokens, estimated, sum(seconds) if seconds else None)

    def choice_requests(self) -> list[GenerationRequest]:
        """One generation request per choice: choice i draws from seed + i (reproducible, and the choices differ)."""
        if self.n == 1:
            return [self.request]
        r = self.request
        return [dataclasses.replace(r, request_id=f"{r.request_id}-{i}", params=dataclasses.replace(
            r.params, seed=None if r.params.seed is None else (r.params.seed + i + 2**63) % 2**64 - 2**63))
            for i in range(self.n)]


@dataclass(frozen=True)
class Reply:
    """The try that answers a request, its deltas (the first one already arrived), and the tries before it."""

    ticket: Ticket
    deltas: AsyncIterator[TokenDelta]
    fallback_from: tuple[str, ...] = ()  # models of its plan that were unavailable before it
    earlier: tuple[Ticket, ...] = ()  # settled tries whose answers the policy did not keep (billed too)

    def headers(self) -> dict[str, str]:
        headers = dict(self.ticket.headers)
        if self.fallback_from:
            headers["x-ferryman-fallback-from"] = ",".join(self.fallback_from)
        if self.earlier:
            headers["x-ferryman-escalated-from"] = self.earlier[-1].request_id
        return headers

    def cost_micros(self) -> int:
        """What the request cost, every try together (known once its stream ended)."""
        return sum(t.cost_micros or 0 for t in (*self.earlier, self.ticket))


class Ferry:
    def __init__(self, settings: Settings, billing: Billing, limiter: RateLimiter, router,
                 models: dict[str, ServedModel], catalog: Catalog, tracer=tracing.NOOP, drain=None):
        self.settings, self.billing, self.limiter, self.tracer = settings, billing, limiter, tracer
        self.drain = drain  # gateway.drain.Drain: a stream cut by a restart is the gateway's failure
        self._settling: set[asyncio.Task] = set()  # settlements retried until the ledger answers
        self.models, self.catalog = models, catalog
        self.backends = {name: m.backend for name, m in models.items()}
        self.routing = Routing(catalog, router, models, settings.metrics_tenants)
        self._later: set[asyncio.Task] = set()  # ledger calls retried in the background (`finish_later`)

    async def ledger(self, fn, *args, **kwargs):
        """A blocking call on the ledger's database: inline on SQLite, else in a thread (Billing.blocking)."""
        return await self.billing.blocking(fn, *args, **kwargs)

    # --- who is asking -------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        with tracing.span(self.tracer, "ferryman.auth") as span:
            principal = await self._authenticate(authorization)
            span.set_attribute("ferryman.tenant", principal.tenant_name)
            return principal

    async def _authenticate(self, authorization: str | None) -> Principal:
        # A cached key (the usual case) is answered on the loop: only a database read is worth a thread hop.
        key = _bearer(authorization)
        if key and not self.billing.keys.cached(key):
            return await self.ledger(self.principal_for, authorization)
        return self.principal_for(authorization)

    def principal_for(self, authorization: str | None) -> Principal:
        """The caller's tenant and key (blocking: it may read the ledger)."""
        key = _bearer(authorization)
        principal = self.billing.authenticate(key) if key else None
        if principal is None:
            raise APIError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return principal

    def admin_actor(self, authorization: str | None) -> Actor:
        """Who holds this admin key: FERRYMAN_ADMIN_KEY (the bootstrap admin, never stored), or a person's key in
        the ledger (read on every call, so a revocation holds at once on every replica). Blocking."""
        if bearer_is(authorization, self.settings.admin_key):
            return ENV_ADMIN
        key = _bearer(authorization)
        actor = self.billing.admins.authenticate(key) if key and key.startswith(ADMIN_PREFIX) else None
        if actor is None:
            raise APIError(401, "This endpoint needs an admin key.", "invalid_request_error", "invalid_api_key")
        return actor

    # --- routing and admission -----------------------------------------------------------------

    async def complete(self, principal: Principal, body: SamplingFields) -> Reply:
        """The try that answers: the first available model of the plan; a judged try's answer only if its policy
        keeps it (a cascade's cheaper tier, when sure), else the policy's next plan's."""
        size = _size(body)
        with tracing.span(self.tracer, "ferryman.route") as span:
            plan = await _off_loop(size, self.routing.plan, principal, body, self._query(body))
            span.set_attributes(tracing.attributes(route_group=plan.group, difficulty=plan.difficulty,
                                                   models=plan.order, router=plan.router))
        earlier: tuple[Ticket, ...] = ()
        while True:
            reply = await self._first_available(principal, body, size, plan, earlier)
            ticket = reply.ticket
            if ticket.model not in plan.judged:
                return reply
            kept = [delta async for delta in reply.deltas]  # its end settles it, and the policy judges it (settle)
            if ticket.then is None:
                return dataclasses.replace(reply, deltas=_replay(kept))
            route_log.warning("request %s escalates from %s to %s: the %s policy did not keep its answer",
                              ticket.request_id, ticket.model, ticket.then.order[0], plan.policy)
            plan, earlier = ticket.then, (*earlier, ticket)

    async def _first_available(self, principal: Principal, body: SamplingFields, size: int, plan: Plan,
                               earlier: tuple[Ticket, ...]) -> Reply:
        failed: list[str] = []
        for i, model in enumerate(plan.order):
            try:
                ticket, deltas = await self._attempt(principal, body, size, plan, model)
            except ModelUnavailable as exc:
                failed.append(model)
                if i == len(plan.order) - 1:
                    raise
                route_log.warning("model %s unavailable (%s); the request falls back to %s", model, exc.message,
                                  plan.order[i + 1])
                continue
            return Reply(ticket, deltas, tuple(failed), earlier)

    async def _attempt(self, principal: Principal, body: SamplingFields, size: int, plan: Plan, model: str):
        served = self.models[model]
        asked = served.with_defaults(body)
        with tracing.span(self.tracer, "ferryman.admit", model=model):
            prompt = await _off_loop(size, served.prompt, asked)
            ticket = await self.admit(principal, asked, served, prompt, plan, plan.route(model), model in plan.judged)
        return ticket, await self.start(ticket)

    def _query(self, body) -> str:
        """The text the router scores: the last user turn, or the completion prompt."""
        if isinstance(body, ChatCompletionRequest):
            return last_user_turn(body)
        if isinstance(body.prompt, str):
            return body.prompt
        return ""  # token ids mean something only to one model's tokenizer: nothing to score

    async def admit(self, principal: Principal, body: SamplingFields, served: ServedModel, prompt: Prompt, plan: Plan,
                    route: str, logprobs: bool = False) -> Ticket:
        max_tokens = self._max_tokens(body, served, prompt)
        request_id = f"req-{uuid.uuid4().hex}"
        rate_headers = await self._admit_rate(principal, prompt.tokens + max_tokens * body.n)
        try:  # n choices may each generate max_tokens; the prompt is billed once
            with tracing.span(self.tracer, "ferryman.ledger.reserve") as span:
                reservation = await self.billing.ledger.reserve(principal, request_id, served.name, prompt.tokens,
                                                                max_tokens * body.n)
                span.set_attribute("ferryman.reserved_micros", reservation.amount_micros)
        except BudgetExceeded as exc:
            await self.limiter.release(principal)
            # Spent: no retry helps. Only held by requests in flight: the same request fits once they settle.
            retry = ({"x-should-retry": "true", "retry-after": str(exc.retry_after_s)} if exc.retryable
                     else {"x-should-retry": "false"})
            raise APIError(402, str(exc), "insufficient_quota", "budget_held" if exc.retryable else "budget_exceeded",
                           headers=retry)
        except UnknownPrice:
            await self.limiter.release(principal)
            raise APIError(503, f"The model '{served.name}' has no price set; an operator must set one.",
                           "server_error", "model_unpriced")
        except BaseException as exc:
            await self.limiter.release(principal)
            if outage(exc):  # the hold may have been taken after all: release it once the ledger answers
                self.finish_later(lambda: self.billing.ledger.abandon(request_id))
            raise
        params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=body.stops(), logprobs=logprobs or prompt.logprobs,
                                **prompt.sampling)
        request = GenerationRequest(request_id, prompt.token_ids, params, PRIORITY.get(body.priority or principal.priority, 1),
                                    cache_salt=f"t{principal.tenant_id}", messages=prompt.messages,
                                    public_prefix_len=public_prefix_len(prompt.token_ids, served.public_heads),
                                    extra=served.extra(body), stream=body.stream,
                                    tenant_weight=served.tenant_weight(principal.tenant_name))
        headers = {**rate_headers, "x-request-id": request_id, "x-ferryman-route": route, "x-ferryman-model": served.name}
        if plan.difficulty is not None:
            headers["x-ferryman-difficulty"] = f"{plan.difficulty:.4f}"
            headers["x-ferryman-router"] = plan.router
        if plan.unfamiliar:
            headers["x-ferryman-unfamiliar"] = "true"
        return Ticket(request_id, principal, served.name, route, request, reservation, prompt, plan,
                      headers, served=served, n=body.n)

    def _max_tokens(self, body: SamplingFields, served: ServedModel, prompt: Prompt) -> int:
        asked, context = body.requested_max_tokens(), served.context_length
        default = served.entry.max_output_tokens or self.settings.default_max_tokens
        if context is None:  # an upstream of unknown context length: it says so itself when the prompt is too long
            return asked or default
        room = context - prompt.tokens
        if room < 1 and not prompt.estimated:
            raise invalid(f"This model's maximum context length is {context} tokens; the prompt has "
                          f"{prompt.tokens}.", "messages")
        if asked and asked > room and not prompt.estimated:
            raise invalid(f"max_tokens is too large: the prompt has {prompt.tokens} tokens and this model's "
                          f"context length is {context}, so at most {room} may be generated.", "max_tokens")
        return asked or max(1, min(room, default))

    async def _admit_rate(self, principal: Principal, tokens: int) -> dict[str, str]:
        try:
            return await self.limiter.admit(principal, tokens)
        except RateLimited as exc:
            headers = {**exc.headers, "retry-after": str(max(1, round(exc.retry_after_s)))}
            raise APIError(429, str(exc), "rate_limit_exceeded", "rate_limit_exceeded", headers=headers)

    # --- work and settlement -------------------------------------------------------------------

    async def start(self, ticket: Ticket) -> AsyncIterator[TokenDelta]:
        """Run the model until its first delta, so that a model unavailable from the start can be passed over
        (and the response's headers can say which model serves)."""
        deltas = self.run(ticket)
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            return _empty()
        return _prepend(first, deltas)

    async def run(self, ticket: Ticket) -> AsyncIterator[TokenDelta]:
        """Stream the backend's deltas; settle exactly once however the stream ends."""
        status = "error"
        served = self.models[ticket.model]
        ticket.trace = tracing.start(self.tracer, model=ticket.model, route=ticket.route, request_id=ticket.request_id)
        deadline = asyncio.get_running_loop().time() + served.entry.timeout_s
        try:
            async with served.slot():
                async for delta in _until(deadline, _generate(served, ticket)):
                    self._observe(ticket, delta)
                    yield delta
            status = "ok"
        except TimeoutError:
            status = "timeout"
            if ticket.first_token_at is None:
                raise ModelUnavailable(ticket.model, "no answer in time") from None
            raise APIError(504, "The request timed out.", "timeout", "timeout") from None
        except BackendUnavailable as exc:
            status = "unavailable"
            if ticket.first_token_at is None:
                raise ModelUnavailable(ticket.model, str(exc), exc.status, exc.retry_after_s, exc.code) from None
            raise APIError(503, f"The model is unavailable right now: {exc}", "server_error", "model_unavailable")
        except BackendRejected as exc:
            status = "rejected"
            # The upstream's own error object, as it came: the request is at fault, and the upstream says why.
            raise APIError(exc.status, exc.message, exc.type or "invalid_request_error", exc.code or "upstream_refused",
                           exc.param) from None
        except ValueError as exc:  # the engine refused the request (e.g. a stop or seed it cannot take)
            status = "rejected"
            raise invalid(str(exc)) from None
        except (asyncio.CancelledError, GeneratorExit):
            # The client hung up (it pays for what was generated), or a restart cut the stream (free, like any
            # failure of ours: the client got an error event).
            status = "error" if self.drain and self.drain.past_deadline() else "cancelled"
            raise
        finally:
            # A disconnect cancels this task, and the cancellation would strike again at every await here:
            # shield the settlement, or the hold and the record would be lost with the client.
            with anyio.CancelScope(shield=True):
                if status != "ok":
                    for request in ticket.choice_requests():
                        await _quietly(served.backend.abort(request.request_id))
                ticket.trace.end(status)
                with ticket.trace.settling() as span:
                    await self.settle(ticket, status)
                    span.set_attributes(tracing.attributes(outcome=status, cost_micros=ticket.cost_micros))

    def finish_later(self, call, tries: int = 600) -> None:
        """Retry a ledger call (idempotent) every second until the ledger answers; past that the reaper settles
        what is left when the hold expires."""
        async def retry():
            for _ in range(tries):
                try:
                    return await call()
                except Exception as exc:
                    if not outage(exc):
                        raise
                await asyncio.sleep(1.0)

        task = asyncio.create_task(retry())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _observe(self, ticket: Ticket, delta: TokenDelta) -> None:
        if ticket.first_token_at is None and (delta.token_ids or delta.text or delta.tool_calls):
            ticket.first_token_at = time.perf_counter()
            ticket.trace.first_token()
            metrics.series(metrics.TTFT, ticket.route).observe(ticket.first_token_at - ticket.started)
        ticket.tally.add(delta, texts=ticket.prompt.messages is not None)

    async def settle(self, ticket: Ticket, status: str) -> None:
        usage, latency = ticket.final_usage(), time.perf_counter() - ticket.started
        ticket.outcome = status
        if status in ("unavailable", "rejected") and ticket.first_token_at is None:
            usage = Usage(0, 0)  # the model never started on it: nothing to charge, the whole hold goes back
        p = ticket.principal
        if status == "ok" and ticket.model in ticket.plan.judged:  # whole: its record says whether it was kept
            ticket.then = self.routing.on_result(ticket)
        fields = dict(prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
                      completion_tokens=usage.completion_tokens, latency_ms=latency * 1000, route=ticket.route,
                      difficulty=ticket.plan.difficulty, status=status, estimated=usage.estimated,
                      route_group=ticket.plan.group, escalated=ticket.then is not None, gpu_seconds=usage.gpu_seconds,
                      prompt_text=ticket.prompt.query if p.store_prompts else None)
        baseline = ticket.plan.baseline(ticket.model)
        try:
            try:
                record = await self.billing.ledger.settle(ticket.reservation, baseline_model=baseline, **fields)
            except Exception as exc:
                if outage(exc) is None:
                    raise
                record = self._settle_later(ticket.reservation, baseline, fields, exc)
            ticket.cost_micros = record.cost_micros
        except BaseException as exc:
            if outage(exc):  # not settled in time: the client gets 503, so the hold settles at no cost, later
                self.finish_later(lambda: self.billing.ledger.release(ticket.reservation, "unavailable"))
            raise
        finally:
            await self.limiter.release(p)
        metrics.series(metrics.REQUESTS, ticket.route, status).inc()
        metrics.series(metrics.LATENCY, ticket.route).observe(latency)
        metrics.series(metrics.TOKENS, ticket.route, "prompt").inc(usage.prompt_tokens)
        metrics.series(metrics.TOKENS, ticket.route, "completion").inc(usage.completion_tokens)
        metrics.series(metrics.COST, ticket.model).inc(record.cost_micros / 1e6)
        if overrun := rules.overrun_micros(ticket.reservation, record):
            _overran(ticket, record, overrun)

    def _settle_later(self, res: Reservation, baseline: str | None, fields: dict, exc: Exception) -> rules.UsageRecord:
        """The ledger is unreachable as the request ends. The client still gets the answer's true ending (an answer
        that was delivered is not turned into an error it would retry and pay twice for): the settlement is retried
        until the ledger answers. Settling is idempotent, so if the first try did land (a paused Redis runs it on
        waking), the retry changes nothing; both carry the same record, decided here by billing.rules."""
        log.warning("request %s: ledger unreachable at settlement (%s), retrying in the background",
                    res.request_id, exc.__class__.__name__)
        task = asyncio.create_task(self._retry_settle(res, baseline, fields))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return rules.usage_record(res, datetime.now(UTC).replace(tzinfo=None), None, **fields)

    async def _retry_settle(self, res: Reservation, baseline: str | None, fields: dict) -> None:
        for _ in range(int(SETTLE_RETRY_S)):
            await asyncio.sleep(1.0)
            try:
                await self.billing.ledger.settle(res, baseline_model=baseline, **fields)
                return
            except Exception as exc:
                if outage(exc) is None:
                    log.exception("request %s: settlement failed", res.request_id)
                    return
        log.error("request %s: ledger unreachable for %d s; its hold is left to the reaper", res.request_id,
                  SETTLE_RETRY_S)


def _overran(ticket: Ticket, record, overrun: int) -> None:
    """Billed past the hold: the tenant pays the true cost, the operator hears of it (a model that ignores
    max_tokens, or a prompt longer than its hold allowed for, wants a look)."""
    log.warning("request %s on %s cost %s, %s past its hold of %s (%d prompt + %d completion tokens)",
                ticket.request_id, ticket.model, usd(record.cost_micros), usd(overrun),
                usd(ticket.reservation.amount_micros), record.prompt_tokens, record.completion_tokens)
    metrics.OVERRUNS.labels(ticket.model).inc()
    metrics.OVERRUN_COST.labels(ticket.model).inc(overrun / 1e6)


async def _generate(served: ServedModel, ticket: Ticket) -> AsyncIterator[TokenDelta]:
    """The model's deltas; a token-id model's in OpenAI's terms (served.answer). n choices: one request each,
    merged, each delta tagged with its choice's index; the later choices share the first one's prompt blocks."""
    def generate(request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        deltas = served.backend.generate(request)
        return deltas if served.text_only else served.answer(ticket.prompt, deltas)

    if ticket.n == 1:
        async for delta in generate(ticket.request):
            yield delta
        return
    async for i, delta in fan_out(generate, ticket.choice_requests()):
        delta.index = i
        yield delta


async def _until(deadline: float, deltas: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenDelta]:
    """The deltas until the deadline. Each wait is timed on its own, because a stream's first delta is awaited by
    the request's task and the rest by the response's task (a timeout binds to one task)."""
    while True:
        async with asyncio.timeout_at(deadline):
            delta = await anext(deltas, None)
        if delta is None:
            return
        yield delta


async def _off_loop(size: int, fn, *args):
    """Small inputs are handled inline; a large one off the event loop, so it cannot stall other requests."""
    if size > INLINE_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _size(body: SamplingFields) -> int:
    if isinstance(body, ChatCompletionRequest):
        return sum(len(m.content) if isinstance(m.content, str) else len(str(m.content)) for m in body.messages)
    return len(body.prompt)


async def _prepend(first: TokenDelta, rest: AsyncIterator[TokenDelta]) -> AsyncIterator[TokenDelta]:
    yield first
    async for delta in rest:
        yield delta


async def _empty() -> AsyncIterator[TokenDelta]:
    return
    yield


async def _replay(deltas: list[TokenDelta]) -> AsyncIterator[TokenDelta]:
    for delta in deltas:
        yield delta


def bearer_is(authorization: str | None, secret: str | None) -> bool:
    """Whether the bearer key is `secret` (compared in constant time); never when no secret is set."""
    key = _bearer(authorization)
    return bool(key and secret and hmac.compare_digest(key.encode(), secret.encode()))


def _bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception:  # the request is already failing; its own error is the one to report
        pass
