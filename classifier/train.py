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
        self.texts = texts
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


def fit_linear(data: Design, rows: np.ndarray, y: np.ndarray, alpha: float, shape_weight: float = 0.0):
    """The ridge on n-grams and shape numbers, plus (shape_weight > 0) a ridge on the shape numbers alone, each
    divided by the spread of its own fitted values and summed: still one linear model, which Router.score
    evaluates. Why: the n-gram ridge learns what marks a hard prompt of the kinds it saw (an MMLU subject's
    words) and carries poorly to a kind it never saw; the ten shape numbers carry across kinds (docs/BENCHMARKS.md,
    folds held out by source), so they get a say of their own that the many n-gram weights cannot outvote.
    Returns (vocab, mean, scale), the coefficients (n-grams then numbers) and the intercept."""
    fitted = data.fit(rows)
    x = data.matrix(rows, *fitted)
    model = Ridge(alpha=alpha).fit(x, y)
    coef, intercept = model.coef_ / (spread := model.predict(x).std() or 1.0), model.intercept_ / spread
    if shape_weight:
        shape = x[:, len(fitted[0]):].toarray()
        alone = Ridge(alpha=alpha).fit(shape, y)
        spread = (alone.predict(shape).std() or 1.0) / shape_weight
        coef[len(fitted[0]):] += alone.coef_ / spread
        intercept += alone.intercept_ / spread
    return fitted, coef, float(intercept)


def predict(data: Design, rows: np.ndarray, fitted, coef: np.ndarray, intercept: float) -> np.ndarray:
    return data.matrix(rows, *fitted) @ coef + intercept


def out_of_fold(data: Design, gain: np.ndarray, splits, alpha: float, shape_weight: float = 0.0) -> np.ndarray:
    """Each prompt scored by a model fitted without its group."""
    z = np.empty(len(gain))
    for fit_rows, held in splits:
        z[held] = predict(data, held, *fit_linear(data, fit_rows, gain[fit_rows], alpha, shape_weight))
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


def familiarity(data: Design, splits, kinds: list[str]) -> dict:
    """What the training prompts looked like, for Router.assess: the share of each prompt's words known to a
    vocabulary fitted without its group (the FAMILIAR_TAIL quantile of it), and the range of the shape numbers.
    Taken per kind of prompt (the label file a prompt came from) and joined, the lowest bar and the widest range:
    pooled, a small source's prompts (415 short open-ended ones beside 11k exam questions) sit in the pooled
    tails, and a third of them were called unfamiliar though the router was trained on them."""
    known = np.empty(len(data.grams))
    for fit_rows, held in splits:
        counts = Counter(g for i in fit_rows for g in data.grams[i] if g.startswith("w:"))
        for i in held:
            words = [g for g in data.grams[i] if g.startswith("w:")]
            known[i] = sum(counts[w] >= data.min_df for w in words) / (len(words) or 1)
    kinds = np.asarray(kinds)
    per_kind = [np.flatnonzero(kinds == k) for k in sorted(set(kinds))]
    bar = min(np.quantile(known[rows], FAMILIAR_TAIL) for rows in per_kind)
    ranges = [np.quantile(data.raw[rows], [FAMILIAR_TAIL / 2, 1 - FAMILIAR_TAIL / 2], axis=0) for rows in per_kind]
    low, high = np.min([r[0] for r in ranges], axis=0), np.max([r[1] for r in ranges], axis=0)
    return {"known_words": float(bar), "shape_low": low.tolist(), "shape_high": high.tolist()}


def platt(z: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Maps a decision value to the probability that the weakest tier does not suffice."""
    if label.all() or not label.any():
        return 1.0, 0.0
    fit = LogisticRegression(C=1e6).fit(z.reshape(-1, 1), label.astype(int))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def train(labels: Labels, default_policy: dict = DEFAULT_POLICY, alphas=ALPHAS, views: tuple[str, ...] = VIEWS,
          target: np.ndarray | None = None, shape_weight: float = 0.0) -> Router:
    """views: which n-gram views to learn from (features.VIEWS); on real prompts char n-grams of the shape
    only add noise (cross-subject APGR 0.52 with them, 0.56 without). target: what the ridge regresses, one per
    example (default the gain: strongest tier's score minus the weakest's); the tables use the scores as they are.
    shape_weight: the say of a shape-numbers-only ridge beside the full one (fit_linear)."""
    ex = labels.examples
    scores = np.array([e.scores for e in ex])
    gain = scores[:, -1] - scores[:, 0] if target is None else np.asarray(target, dtype=np.float64)
    data, splits = Design([e.prompt for e in ex], views), folds(ex)
    oof = {a: out_of_fold(data, gain, splits, a, shape_weight) for a in alphas}
    cv_apgr = {a: scores_apgr(z, scores) for a, z in oof.items()}
    alpha = max(cv_apgr, key=cv_apgr.get)
    router = fit_final(data, gain, alpha, shape_weight)
    router.meta = {"familiar": familiarity(data, splits, [e.source for e in ex]), "views": list(views),
                   "alpha": alpha, "shape_weight": shape_weight, "cv_apgr": cv_apgr[alpha],
                   "gain_per_unit": gain_per_unit(oof[alpha], gain)}
    return calibrate(router, labels, oof[alpha], gain, default_policy)


def calibrate(router: Router, labels: Labels, oof: np.ndarray, gain: np.ndarray, default_policy: dict) -> Router:
    """Platt scaling and the policy tables from out-of-fold decision values `oof` of the labelled prompts (each
    scored by a model that never saw it); the tiers, counts and default policy into the meta."""
    ex = labels.examples
    scores = np.array([e.scores for e in ex])
    a, b = router.platt = platt(oof, gain > 0)
    held_out = 1.0 / (1.0 + np.exp(-np.clip(a * oof + b, -50, 50)))
    router.tiers = tuple(labels.tiers)
    deployed = np.array([router.score(e.prompt) for e in ex])
    router.tables = [policy_table(held_out, scores[:, k], scores[:, k + 1], deployed)
                     for k in range(len(labels.tiers) - 1)]
    confidence = [e.confidence for e in ex]
    router.cascade = policy_table(-np.array(confidence), scores[:, 0], scores[:, -1]) if None not in confidence else None
    router.meta |= {"default_policy": default_policy, "tiers": list(labels.tiers), "examples": len(ex),
                    "groups": len({e.group for e in ex}), "trained": datetime.datetime.now().isoformat(timespec="seconds")}
    router.threshold_for()  # a default policy the tables cannot answer fails here, not in the gateway
    return router


def fit_final(data: Design, gain: np.ndarray, alpha: float, shape_weight: float = 0.0) -> Router:
    (vocab, mean, scale), coef, intercept = fit_linear(data, np.arange(len(gain)), gain, alpha, shape_weight)
    return Router(
        weights={g: float(coef[i]) for g, i in vocab.items() if coef[i] != 0.0},
        numeric_mean=mean.tolist(), numeric_scale=scale.tolist(), numeric_weight=coef[len(vocab):].tolist(),
        intercept=intercept, platt=(1.0, 0.0), tables=[],
    )


def gain_per_unit(oof: np.ndarray, gain: np.ndarray) -> float:
    """The gain one unit of out-of-fold decision value stands for (least-squares slope): what fine-tuning
    (classifier/tune.py) scales a prior's score by, so that it is worth what it predicted on prompts it never saw."""
    spread = oof.var()
    return float(np.cov(oof, gain, bias=True)[0, 1] / spread) if spread > 0 else 0.0


def scores_apgr(z: np.ndarray, scores: np.ndarray) -> float:
    """APGR of decision values z over the weakest and the strongest tier's scores (0.5 where there is no gap)."""
    curve = routing_curve(z, scores[:, 0], scores[:, -1])
    return apgr(curve) if curve.quality_large > curve.quality_small else 0.5
