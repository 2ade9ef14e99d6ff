"""Evaluate a router on held-out prompts against random routing, the two fixed choices, and the cascade."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.metrics import Curve, apgr, auc, cpt, routing_curve
from classifier.router import Router
from classifier.labelfile import Example


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
    oracle = ql - qs  # knows each answer's quality in advance: the ceiling
    results = [Result("classifier", routing_curve(score, qs, ql), auc(score, label))]
    if all(e.confidence is not None for e in test):
        cascade = -np.array([e.confidence for e in test])
        results.append(Result("cascade (small's confidence)", routing_curve(cascade, qs, ql), auc(cascade, label)))
    return results + [Result("random", routing_curve(np.zeros(len(test)), qs, ql), 0.5),
                      Result("oracle", routing_curve(oracle, qs, ql), None)]


def figures(router: Router, test: list[Example]) -> dict:
    """RouteLLM's figures for the weakest vs the strongest tier, as `ferryman router eval --json` prints them."""
    score = np.array([router.score(e.prompt) for e in test])
    curve = routing_curve(score, np.array([e.quality_small for e in test]), np.array([e.quality_large for e in test]))
    return {"apgr": round(apgr(curve), 4), "cpt50": round(cpt(curve, 0.5), 4), "cpt80": round(cpt(curve, 0.8), 4),
            "auc": round(auc(score, np.array([e.label for e in test])), 4), "n": len(test)}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows])


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
