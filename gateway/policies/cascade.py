"""`cascade`: the cheapest tier answers first; an answer it is unsure of (its mean token log-probability under the
router's calibrated cut) is asked again of the strongest tier, and both tries are billed.

Its savings: a kept answer of a cheaper tier saves against the strongest tier; an escalated first try has a
baseline of 0 (the strongest tier alone would not have made it, billing/rules.py), so its cost shows as a loss."""
from __future__ import annotations

from gateway.policies.base import Ask, Plan, Policy


class Cascade(Policy):
    saves = True
    default_router = "bundled"  # the only shipped artifact calibrated on a small model's confidence

    @staticmethod
    def misfit(group) -> tuple[str, str] | None:
        return None if group.tiers else ("tiers", "a cascade group lists its models from cheapest to strongest")

    def plan(self, ask: Ask) -> Plan:
        tiers = self.eligible(self.group.tiers, ask.body)
        order = (tiers[0], *self.fallbacks(tiers, tiers[0], ask.body))
        # every try but the strongest tier's is judged, fallbacks too; with one tier left there is nothing to judge
        cheaper = frozenset(order) - {tiers[-1]} if len(tiers) > 1 else frozenset()
        return Plan(self.group.name, order, "cascade", strongest=tiers[-1], router=self.router, judged=cheaper,
                    tagged=cheaper)

    def on_result(self, plan: Plan, ticket) -> Plan | None:
        p = ticket.principal
        if not self.scorer.cascade_escalate(ticket.tally.logprobs, p.quality_floor, p.large_share):
            return None
        strongest = plan.strongest
        return Plan(plan.group, (strongest,), "cascade", strongest=strongest, router=plan.router,
                    tagged=frozenset([strongest]))
