"""Targets that hold on the traffic that arrives, not on the calibration set.

Real prompts score differently from the ones a router was calibrated on (the bundled router sent 91-100%
of public benchmark prompts large at a floor calibrated for 30%). A window of recent scores per route
group and tenant fixes the share where it is measured: the threshold for a large_share target is the
matching quantile of the window. A quality_floor target asks the calibration table which share the floor
needs, then meets that share the same way. Until the window holds enough scores the calibrated threshold
stands in.

Feedback corrects a quality_floor where the calibration set and the traffic disagree. With enough grades on
both sides of the route, r = (weak tiers' mean feedback) / (strongest tier's) estimates how much of the strong
tier's quality a weakly-routed answer keeps; a share s of strong calls then keeps s + (1 - s) * r, so the floor
needs s = (floor - r) / (1 - r). That estimate is rough (the weak tiers answer the easier prompts, the strong
one the harder), so it may move the share at most FEEDBACK_SHIFT from the calibrated one.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

WINDOW = 1000  # recent scores kept per route group and tenant
MIN_SCORES = 50  # fewer than this and a quantile says little: the calibrated threshold is used
MIN_WEAK_FEEDBACK = 50  # grades on weakly-routed answers before feedback moves a quality_floor's share
MIN_STRONG_FEEDBACK = 20  # and on the strongest tier's: the reference the weak tiers are measured against
FEEDBACK_SHIFT = 0.25  # the most feedback may move the share away from the calibrated one


@dataclass
class Window:
    scores: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    large: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # was each routed to the strongest tier
    feedback: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # (strongest tier?, score 0..1)
    target: float | None = None  # the large share aimed at, for the metrics

    def threshold(self, share: float, calibrated: float) -> float:
        """Route large iff score >= this: `share` of the window's scores reach it."""
        if len(self.scores) < MIN_SCORES:
            return calibrated
        ranked = np.sort(np.fromiter(self.scores, float))[::-1]
        k = int(round(share * len(ranked)))
        if k == 0:
            return float("inf")
        return float(ranked[k - 1]) if k == len(ranked) else float((ranked[k - 1] + ranked[k]) / 2)

    def realised_share(self) -> float | None:
        return sum(self.large) / len(self.large) if self.large else None

    def feedback_quality(self) -> float | None:
        return sum(score for _, score in self.feedback) / len(self.feedback) if self.feedback else None

    def feedback_share(self, quality_floor: float, calibrated: float) -> float:
        """The strong share the floor needs by the feedback (module docstring); `calibrated` until it is enough."""
        weak = [score for strong, score in self.feedback if not strong]
        strong = [score for strong, score in self.feedback if strong]
        if len(weak) < MIN_WEAK_FEEDBACK or len(strong) < MIN_STRONG_FEEDBACK or sum(strong) == 0:
            return calibrated
        kept = min(1.0, (sum(weak) / len(weak)) / (sum(strong) / len(strong)))
        needed = 0.0 if kept == 1.0 else max(0.0, (quality_floor - kept) / (1.0 - kept))
        return float(np.clip(needed, max(0.0, calibrated - FEEDBACK_SHIFT), min(1.0, calibrated + FEEDBACK_SHIFT)))


class LiveTargets:
    """One window per (route group, tenant); the gateway asks for a threshold, then reports the choice."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], Window] = {}

    def window(self, group: str, tenant: str) -> Window:
        return self.windows.setdefault((group, tenant), Window())

    def threshold(self, router, group: str, tenant: str, score: float, quality_floor: float | None = None,
                  large_share: float | None = None) -> float:
        """The threshold for this prompt; its score joins the window first, so the window is the traffic."""
        window = self.window(group, tenant)
        window.scores.append(score)
        calibrated = router.threshold_for(quality_floor, large_share)
        window.target = self.share_for(router, quality_floor, large_share, window)
        return window.threshold(window.target, calibrated)

    @staticmethod
    def share_for(router, quality_floor: float | None, large_share: float | None, window: Window | None = None) -> float:
        """The large share a target asks for: given, or what the floor needs by the calibration table, corrected
        by the window's feedback; with both targets the share stays a cap."""
        if quality_floor is None and large_share is None:  # the artifact's default policy
            quality_floor, large_share = (router.meta["default_policy"].get(k) for k in ("quality_floor", "large_share"))
        if quality_floor is None:
            return large_share
        table = router.route
        cut = table.threshold_for(quality_floor=quality_floor)
        share = float(table.share[np.flatnonzero(table.threshold == cut)[0]])
        if window is not None:
            share = window.feedback_share(quality_floor, share)
        return share if large_share is None else min(share, large_share)

    def record(self, group: str, tenant: str, large: bool) -> None:
        self.window(group, tenant).large.append(large)

    def record_feedback(self, group: str, tenant: str, strong: bool, score: float) -> None:
        """A grade on an answer of the group's strongest tier (`strong`) or of a weaker one."""
        self.window(group, tenant).feedback.append((strong, score))
