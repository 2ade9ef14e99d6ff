"""The shipped router, on the shipped labels: real behaviour of what the gateway loads."""
import numpy as np
import pytest

from classifier.router import Router
from classifier.metrics import auc
from classifier.train import read_labels, splits


@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router.load()


def test_it_loads_and_scores_within_bounds(shipped):
    scores = [shipped.score(t) for t in ("add 1 2", "", "continue: the quick brown fox", "x" * 100_000)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert shipped.cascade is not None
    assert shipped.threshold_for() == shipped.threshold_for(**shipped.meta["default_policy"])


def test_it_tells_where_the_large_model_helps_on_unseen_prompts(shipped):
    # with the bundled pair the distilled small model is as good as the large one or better on most
    # tasks: the router must rank test prompts by where the large model actually helps, not by level
    test = splits(read_labels())["test"]
    score = np.array([shipped.score(e.prompt) for e in test])
    assert auc(score, np.array([e.label for e in test])) > 0.75


def test_calibrated_share_holds_on_the_test_split(shipped):
    test = splits(read_labels())["test"]
    score = np.array([shipped.score(e.prompt) for e in test])
    for share in (0.2, 0.5):
        assert (score >= shipped.threshold_for(large_share=share)).mean() == pytest.approx(share, abs=0.06)
