"""How good is a router: the quality-vs-cost curve and the numbers read off it (RouteLLM's APGR and CPT).

A router ranks queries by score and sends the top ones to the large model. Sweeping the threshold
traces a curve from "all small" (share 0) to "all large" (share 1). Queries with equal scores are
indistinguishable to the router, so the curve is only defined at the ends of each tie group and is
straight in between: exactly the expected curve under random tie-breaking. A router whose score is
constant is therefore the random router, and its APGR is 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class Curve:
    """Route large iff score >= threshold[i]: a share[i] of calls go large, mean quality is quality[i]."""

    threshold: np.ndarray  # descending; the first is +inf (nothing goes large)
    share: np.ndarray  # ascending from 0 to 1
    quality: np.ndarray
    quality_small: float  # mean quality when everything goes small
    quality_large: float  # ... and when everything goes large

    @property
    def pgr(self) -> np.ndarray:
        """Performance gap recovered at each point: 0 at all-small, 1 at all-large quality."""
        gap = self.quality_large - self.quality_small
        if gap <= 0:
            raise ValueError("the large model is not better than the small one here: no gap to recover")
        return (self.quality - self.quality_small) / gap


def routing_curve(score: np.ndarray, quality_small: np.ndarray, quality_large: np.ndarray) -> Curve:
    score, qs, ql = (np.asarray(a, dtype=np.float64) for a in (score, quality_small, quality_large))
    if not (score.shape == qs.shape == ql.shape) or score.ndim != 1 or len(score) == 0:
        raise ValueError("score, quality_small and quality_large must be 1-D arrays of one non-zero length")
    order = np.argsort(-score, kind="stable")
    s, gain = score[order], (ql - qs)[order]
    # the last index of each tie group: the curve's vertices
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    n = len(s)
    cum = np.cumsum(gain)[ends]
    return Curve(
        threshold=np.r_[np.inf, s[ends]],
        share=np.r_[0.0, (ends + 1) / n],
        quality=qs.mean() + np.r_[0.0, cum] / n,
        quality_small=float(qs.mean()),
        quality_large=float(ql.mean()),
    )


def apgr(curve: Curve) -> float:
    """Average performance gap recovered: the area under PGR over the large-call share."""
    return float(np.trapezoid(curve.pgr, curve.share))


def cpt(curve: Curve, target: float) -> float:
    """Call-performance threshold: the least share of large calls that recovers `target` of the gap."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be within [0, 1], got {target}")
    pgr, share = curve.pgr, curve.share
    i = int(np.argmax(pgr >= target - 1e-12))
    if i == 0:
        return 0.0
    # the crossing lies on the straight piece between vertices i-1 and i
    frac = (target - pgr[i - 1]) / (pgr[i] - pgr[i - 1])
    return float(share[i - 1] + frac * (share[i] - share[i - 1]))


def quality_at(curve: Curve, share: float) -> float:
    """Mean quality with `share` of calls sent large, on the straight pieces between vertices."""
    return float(np.interp(share, curve.share, curve.quality))


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of the score for the label "the small model does not suffice"."""
    label = np.asarray(label, dtype=bool)
    if label.all() or not label.any():
        raise ValueError("AUC needs both labels present")
    return float(roc_auc_score(label, score))
