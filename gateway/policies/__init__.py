"""Routing policies: one class per route group policy, each in its own module, registered here by the name a
catalog's `policy:` gives. A new policy is a new module with a `Policy` subclass and one line in POLICIES: the
catalog accepts its name, checks a group against its `misfit`, and gateway/routing.py plans with it."""
from __future__ import annotations

from gateway.policies.base import Ask, Plan, Policy
from gateway.policies.cascade import Cascade
from gateway.policies.fallback import Fallback
from gateway.policies.pinned import Pinned
from gateway.policies.router import RouterPolicy

POLICIES: dict[str, type[Policy]] = {"router": RouterPolicy, "cascade": Cascade, "pinned": Pinned,
                                     "fallback": Fallback}

__all__ = ["POLICIES", "Ask", "Plan", "Policy"]
