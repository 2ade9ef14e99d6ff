"""Offline: from labelled prompts to a saved Router.

Prompts are split by a hash of their text, so a prompt (and every duplicate of it) lives in exactly
one of train / calib / test. The model learns on train; its probabilities are Platt-scaled on
out-of-fold decisions within train; the policy tables (threshold -> share, quality) are measured on
calib, which the model never saw; test is kept for the evaluation alone.
"""
from __future__ import annotations

import csv
import datetime
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from classifier.features import named, numeric
from classifier.metrics import routing_curve
from classifier.router import CLIP, PolicyTable, Router

LABELS_PATH = Path(__file__).resolve().parent / "artifacts" / "labels.csv"
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_POLICY = {"quality_floor": 0.95}


@dataclass(frozen=True)
class Example:
    prompt: str
    kind: str  # "task" (exact match) or "text" (likelihood under the large model)
    family: str
    level: int
    quality_small: float
    quality_large: float
    small_confidence: float  # mean log-probability of the small model's own answer
    label: bool  # True: the small model does not suffice

    @property
    def split(self) -> str:
        bucket = zlib.crc32(self.prompt.encode()) % 10
        return "train" if bucket < 6 else "calib" if bucket < 8 else "test"


def read_labels(path: Path = LABELS_PATH) -> list[Example]:
    with open(path, newline="") as f:
        return [
            Example(r["prompt"], r["kind"], r["family"], int(r["level"]), float(r["quality_small"]),
                    float(r["quality_large"]), float(r["small_confidence"]), r["label"] == "1")
            for r in csv.DictReader(f)
        ]


def splits(examples: list[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {"train": [], "calib": [], "test": []}
    for e in examples:
        out[e.split].append(e)
    return out


def design(texts: list[str], vocab: dict[str, int], mean: np.ndarray, scale: np.ndarray) -> sp.csr_matrix:
    """The matrix Router.score evaluates by hand: normalised n-gram indicators, then standardised numbers."""
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        found = named(text)
        norm = 1.0 / math.sqrt(len(found) or 1)
        hits = [vocab[g] for g in found if g in vocab]
        rows += [i] * len(hits)
        cols += hits
        vals += [norm] * len(hits)
    indicators = sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(vocab)))
    numbers = np.clip((np.array([numeric(t) for t in texts]) - mean) / scale, -CLIP, CLIP)
    return sp.hstack([indicators, sp.csr_matrix(numbers)], format="csr")


def fit_scorer(texts: list[str], labels: np.ndarray, min_df: int = 2, seed: int = 0) -> tuple[Router, dict]:
    """Logistic regression with C chosen by 5-fold AUC, Platt-scaled on the same folds' predictions."""
    counts = Counter(g for t in texts for g in named(t))
    vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= min_df))}
    raw = np.array([numeric(t) for t in texts])
    mean, scale = raw.mean(0), raw.std(0)
    scale[scale == 0] = 1.0
    X, y = design(texts, vocab, mean, scale), np.asarray(labels, dtype=int)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y))

    def out_of_fold(C: float) -> np.ndarray:
        z = np.empty(len(y))
        for fit_idx, held in folds:
            z[held] = LogisticRegression(C=C, max_iter=3000).fit(X[fit_idx], y[fit_idx]).decision_function(X[held])
        return z

    cv_auc = {C: roc_auc_score(y, out_of_fold(C)) for C in C_GRID}
    best = max(cv_auc, key=cv_auc.get)
    platt = LogisticRegression(C=1e6).fit(out_of_fold(best).reshape(-1, 1), y)
    model = LogisticRegression(C=best, max_iter=3000).fit(X, y)
    coef = model.coef_[0]
    weights = {g: float(coef[i]) for g, i in vocab.items() if coef[i] != 0.0}
    router = Router(
        weights=weights,
        numeric_mean=mean.tolist(),
        numeric_scale=scale.tolist(),
        numeric_weight=coef[len(vocab):].tolist(),
        intercept=float(model.intercept_[0]),
        platt=(float(platt.coef_[0, 0]), float(platt.intercept_[0])),
        route=PolicyTable(np.array([np.inf, -np.inf]), np.array([0.0, 1.0]), np.array([0.0, 1.0])),
    )
    return router, {"C": best, "cv_auc": cv_auc[best], "vocab": len(vocab)}


def policy_table(score: np.ndarray, quality_small: np.ndarray, quality_large: np.ndarray) -> PolicyTable:
    """Thresholds halfway between neighbouring held-out scores, so unseen scores fall on the measured side."""
    curve = routing_curve(score, quality_small, quality_large)
    vertices = curve.threshold[1:]
    cuts = np.r_[np.inf, (vertices[:-1] + vertices[1:]) / 2, -np.inf]
    return PolicyTable(cuts, curve.share, curve.quality / curve.quality_large)


def train(examples: list[Example], default_policy: dict = DEFAULT_POLICY) -> Router:
    parts = splits(examples)
    train_set, calib = parts["train"], parts["calib"]
    router, info = fit_scorer([e.prompt for e in train_set], np.array([e.label for e in train_set]))
    qs, ql = (np.array([getattr(e, f) for e in calib]) for f in ("quality_small", "quality_large"))
    router.route = policy_table(np.array([router.score(e.prompt) for e in calib]), qs, ql)
    router.cascade = policy_table(-np.array([e.small_confidence for e in calib]), qs, ql)
    router.meta = {
        "default_policy": default_policy,
        "trained": datetime.datetime.now().isoformat(timespec="seconds"),
        "examples": {name: len(part) for name, part in parts.items()},
        **info,
    }
    router.threshold_for()  # a default policy the tables cannot answer fails here, not in the gateway
    return router
