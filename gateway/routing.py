"""Which models may serve a request: the caller's allow-list, a named model, or the route group's policy.

A request names a route group (`auto`) or a model. Each group's policy (gateway/policies/: router, cascade,
pinned, fallback) plans the first choice among the models that can honour the request (tools, images, ...) and
the fallbacks in case it is unavailable (down, breaker open, 429/5xx/timeout before its first token); Ferry runs
the plan (gateway/ferry.py) and asks the policy about each judged try as it settles (`on_result`: the cascade).

Savings mean routing: only a policy that chooses a cheaper tier to save (`Policy.saves`: router, cascade) names
the strongest tier as the baseline; a named model, a pinned or fallback group and the strongest tier itself have
none (savings 0), and a fallback to a dearer model costs more than its baseline (billing/rules.py).
"""
from __future__ import annotations

from classifier.live import LiveTargets
from classifier.router import Router
from gateway.catalog import Catalog
from gateway.errors import APIError
from gateway.policies import POLICIES, Ask, Plan, Policy
from gateway.policies.base import eligible


class ModelUnavailable(APIError):
    """The model could not start the answer; the plan's next model may serve instead."""

    def __init__(self, model: str, reason: str, status: int = 503, retry_after_s: float | None = None,
                 code: str | None = None):
        code = code or ("upstream_rate_limited" if status == 429 else "model_unavailable")
        headers = {"retry-after": str(max(1, round(retry_after_s or 1)))}
        super().__init__(status, f"The model '{model}' is unavailable right now: {reason}",
                         "rate_limit_exceeded" if status == 429 else "server_error", code, headers=headers)


class Routing:
    def __init__(self, catalog: Catalog, router, models: dict, tenant_metrics: bool = False):
        """router: one router for every group (tests), implementing Router's protocol; None: each group's own
        `router` artifact, else its policy's default."""
        self.catalog, self.models = catalog, models
        self.live = LiveTargets()  # recent scores per route group and tenant: targets hold on live traffic
        self.tenant_metrics = tenant_metrics  # FERRYMAN_METRICS_TENANTS: each tenant's window on /metrics
        loaded: dict[str, Router] = {}
        self.routers: dict[str, tuple[str, object]] = {}  # per route group: the artifact's name and the router
        self.policies: dict[str, Policy] = {}
        for g in catalog.routes:
            kind = POLICIES[g.policy]
            name = g.router or kind.default_router
            if router is None and name not in loaded:
                loaded[name] = Router.load(name)
            self.routers[g.name] = ("injected", router) if router is not None else (name, loaded[name])
            label, scorer = self.routers[g.name]
            self.policies[g.name] = kind(g, models, scorer, label, self.live, tenant_metrics)

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
        policy = self.policies.get(body.model)
        if policy is not None:
            return policy.plan(Ask(principal, body, query))
        if body.model not in self.models:
            raise APIError(404, f"The model '{body.model}' does not exist.", "invalid_request_error",
                           "model_not_found", "model")
        return Plan(None, tuple(eligible(self.models, [body.model], body)))

    def on_result(self, ticket) -> Plan | None:
        """A judged try, settled whole: the plan that answers instead, or None to keep its answer."""
        return self.policies[ticket.plan.group].on_result(ticket.plan, ticket)

    def _check_allowed(self, principal, name: str) -> None:
        allowed = principal.allowed_models
        if allowed is not None and name not in allowed and (name in self.models or self.catalog.route(name)):
            raise APIError(403, f"The model '{name}' is not enabled for this API key's tenant; it may use: "
                                f"{', '.join(sorted(allowed)) or 'none'}.", "invalid_request_error",
                           "model_not_allowed", "model")
