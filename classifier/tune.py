"""Fine-tuning a router on a tenant's labels, starting from a shipped artifact's weights (`ferryman router train
--from general`) and needing none of the files it was trained on.

A ridge toward the prior. The prior's score is put in the gain's units (its meta's `gain_per_unit`: the slope of
the gain on its out-of-fold scores, so a prior that ranked its own held-out prompts weakly counts for less); a
ridge fits the labels' gain minus that, on the n-grams and shape numbers plus the prior's score as a column of its
own (so the labels can also say how much the prior is worth on their traffic); the new weights are the prior's,
scaled by that worth, plus the fit. The ridge's penalty does not grow with the labels while their squared error
does, so a few labels move the prior a little and many move it more. The vocabulary is the prior's plus the n-grams
the labels use at least twice; the shape numbers keep the prior's standardisation.

The penalty (the prior's strength) is one of two, picked by cross-validation on the tenant's labels: 3000 keeps
the prior's ranking, 10 (the general recipe's own alpha) lets the labels speak about as freely as a fit from
scratch; the better cross-validated APGR wins, a tie keeps the prior. Why not more strengths and the strongest
within one standard error of the best (the rule before): on 25-200 labels the strengths' cross-validated APGRs lie
within one standard error of each other, so it kept a prior that is at random on the labels' kind (AlpacaEval-dev:
0.51-0.52 held out over 20 draws, where the labels alone score 0.53-0.54; bench/router_eval.py, learning curve).
The out-of-fold scores are levelled per fold: each fold's model has an intercept of its own (its training labels'
mean gain less their mean score), which on a few dozen labels differs between folds by chance, so pooled as they
were the folds ranked above one another (GSM8K, 25 labels, 5 draws: 0.19-0.53 cross-validated at strength 3000
where the prior itself scored 0.47-0.68 on the same labels); each held-out score is moved by the folds' mean
intercept minus its own fold's.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from classifier.labelfile import Labels
from classifier.router import FAMILIAR_TAIL, Router
from classifier.train import DEFAULT_POLICY, Design, calibrate, folds, gain_per_unit, scores_apgr

STRENGTHS = (3000.0, 10.0)  # the prior kept, the labels about free (module docstring); a tie keeps the prior


def shifted(prior: Router, data: Design, rows: np.ndarray, gain: np.ndarray, strength: float) -> Router:
    """The prior moved by the labels of `rows` at one strength (uncalibrated: platt and tables are the prior's)."""
    counts = Counter(g for i in rows for g in data.grams[i])
    used = sorted(g for g, c in counts.items() if g in prior.weights or c >= data.min_df)
    vocab = {g: k for k, g in enumerate(used)}
    x = data.matrix(rows, vocab, np.array(prior.numeric_mean), np.array(prior.numeric_scale))
    w0 = np.r_[[prior.weights.get(g, 0.0) for g in used], prior.numeric_weight]
    z0 = x @ w0 + prior.intercept
    k = prior.meta["gain_per_unit"]
    # the prior's say is a column of its own, so the labels can also tell how much it is worth on their traffic
    fit = Ridge(alpha=strength).fit(sp.hstack([sp.csr_matrix(z0[:, None]), x], format="csr"), gain[rows] - k * z0)
    c, delta = k + fit.coef_[0], fit.coef_[1:]
    w = c * w0 + delta
    weights = {g: c * v for g, v in prior.weights.items()} | {g: float(w[i]) for g, i in vocab.items()}
    return Router(weights, list(prior.numeric_mean), list(prior.numeric_scale), w[len(vocab):].tolist(),
                  c * prior.intercept + float(fit.intercept_), prior.platt, prior.tables, None, dict(prior.meta),
                  prior.tiers)


def out_of_fold(prior: Router, data: Design, gain: np.ndarray, splits, strength: float) -> np.ndarray:
    """Each labelled prompt scored by the prior shifted by the other folds' labels, on a common level (module
    docstring): the fold's intercept swapped for the folds' mean one."""
    z, intercept = np.empty(len(gain)), np.empty(len(gain))
    for fit_rows, held in splits:
        tuned = shifted(prior, data, fit_rows, gain, strength)
        z[held] = [tuned.decision(data.texts[i]) for i in held]
        intercept[held] = tuned.intercept
    return z - intercept + intercept.mean()


def fine_tune(prior: Router, labels: Labels, default_policy: dict = DEFAULT_POLICY,
              strengths=STRENGTHS) -> Router:
    """The prior moved toward the labels (module docstring), calibrated on the labels like classifier.train."""
    if "gain_per_unit" not in prior.meta:
        raise ValueError("that router was trained before fine-tuning could start from it; retrain it")
    ex = labels.examples
    scores = np.array([e.scores for e in ex])
    gain = scores[:, -1] - scores[:, 0]
    data, splits = Design([e.prompt for e in ex], tuple(prior.meta["views"])), folds(ex)
    oof = {s: out_of_fold(prior, data, gain, splits, s) for s in strengths}
    cv = {s: scores_apgr(z, scores) for s, z in oof.items()}
    strength = max(strengths, key=cv.get)  # the first of equals: the strongest prior
    router = shifted(prior, data, np.arange(len(ex)), gain, strength)
    router.meta = {k: v for k, v in prior.meta.items() if k in ("views", "licence", "shape_weight")}
    router.meta |= {"familiar": widened(prior, data), "fine_tuned_from": prior.meta.get("trained_on", []),
                    "prior_strength": strength, "alpha": strength, "cv_apgr": cv[strength],
                    "gain_per_unit": gain_per_unit(oof[strength], gain),
                    "apgr_prior": scores_apgr(np.array([prior.decision(e.prompt) for e in ex]), scores)}
    return calibrate(router, labels, oof[strength], gain, default_policy)


def widened(prior: Router, data: Design) -> dict:
    """The prior's familiarity, widened to take the labelled prompts in: their shape range, and the bar lowered to
    the FAMILIAR_TAIL quantile of their known-word share against the prior's vocabulary."""
    familiar = dict(prior.meta["familiar"])
    known = [np.mean([g in prior.weights for g in words]) if (words := [g for g in grams if g.startswith("w:")])
             else 0.0 for grams in data.grams]
    familiar["known_words"] = float(min(familiar["known_words"], np.quantile(known, FAMILIAR_TAIL)))
    low, high = np.quantile(data.raw, [FAMILIAR_TAIL / 2, 1 - FAMILIAR_TAIL / 2], axis=0)
    familiar["shape_low"] = np.minimum(familiar["shape_low"], low).tolist()
    familiar["shape_high"] = np.maximum(familiar["shape_high"], high).tolist()
    return familiar
