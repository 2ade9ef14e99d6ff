"""What every routing policy shares: the request it plans for (`Ask`), the plan it returns (`Plan`), the policy's
small protocol (`Policy`), and the `fallbacks` switch, which is the catalog's and no policy's own."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ask:
    """A request as a policy sees it: who asks, the parsed body, and the text a router scores."""

    principal: object  # billing.Principal: quality_floor, large_share, tenant_id, tenant_name
    body: object  # gateway.schemas.SamplingFields
    query: str


@dataclass(frozen=True)
class Plan:
    group: str | None  # the route group, None when the request named a model
    order: tuple[str, ...]  # the first choice, then the models that serve if the one before is unavailable
    policy: str | None = None  # the group's policy, None for a named model
    difficulty: float | None = None
    strongest: str | None = None  # a policy that saves by choosing a cheaper tier: its strongest, the baseline
    router: str | None = None  # the artifact that scored the prompt (`general`, `bundled`, a path)
    unfamiliar: bool = False  # the prompt is unlike the router's training prompts
    # models whose answer the policy judges once it settled (Policy.on_result): asked for log-probabilities, and
    # their route label names the policy ("cascade-<model>")
    judged: frozenset[str] = field(default_factory=frozenset)
    tagged: frozenset[str] = field(default_factory=frozenset)  # models whose route label names the policy

    def baseline(self, model: str) -> str | None:
        """The model whose price is `model`'s baseline: the strongest tier, or None (no savings) for the strongest
        tier itself, a named model or a group that does not route by cost."""
        return None if model == self.strongest else self.strongest

    def route(self, model: str) -> str:
        """The label the try on `model` is recorded and measured under."""
        return f"{self.policy}-{model}" if model in self.tagged else model


class Policy(ABC):
    """A route group's policy: which of its models serve a request, in which order. One subclass per policy,
    registered by name in gateway/policies/__init__.py; the catalog validates a group against its `misfit`."""

    saves = False  # whether choosing a cheaper tier earns savings against the group's strongest tier
    default_router = "general"  # the router artifact a group that leaves `router` unset gets

    def __init__(self, group, models: dict, scorer=None, router: str | None = None, live=None,
                 tenant_metrics: bool = False):
        """group: the catalog's RouteGroup; models: name -> ServedModel; scorer: the group's router (the protocol
        of classifier/router.py's Router), `router` its name; live: classifier.live.LiveTargets."""
        self.group, self.models, self.scorer, self.router = group, models, scorer, router
        self.live, self.tenant_metrics = live, tenant_metrics

    @staticmethod
    def misfit(group) -> tuple[str, str] | None:
        """(key, problem) when the group's lists do not fit the policy."""
        return None

    @abstractmethod
    def plan(self, ask: Ask) -> Plan:
        """Which of the group's models serve this request, in which order."""

    def on_result(self, plan: Plan, ticket) -> Plan | None:
        """Asked as a judged try settles (`plan.judged`), whole: the plan that answers instead, or None to keep
        this answer."""
        return None

    def eligible(self, names: list[str], body) -> list[str]:
        """The models that can honour every parameter of the request; none: 400 naming the parameter."""
        return eligible(self.models, names, body)

    def fallbacks(self, tiers: list[str], chosen: str, body) -> list[str]:
        """Who serves when `chosen` is unavailable before its first token: the group's `fallbacks` switch."""
        switch = self.group.fallbacks
        if switch is False:
            return []
        if switch is True:
            return nearest_first(tiers, chosen)
        return [m for m in switch if m != chosen and self.models[m].refusal(body) is None]


def eligible(models: dict, names: list[str], body) -> list[str]:
    refusals = {n: models[n].refusal(body) for n in names}
    found = [n for n in names if refusals[n] is None]
    if not found:
        refusal = refusals[names[0]]
        if len(names) > 1:  # a route group: none of its tiers can, not only the first
            refusal.message += f" No model of the route group '{body.model}' can."
        raise refusal
    return found


def nearest_first(tiers: list[str], chosen: str) -> list[str]:
    """The other tiers, nearest to the chosen one first; at equal distance the stronger one (quality over cost)."""
    at = tiers.index(chosen)
    return sorted((t for t in tiers if t != chosen), key=lambda t: (abs(tiers.index(t) - at), tiers.index(t) < at))
