"""Offline: from labelled prompts to a saved Router.

The scorer is a ridge regression of the gain (strongest tier's score minus the weakest's) on n-grams and
shape numbers. The gain, not "the strong model wins", is what routing earns: prompts both models find
hard also hold most of the cases where the weak model wins, and a win-classifier sends those large too
(on the public data it ranks by AUC yet recovers no more of the gap than random).

Everything is cross-validated by group (label files: whole tasks, or single prompts in a one-task file),
so the ridge strength is chosen, and the policy tables are calibrated, on scores of prompts the scorer
never saw from tasks it never saw: a threshold then holds on shifted traffic as well as it can.
"""
from __future__ import annotations

import datetime
import math
from collections import Counter

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold

from classifier.features import VIEWS, named, numeric
from classifier.labelfile import Example, Labels
from classifier.metrics import apgr, routing_curve
from classifier.router import CLIP, FAMILIAR_TAIL, PolicyTable, Router

ALPHAS = (1.0, 3.0, 10.0)
FOLDS = 5
DEFAULT_POLICY = {"quality_floor": 0.95}


def design(texts: list[str], vocab: dict[str, int], mean: np.ndarray, scale: np.ndarray,
           views: tuple[str, ...] = VIEWS) -> sp.csr_matrix:
    """The matrix Router.score evaluates by hand: normalised n-gram indicators, then standardised numbers."""
    return Design(texts, views).matrix(np.arange(len(texts)), vocab, mean, scale)


class Design:
    """Features of one set of prompts, fitted (vocabulary, standardisation) on a subset of them."""

    def __init__(self, texts: list[str], views: tuple[str, ...] = VIEWS, min_df: int = 2) -> None:
        self.grams = [{g for g in named(t) if g[0] in views} for t in texts]
        self.raw = np.array([numeric(t) for t in texts])
        self.min_df = min_df

    def fit(self, rows: np.ndarray) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        counts = Counter(g for i in rows for g in self.grams[i])
        vocab = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= self.min_df))}
        mean, scale = self.raw[rows].mean(0), self.raw[rows].std(0)
        scale[scale == 0] = 1.0
        return vocab, mean, scale

    def matrix(self, rows: np.ndarray, vocab: dict[str, int], mean: np.ndarray, scale: np.ndarray) -> sp.csr_matrix:
        r, c, v = [], [], []
        for k, i in enumerate(rows):
            norm = 1.0 / math.sqrt(len(self.grams[i]) or 1)
            hits = [vocab[g] for g in self.grams[i] if g in vocab]
            r += [k] * len(hits)
            c += hits
            v += [norm] * len(hits)
        indicators = sp.csr_matrix((v, (r, c)), shape=(len(rows), len(vocab)))
        numbers = np.clip((self.raw[rows] - mean) / scale, -CLIP, CLIP)
        return sp.hstack([indicators, sp.csr_matrix(numbers)], format="csr")


def folds(examples: list[Example], k: int = FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    groups = [e.group or e.prompt for e in examples]
    return list(GroupKFold(min(k, len(set(groups)))).split(examples, groups=groups))


def out_of_fold(data: Design, gain: np.ndarray, splits, alpha: float) -> np.ndarray:
    """Each prompt scored by a ridge fitted without its group."""
    z = np.empty(len(gain))
    for fit_rows, held in splits:
        fitted = data.fit(fit_rows)
        model = Ridge(alpha=alpha).fit(data.matrix(fit_rows, *fitted), gain[fit_rows])
        z[held] = model.predict(data.matrix(held, *fitted))
    return z


def policy_table(score: np.ndarray, quality_small: np.ndarray, quality_large: np.ndarray,
                 deployed: np.ndarray | None = None) -> PolicyTable:
    """share -> quality measured on held-out scores; quality is relative to always taking the stronger tier.
    Thresholds sit halfway between neighbouring scores, so unseen scores fall on the measured side. With
    `deployed` (the final model's scores of the same prompts) a share's threshold is that quantile of them:
    the out-of-fold models score on a slightly different scale than the one that ships."""
    curve = routing_curve(score, quality_small, quality_large)
    ranked = np.sort(score if deployed is None else deployed)[::-1]
    ranked = np.r_[np.inf, ranked, -np.inf]
    k = np.rint(curve.share * (len(ranked) - 2)).astype(int)
    cuts = np.where(k == 0, np.inf, np.where(k == len(ranked) - 2, -np.inf, (ranked[k] + ranked[k + 1]) / 2))
    return PolicyTable(cuts, curve.share, curve.quality / max(curve.quality_large, 1e-12))


def familiarity(data: Design, splits) -> dict:
    """What the training prompts looked like, for Router.assess: the share of each prompt's words known to a
    vocabulary fitted without its group (the FAMILIAR_TAIL quantile of it), and the range of the shape numbers."""
    known = np.empty(len(data.grams))
    for fit_rows, held in splits:
        counts = Counter(g for i in fit_rows for g in data.grams[i] if g.startswith("w:"))
        for i in held:
            words = [g for g in data.grams[i] if g.startswith("w:")]
            known[i] = sum(counts[w] >= data.min_df for w in words) / (len(words) or 1)
    low, high = np.quantile(data.raw, [FAMILIAR_TAIL / 2, 1 - FAMILIAR_TAIL / 2], axis=0)
    return {"known_words": float(np.quantile(known, FAMILIAR_TAIL)), "shape_low": low.tolist(), "shape_high": high.tolist()}


def platt(z: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Maps a decision value to the probability that the weakest tier does not suffice."""
    if label.all() or not label.any():
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6).fit(z.reshape(-1, 1), label.astype(int))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def train(labels: Labels, default_policy: dict = DEFAULT_POLICY, alphas=ALPHAS, views: tuple[str, ...] = VIEWS,
          target: np.ndarray | None = None) -> Router:
    """views: which n-gram views to learn from (features.VIEWS); on real prompts char n-grams of the shape
    only add noise (cross-subject APGR 0.52 with them, 0.56 without). target: what the ridge regresses, one per
    example (default the gain: strongest tier's score minus the weakest's); the tables use the scores as they are."""
    ex = labels.examples
    scores = np.array([e.scores for e in ex])
    gain = scores[:, -1] - scores[:, 0] if target is None else np.asarray(target, dtype=np.float64)
    data, splits = Design([e.prompt for e in ex], views), folds(ex)
    oof = {a: out_of_fold(data, gain, splits, a) for a in alphas}
    cv_apgr = {a: _apgr(z, scores) for a, z in oof.items()}
    alpha = max(cv_apgr, key=cv_apgr.get)
    a, b = platt(oof[alpha], gain > 0)
    router = fit_final(data, gain, alpha, (a, b))
    router.meta = {"familiar": familiarity(data, splits)}
    held_out = 1.0 / (1.0 + np.exp(-np.clip(a * oof[alpha] + b, -50, 50)))
    router.tiers = tuple(labels.tiers)
    deployed = np.array([router.score(e.prompt) for e in ex])
    router.tables = [policy_table(held_out, scores[:, k], scores[:, k + 1], deployed)
                     for k in range(len(labels.tiers) - 1)]
    confidence = [e.confidence for e in ex]
    if None not in confidence:
        router.cascade = policy_table(-np.array(confidence), scores[:, 0], scores[:, -1])
    router.meta |= {
        "default_policy": default_policy, "tiers": list(labels.tiers), "views": list(views), "alpha": alpha, "cv_apgr": cv_apgr[alpha],
        "examples": len(ex), "groups": len({e.group for e in ex}),
        "trained": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    router.threshold_for()  # a default policy the tables cannot answer fails here, not in the gateway
    return router


def fit_final(data: Design, gain: np.ndarray, alpha: float, scaling: tuple[float, float]) -> Router:
    rows = np.arange(len(gain))
    vocab, mean, scale = data.fit(rows)
    model = Ridge(alpha=alpha).fit(data.matrix(rows, vocab, mean, scale), gain)
    coef = model.coef_
    return Router(
        weights={g: float(coef[i]) for g, i in vocab.items() if coef[i] != 0.0},
        numeric_mean=mean.tolist(), numeric_scale=scale.tolist(), numeric_weight=coef[len(vocab):].tolist(),
        intercept=float(model.intercept_), platt=scaling, tables=[],
    )


def _apgr(z: np.ndarray, scores: np.ndarray) -> float:
    curve = routing_curve(z, scores[:, 0], scores[:, -1])
    return apgr(curve) if curve.quality_large > curve.quality_small else 0.5
