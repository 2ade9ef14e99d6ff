"""`router`: the router's difficulty score picks the tier; the cheaper the tier chosen, the more it saves."""
from __future__ import annotations

from gateway import metrics
from gateway.policies.base import Ask, Plan, Policy


class RouterPolicy(Policy):
    saves = True

    @staticmethod
    def misfit(group) -> tuple[str, str] | None:
        return None if group.tiers else ("tiers", "a router group lists its models from cheapest to strongest")

    def plan(self, ask: Ask) -> Plan:
        tiers = self.eligible(self.group.tiers, ask.body)
        index, difficulty, unfamiliar = 0, None, False
        if len(tiers) > 1:
            index, difficulty, unfamiliar = router_tier(self.scorer, ask.principal, ask.query, tiers, self.live,
                                                        self.group.name, self.group.unfamiliar)
            if self.tenant_metrics:
                window = self.live.window(self.group.name, str(ask.principal.tenant_id))
                metrics.router_window(self.group.name, ask.principal.tenant_name, window)
        chosen = tiers[index]
        return Plan(self.group.name, (chosen, *self.fallbacks(tiers, chosen, ask.body)), "router", difficulty,
                    strongest=tiers[-1], router=self.router, unfamiliar=unfamiliar)


def router_tier(router, principal, query: str, tiers: list[str], live=None, group: str = "",
                unfamiliar: str = "score") -> tuple[int, float, bool]:
    """The index of the tier to use, the difficulty score, and whether the prompt is unfamiliar. A router
    calibrated on as many tiers as the group has steps up one tier per threshold passed; otherwise below the
    threshold the cheapest tier answers, at or above it the strongest. The step to the strongest tier follows the
    live window of the group and tenant (classifier/live.py), so the tenant's target holds on the traffic that
    arrives. An unfamiliar prompt goes where the group's `unfamiliar` says; unless that is `score`, its score, which
    says little, stays out of the window."""
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
