"""`pinned`: the group's one model, never another (not even when it is unavailable)."""
from __future__ import annotations

from gateway.policies.base import Ask, Plan, Policy


class Pinned(Policy):
    @staticmethod
    def misfit(group) -> tuple[str, str] | None:
        if len(group.tiers) != 1:
            return "tiers", "a pinned group serves exactly one model; list only it"
        if "fallbacks" in group.model_fields_set and group.fallbacks:
            return "fallbacks", "a pinned group never falls back; use policy: fallback for that"
        return None

    def plan(self, ask: Ask) -> Plan:
        return Plan(self.group.name, tuple(self.eligible(self.group.tiers, ask.body)), "pinned", router=self.router)
