"""The shipped router, on the shipped labels: real behaviour of what the gateway loads."""
import numpy as np
import pytest

from classifier.router import Router
from classifier.metrics import apgr, auc, cpt, routing_curve
from classifier.train import read_labels, splits


@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router.load()


def test_it_loads_and_scores_within_bounds(shipped):
    scores = [shipped.score(t) for t in ("add 1 2", "", "continue: the quick brown fox", "x" * 100_000)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert shipped.cascade is not None
    assert shipped.threshold_for() == shipped.threshold_for(**shipped.meta["default_policy"])


@pytest.fixture(scope="module")
def test_split(shipped):
    """The shipped labels' test split (never trained or calibrated on) and the shipped router's scores."""
    test = splits(read_labels())["test"]
    return test, np.array([shipped.score(e.prompt) for e in test])


def test_it_tells_where_the_large_model_helps_on_unseen_prompts(test_split):
    test, score = test_split
    assert auc(score, np.array([e.label for e in test])) > 0.85  # measured 0.93
    # Longer tasks are where the small model fails (docs/MODELS.md): they score higher than level-1 ones.
    level = np.array([e.level for e in test])
    assert score[level >= 3].mean() > score[level == 1].mean() + 0.2  # measured 0.58 vs 0.24


def test_routing_recovers_most_of_the_gap_on_unseen_prompts(test_split):
    test, score = test_split
    curve = routing_curve(score, *(np.array([getattr(e, f) for e in test]) for f in ("quality_small", "quality_large")))
    assert curve.quality_large > curve.quality_small + 0.3  # the pair has a real gap: measured 0.65 vs 0.23
    # Random routing scores 0.5 on both; measured 0.73 and 0.22 (the oracle: 0.81 and 0.21).
    assert apgr(curve) > 0.65 and cpt(curve, 0.5) < 0.3


def test_calibrated_share_holds_on_the_test_split(shipped, test_split):
    test, score = test_split
    for share in (0.2, 0.5):
        assert (score >= shipped.threshold_for(large_share=share)).mean() == pytest.approx(share, abs=0.06)
