"""`fallback`: the first available of the group's `fallbacks`, in the catalog's order of preference."""
from __future__ import annotations

from gateway.policies.base import Ask, Plan, Policy


class Fallback(Policy):
    @staticmethod
    def misfit(group) -> tuple[str, str] | None:
        if not isinstance(group.fallbacks, list) or not group.fallbacks:
            return "fallbacks", "a fallback group lists its models here, most preferred first"
        if group.tiers:
            return "tiers", "a fallback group has no tiers: its order of preference is fallbacks"
        return None

    def plan(self, ask: Ask) -> Plan:
        return Plan(self.group.name, tuple(self.eligible(self.group.fallbacks, ask.body)), "fallback")
