"""Evaluate a router on held-out prompts against random routing, the two fixed choices, and the cascade."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.metrics import Curve, apgr, auc, cpt, routing_curve
from classifier.router import Router
from classifier.train import Example


@dataclass(frozen=True)
class Result:
    name: str
    curve: Curve
    auc: float | None

    def row(self) -> list:
        auc_cell = "" if self.auc is None else self.auc
        if self.curve.quality_large <= self.curve.quality_small:
            return [self.name, "no gap", "no gap", "no gap", auc_cell]  # nothing to recover: see quality table
        return [self.name, apgr(self.curve), cpt(self.curve, 0.5), cpt(self.curve, 0.8), auc_cell]


HEADERS = ["router", "APGR", "CPT(50%)", "CPT(80%)", "AUC"]


def evaluate(router: Router, test: list[Example]) -> list[Result]:
    """The classifier, the cascade (small answers first, so it pays for both on escalation), random, oracle."""
    qs = np.array([e.quality_small for e in test])
    ql = np.array([e.quality_large for e in test])
    label = np.array([e.label for e in test])
    score = np.array([router.score(e.prompt) for e in test])
    cascade = -np.array([e.small_confidence for e in test])
    oracle = ql - qs  # knows each answer's quality in advance: the ceiling
    return [
        Result("classifier", routing_curve(score, qs, ql), auc(score, label)),
        Result("cascade (small's confidence)", routing_curve(cascade, qs, ql), auc(cascade, label)),
        Result("random", routing_curve(np.zeros(len(test)), qs, ql), 0.5),
        Result("oracle", routing_curve(oracle, qs, ql), None),
    ]


def policy_rows(router: Router, test: list[Example], targets: list[dict]) -> list[list]:
    """Does a threshold calibrated on calib meet its target on test? One row per target."""
    qs = np.array([e.quality_small for e in test])
    ql = np.array([e.quality_large for e in test])
    score = np.array([router.score(e.prompt) for e in test])
    rows = []
    for target in targets:
        large = score >= router.threshold_for(**target)
        quality = np.where(large, ql, qs).mean() / ql.mean()
        (key, value), = target.items()
        rows.append([f"{key} = {value}", large.mean(), quality])
    return rows


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
