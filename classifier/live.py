"""Targets that hold on the traffic that arrives, not on the calibration set.

Real prompts score differently from the ones a router was calibrated on (the bundled router sent 91-100%
of public benchmark prompts large at a floor calibrated for 30%). A window of recent scores per route
group and tenant fixes the share where it is measured: the threshold for a large_share target is the
matching quantile of the window. A quality_floor target asks the calibration table which share the floor
needs, then meets that share the same way. Until the window holds enough scores the calibrated threshold
stands in.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

WINDOW = 1000  # recent scores kept per route group and tenant
MIN_SCORES = 50  # fewer than this and a quantile says little: the calibrated threshold is used


@dataclass
class Window:
    scores: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    large: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # was each routed to the strongest tier
    feedback: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
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
        return sum(self.feedback) / len(self.feedback) if self.feedback else None


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
        window.target = self.share_for(router, quality_floor, large_share)
        return window.threshold(window.target, calibrated)

    @staticmethod
    def share_for(router, quality_floor: float | None, large_share: float | None) -> float:
        """The large share a target asks for: given, or what the calibration table says the floor needs."""
        if quality_floor is None and large_share is not None:
            return large_share
        table = router.route
        cut = router.threshold_for(quality_floor, large_share)
        return float(table.share[np.flatnonzero(table.threshold == cut)[0]])

    def record(self, group: str, tenant: str, large: bool) -> None:
        self.window(group, tenant).large.append(large)

    def record_feedback(self, group: str, tenant: str, score: float) -> None:
        self.window(group, tenant).feedback.append(score)
