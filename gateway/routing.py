"""Which model serves a request: the routing policy of its route group, and the fallbacks when it is unavailable.

A request names a route group (`auto`) or a model. A group's policy picks the first choice among the models that can
honour the request (tools, images, ...); its `fallbacks` follow in case it is unavailable (down, breaker open,
429/5xx/timeout before its first token). The cascade, too, lives here: the cheapest tier answers, and an answer it
is unsure of is asked again of the strongest tier.

Savings mean routing: only a router or cascade group's choice of a tier cheaper than its strongest earns any.
Each record's baseline says what the request would have cost at the strongest tier; a pinned model, a fallback
group and the strongest tier itself have none (savings 0), a fallback to a dearer model costs more than its
baseline, and an escalated cascade's first try has a baseline of 0 (the strongest tier alone would not have made
it), so its cost shows as a loss.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from classifier.live import LiveTargets
from classifier.router import Router
from gateway import metrics
from gateway.catalog import Catalog, RouteGroup
from gateway.errors import APIError

log = logging.getLogger("ferryman.routing")


class ModelUnavailable(APIError):
    """The model could not start the answer; the route group's next tier may serve instead."""

    def __init__(self, model: str, reason: str, status: int = 503, retry_after_s: float | None = None,
                 code: str | None = None):
        code = code or ("upstream_rate_limited" if status == 429 else "model_unavailable")
        headers = {"retry-after": str(max(1, round(retry_after_s or 1)))}
        super().__init__(status, f"The model '{model}' is unavailable right now: {reason}",
                         "rate_limit_exceeded" if status == 429 else "server_error", code, headers=headers)


@dataclass
class Plan:
    group: str | None  # the route group, None when the request named a model
    order: list[str]  # the first choice, then the models that serve if the one before is unavailable
    difficulty: float | None = None
    strongest: str | None = None  # router/cascade: the group's strongest eligible tier, the savings baseline
    cascade_to: str | None = None  # cascade: the tier that answers when the first one is unsure
    router: str | None = None  # the artifact that scored the prompt (`general`, `bundled`, a path)
    unfamiliar: bool = False  # the prompt is unlike the router's training prompts

    def baseline(self, model: str) -> str | None:
        """The model whose price is `model`'s baseline: the strongest tier, or None (no savings) for the strongest
        tier itself, a pinned model or a group that does not route by cost."""
        return None if model == self.strongest else self.strongest


def router_tier(router, principal, query: str, tiers: list[str], live=None, group: str = "",
                unfamiliar: str = "score") -> tuple[int, float, bool]:
    """The router policy: the index of the tier to use, the difficulty score, and whether the prompt is unfamiliar.
    A router calibrated on as many tiers as the group has steps up one tier per threshold passed; otherwise below
    the threshold the cheapest tier answers, at or above it the strongest. The step to the strongest tier follows
    the live window of the group and tenant (classifier/live.py), so the tenant's target holds on the traffic that
    arrives. An unfamiliar prompt goes where the group's `unfamiliar` says; unless that is `score`, its score, which
    says little, stays out of the window."""
    if not isinstance(router, Router):  # a stand-in (tests) has one fixed threshold
        score = router.score(query)
        return (len(tiers) - 1 if score >= router.threshold_for(principal.quality_floor, principal.large_share) else 0), score, False
    score, strange = router.assess(query)
    if strange:
        metrics.UNFAMILIAR.labels(group).inc()
    if strange and unfamiliar != "score":
        index = len(tiers) - 1 if unfamiliar == "strongest" else 0
        if live is not None:
            live.record(group, str(principal.tenant_id), index == len(tiers) - 1)
        return index, score, True
    cuts = router.tier_thresholds(principal.quality_floor, principal.large_share)
    if len(cuts) != len(tiers) - 1:
        cuts = cuts[-1:]
    if live is not None:
        top = live.threshold(router, group, str(principal.tenant_id), score, principal.quality_floor, principal.large_share)
        cuts[-1] = max([top] + cuts[:-1])
    passed = router.tier_for(score, cuts)
    index = len(tiers) - 1 if passed == len(cuts) else passed
    if live is not None:
        live.record(group, str(principal.tenant_id), index == len(tiers) - 1)
    return index, score, strange


def default_router(group: RouteGroup) -> str:
    """A group that leaves `router` unset: `general`; a cascade, `bundled` (the only shipped artifact calibrated on
    a small model's confidence)."""
    return "bundled" if group.policy == "cascade" else "general"


class Routing:
    def __init__(self, catalog: Catalog, router, models: dict, tenant_metrics: bool = False):
        """router: a stand-in for every group's own (tests); None: each group's `router` artifact."""
        self.catalog, self.models = catalog, models
        self.live = LiveTargets()  # recent scores per route group and tenant: targets hold on live traffic
        self.tenant_metrics = tenant_metrics  # FERRYMAN_METRICS_TENANTS: each tenant's window on /metrics
        loaded: dict[str, Router] = {}
        self.routers: dict[str, tuple[str, object]] = {}  # per route group: the artifact's name and the router
        for g in catalog.routes:
            name = g.router or default_router(g)
            if router is None and name not in loaded:
                loaded[name] = Router.load(name)
            self.routers[g.name] = ("injected", router) if router is not None else (name, loaded[name])

    def visible(self, principal) -> list[str]:
        """Route groups and models the caller may name, groups first."""
        names = [g.name for g in self.catalog.routes] + list(self.models)
        allowed = principal.allowed_models
        return names if allowed is None else [n for n in names if n in allowed]

    def known(self, name: str) -> str:
        """`name` when it is a route group or model of the catalog, else "" (a metric label stays bounded)."""
        return name if self.catalog.route(name) or name in self.models else ""

    def plan(self, principal, body, query: str) -> Plan:
        self._check_allowed(principal, body.model)
        group = self.catalog.route(body.model)
        if group is None:
            return self._pinned(body.model, body)
        if group.policy == "fallback":
            return Plan(group.name, self._eligible(group.fallbacks, body))
        tiers = self._eligible(group.tiers, body)
        plan = Plan(group.name, tiers[:1], strongest=tiers[-1] if group.strongest() else None,
                    router=self.routers[group.name][0])
        if group.policy == "router" and len(tiers) > 1:
            scorer = self.routers[group.name][1]
            index, plan.difficulty, plan.unfamiliar = router_tier(scorer, principal, query, tiers, self.live,
                                                                  group.name, group.unfamiliar)
            if self.tenant_metrics and isinstance(scorer, Router):
                window = self.live.window(group.name, str(principal.tenant_id))
                metrics.router_window(group.name, principal.tenant_name, window)
            plan.order = [tiers[index]]
        if group.policy == "cascade" and len(tiers) > 1:
            plan.cascade_to = tiers[-1]
        plan.order += self._fallbacks(group, tiers, plan.order[0], body)
        return plan

    def _fallbacks(self, group: RouteGroup, tiers: list[str], chosen: str, body) -> list[str]:
        if group.policy == "pinned" or group.fallbacks is False:
            return []
        if group.fallbacks is True:
            return _nearest_first(tiers, chosen)
        return [m for m in group.fallbacks if m != chosen and self.models[m].refusal(body) is None]

    def _pinned(self, name: str, body) -> Plan:
        if name not in self.models:
            raise APIError(404, f"The model '{name}' does not exist.", "invalid_request_error", "model_not_found",
                           "model")
        return Plan(None, self._eligible([name], body))

    def _check_allowed(self, principal, name: str) -> None:
        allowed = principal.allowed_models
        if allowed is not None and name not in allowed and (name in self.models or self.catalog.route(name)):
            raise APIError(403, f"The model '{name}' is not enabled for this API key's tenant; it may use: "
                                f"{', '.join(sorted(allowed)) or 'none'}.", "invalid_request_error",
                           "model_not_allowed", "model")

    def _eligible(self, names: list[str], body) -> list[str]:
        """The models that can honour every parameter of the request; none: 400 naming the parameter."""
        refusals = {n: self.models[n].refusal(body) for n in names}
        eligible = [n for n in names if refusals[n] is None]
        if not eligible:
            refusal = refusals[names[0]]
            if len(names) > 1:  # a route group: none of its tiers can, not only the first
                refusal.message += f" No model of the route group '{body.model}' can."
            raise refusal
        return eligible

    # --- running a plan ----------------------------------------------------------------------------

    async def serve(self, plan: Plan, attempt: Callable[..., Awaitable], principal):
        """(ticket, deltas) of the model that serves: the first available one of the plan; in a cascade, the
        first tier's answer when it is sure of it, else the strongest tier's (both tries billed)."""
        ticket, deltas = await self._first_available(plan, plan.order, attempt, cascade=plan.cascade_to is not None)
        if plan.cascade_to is None or ticket.model == plan.cascade_to:
            return ticket, deltas
        kept = [delta async for delta in deltas]  # its end settles it, deciding `escalated` (escalates, below)
        if not ticket.escalated:
            return ticket, _replay(kept)
        log.warning("request %s escalates from %s to %s: the answer's confidence was under the cut",
                    ticket.request_id, ticket.model, plan.cascade_to)
        strong, deltas = await self._first_available(plan, [plan.cascade_to], attempt, escalated=True)
        strong.earlier_cost_micros = ticket.cost_micros or 0
        strong.headers["x-ferryman-escalated-from"] = ticket.request_id
        return strong, deltas

    def escalates(self, ticket) -> bool:
        """Whether a cascade's first try, whole, is too unsure to keep: asked as it settles, so that its record
        already says so."""
        p = ticket.principal
        return self.routers[ticket.plan.group][1].cascade_escalate(ticket.logprobs, p.quality_floor, p.large_share)

    async def _first_available(self, plan: Plan, order: list[str], attempt, cascade=False, escalated=False):
        failed: list[str] = []
        for i, model in enumerate(order):
            route = f"cascade-{model}" if (cascade and model != plan.cascade_to) or escalated else model
            try:
                ticket, deltas = await attempt(model, route, plan, logprobs=cascade and model != plan.cascade_to)
            except ModelUnavailable as exc:
                failed.append(model)
                if i == len(order) - 1:
                    raise
                log.warning("model %s unavailable (%s); the request falls back to %s", model, exc.message,
                            order[i + 1])
                continue
            if failed:
                ticket.headers["x-ferryman-fallback-from"] = ",".join(failed)
            return ticket, deltas


def _nearest_first(tiers: list[str], chosen: str) -> list[str]:
    """The other tiers, nearest to the chosen one first; at equal distance the stronger one (quality over cost)."""
    at = tiers.index(chosen)
    return sorted((t for t in tiers if t != chosen), key=lambda t: (abs(tiers.index(t) - at), tiers.index(t) < at))


async def _replay(deltas: list) -> AsyncIterator:
    for delta in deltas:
        yield delta
