"""The router the gateway holds: text in, difficulty out, and the threshold that meets a tenant's target.

Scoring is a calibrated linear model evaluated by hand (a dict of n-gram weights and a few numeric
weights) rather than through scikit-learn, whose per-call overhead alone is a tenth of a millisecond.
This module needs only numpy, so the gateway never imports scikit-learn.
"""
from __future__ import annotations

import json
import math
import zlib
from itertools import repeat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.features import NUMERIC_NAMES, VIEWS, grams, numeric

# Prompts of one shape (every "add 00000 00000") score alike, and a threshold could only take or leave
# the whole lump, missing a tenant's large-share target by its size. A tiny jitter fixed by the text
# orders such prompts arbitrarily but repeatably, so a threshold can split the lump: random
# tie-breaking, which is what the evaluation curve assumes between its vertices.
JITTER = 1e-6
# standardised numbers beyond this many deviations (a 10k-line paste) say nothing more
CLIP = 5.0
# the share of training prompts (the least alike) a prompt must be stranger than to be called unfamiliar
FAMILIAR_TAIL = 0.01
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEFAULT_PATH = ARTIFACTS / "router.npz"  # the bundled pair's router
# shipped artifacts by name: `general` is trained on real prompts of a real strong/weak pair (exam questions and
# open-ended instructions) by `python -m classifier.general`
SHIPPED = {"bundled": DEFAULT_PATH, "general": ARTIFACTS / "general.npz"}


@dataclass(frozen=True)
class PolicyTable:
    """Measured on held-out data: sending score >= threshold[i] large costs share[i] large calls and
    keeps quality[i] of the all-large quality. Thresholds descend from +inf (all small) to -inf (all large)."""

    threshold: np.ndarray
    share: np.ndarray
    quality: np.ndarray

    def threshold_for(self, quality_floor: float | None = None, large_share: float | None = None) -> float:
        """Route large iff score >= this. With both targets the share is a cap: the floor is met if it can be
        within the share, otherwise the share wins (a budget is a promise; quality is a best effort)."""
        if quality_floor is None and large_share is None:
            raise ValueError("give a target: quality_floor, large_share, or both")
        if quality_floor is not None and large_share is not None:
            return max(self.threshold_for(quality_floor=quality_floor), self.threshold_for(large_share=large_share))
        if large_share is not None:
            if not 0.0 <= large_share <= 1.0:
                raise ValueError(f"large_share must be within [0, 1], got {large_share}")
            # the most large calls that stay within the share
            return float(self.threshold[np.flatnonzero(self.share <= large_share + 1e-9)[-1]])
        if not 0.0 <= quality_floor <= 1.0:
            raise ValueError(f"quality_floor must be within [0, 1] (a fraction of the large model's quality), got {quality_floor}")
        # the fewest large calls that reach the floor; an unreachable floor sends everything large
        meets = np.flatnonzero(self.quality >= quality_floor - 1e-9)
        return float(self.threshold[meets[0]]) if len(meets) else float("-inf")


@dataclass
class Router:
    weights: dict[str, float]  # "<view>:<gram>" -> weight, applied to the L2-normalised indicator vector
    numeric_mean: list[float]
    numeric_scale: list[float]
    numeric_weight: list[float]
    intercept: float
    platt: tuple[float, float]  # p = sigmoid(a * z + b), fitted on out-of-fold decision values
    tables: list[PolicyTable]  # one per boundary between neighbouring tiers, weakest boundary first
    cascade: PolicyTable | None = None
    meta: dict = field(default_factory=dict)
    tiers: tuple[str, ...] = ("small", "large")  # the labels' models, weakest first

    def __post_init__(self) -> None:
        # one dict per view, keyed by the bare gram, so scoring never builds "<view>:<gram>" strings
        self._views: list[dict[str, float]] = [{} for _ in VIEWS]
        for name, weight in self.weights.items():
            view, gram = name.split(":", 1)
            self._views[VIEWS.index(view)][gram] = weight

    @property
    def route(self) -> PolicyTable:
        """The boundary below the strongest tier: the whole policy of a two-tier group."""
        return self.tables[-1]

    def score(self, text: str) -> float:
        """Difficulty in [0, 1]: the calibrated probability that the small model does not suffice."""
        return self.assess(text)[0]

    def assess(self, text: str) -> tuple[float, bool]:
        """The score, and whether the text is unlike the training prompts (so the score says little about it)."""
        found, shape = grams(text, chars=bool(self._views[-1])), numeric(text)
        z = self._decision(found, shape)
        a, b = self.platt
        p = 1.0 / (1.0 + math.exp(-min(max(a * z + b, -50.0), 50.0)))
        score = min(max(p + JITTER * (zlib.crc32(text.encode()) / 2**32 - 0.5), 0.0), 1.0)
        return score, self._unfamiliar(found[0], shape)

    def decision(self, text: str) -> float:
        """The linear model's value before calibration (what training fits and fine-tuning starts from)."""
        return self._decision(grams(text, chars=bool(self._views[-1])), numeric(text))

    def _decision(self, found: tuple[set[str], ...], shape: list[float]) -> float:
        hits = sum(sum(map(w.get, f, repeat(0.0))) for w, f in zip(self._views, found))
        z = self.intercept + hits / math.sqrt(sum(map(len, found)) or 1)
        for x, m, s, c in zip(shape, self.numeric_mean, self.numeric_scale, self.numeric_weight):
            z += c * min(max((x - m) / s, -CLIP), CLIP)
        return z

    def _unfamiliar(self, words: set[str], shape: list[float]) -> bool:
        """Fewer of its words known than all but FAMILIAR_TAIL of the training prompts had (each measured against a
        vocabulary fitted without it), or a shape number outside the training prompts' range. An artifact
        trained before it stored `familiar` flags nothing."""
        familiar = self.meta.get("familiar")
        if not familiar:
            return False
        known = sum(w in self._views[0] for w in words) / (len(words) or 1)
        outside = any(not lo <= x <= hi for x, lo, hi in zip(shape, familiar["shape_low"], familiar["shape_high"]))
        return known < familiar["known_words"] or outside

    def threshold_for(self, quality_floor: float | None = None, large_share: float | None = None) -> float:
        """Route large iff score >= this. quality_floor is a fraction of the all-large quality; large_share
        the most calls that may go large (a cap when both are given). With neither, the artifact's default."""
        if quality_floor is None and large_share is None:
            return self.route.threshold_for(**self.meta["default_policy"])
        return self.route.threshold_for(quality_floor, large_share)

    def tier_thresholds(self, quality_floor: float | None = None, large_share: float | None = None) -> list[float]:
        """One threshold per boundary between neighbouring tiers, each calibrated on those two tiers' labels:
        a step up is taken where needed to keep its share of quality_floor (the steps' kept fractions multiply, so
        each keeps floor ** (1 / steps) of the next tier's quality); large_share caps the calls that reach the
        strongest tier (lower steps then keep the default floor). Made non-decreasing, so a prompt that earns a
        tier also earns every tier below it."""
        if quality_floor is None and large_share is None:
            quality_floor, large_share = (self.meta["default_policy"].get(k) for k in ("quality_floor", "large_share"))
        lower_floor = quality_floor if quality_floor is not None else self.meta["default_policy"].get("quality_floor", 0.95)
        per_step = lower_floor ** (1 / len(self.tables))
        cuts = [t.threshold_for(quality_floor=per_step) for t in self.tables[:-1]]
        top_floor = None if quality_floor is None else per_step
        cuts.append(self.route.threshold_for(top_floor, large_share))
        return np.maximum.accumulate(cuts).tolist()

    def tier_for(self, score: float, thresholds: list[float]) -> int:
        """Index of the tier (weakest 0) a score earns under thresholds from tier_thresholds."""
        return sum(score >= t for t in thresholds)

    def cascade_escalate(self, small_logprobs: list[float], quality_floor: float | None = None,
                         large_share: float | None = None) -> bool:
        """Cascade mode: after the small model answered, ask the large one too when the small model's
        own confidence (mean log-probability of its answer's tokens) is below the calibrated cut."""
        if self.cascade is None:
            raise ValueError("this router artifact has no cascade calibration")
        if not small_logprobs:
            return True
        if quality_floor is None and large_share is None:
            cut = self.cascade.threshold_for(**self.meta["default_policy"])
        else:
            cut = self.cascade.threshold_for(quality_floor, large_share)
        return -sum(small_logprobs) / len(small_logprobs) >= cut

    def save(self, path: Path = DEFAULT_PATH) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(self.weights)
        arrays = {
            "gram_names": np.array(names, dtype=str),
            "gram_weights": np.array([self.weights[n] for n in names], dtype=np.float32),
            "numeric": np.array([self.numeric_mean, self.numeric_scale, self.numeric_weight], dtype=np.float64),
            "linear": np.array([self.intercept, *self.platt], dtype=np.float64),
            "meta": np.array(json.dumps({**self.meta, "numeric_names": list(NUMERIC_NAMES)})),
        }
        arrays["tiers"] = np.array(self.tiers, dtype=str)
        named_tables = [(f"table_{k}", t) for k, t in enumerate(self.tables)] + [("cascade", self.cascade)]
        for name, table in named_tables:
            if table is not None:
                arrays[name] = np.stack([table.threshold, table.share, table.quality])
        with open(path, "wb") as f:  # np.savez would append ".npz" to a path lacking it
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path | str | None = None) -> "Router":
        """From a path, or a shipped artifact's name (`general`, `bundled`)."""
        path = SHIPPED.get(str(path), Path(path)) if path is not None else DEFAULT_PATH
        if not path.exists():
            raise FileNotFoundError(f"no router artifact at {path}; build one with `ferryman router train`")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.pop("numeric_names") != list(NUMERIC_NAMES):
                raise ValueError(f"{path} was trained on other numeric features; retrain it")
            names, weights = z["gram_names"].tolist(), z["gram_weights"].astype(np.float64).tolist()
            mean, scale, coef = z["numeric"].tolist()
            intercept, a, b = z["linear"].tolist()
            tiers = tuple(z["tiers"].tolist())
            tables = [PolicyTable(*z[f"table_{k}"]) for k in range(len(tiers) - 1)]
            cascade = PolicyTable(*z["cascade"]) if "cascade" in z else None
        return cls(dict(zip(names, weights)), mean, scale, coef, intercept, (a, b), tables, cascade, meta, tiers)
