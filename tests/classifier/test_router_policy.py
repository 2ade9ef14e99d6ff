import math

import numpy as np
import pytest
import scipy.sparse as sp

from classifier.router import Router
from classifier.train import Design, design, fit_linear, folds, train


@pytest.fixture(scope="module")
def unseen(labels, make_labels):
    """Fresh prompts from the same distribution, none of them trained or calibrated on."""
    seen = {e.prompt for e in labels.examples}
    return [e for e in make_labels(3000, seed=1).examples if e.prompt not in seen]


def outcome(router, examples, **target):
    score = np.array([router.score(e.prompt) for e in examples])
    large = score >= router.threshold_for(**target)
    qs, ql = (np.array([getattr(e, f) for e in examples]) for f in ("quality_small", "quality_large"))
    return large.mean(), np.where(large, ql, qs).mean() / ql.mean()


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.8])
def test_a_calibrated_large_share_holds_on_unseen_prompts(router, unseen, share):
    measured, _ = outcome(router, unseen, large_share=share)
    assert measured == pytest.approx(share, abs=0.06)


@pytest.mark.parametrize("floor", [0.85, 0.9, 0.95])
def test_a_calibrated_quality_floor_holds_on_unseen_prompts(router, unseen, floor):
    share, quality = outcome(router, unseen, quality_floor=floor)
    assert quality >= floor - 0.03
    assert share < 1.0  # met by routing, not by sending everything large


def test_hard_prompts_score_higher_and_the_router_beats_random(router, unseen):
    by_digits = {d: np.mean([router.score(e.prompt) for e in unseen if e.task == f"add{d}"]) for d in (2, 6)}
    assert by_digits[6] > by_digits[2] + 0.2
    low, high = outcome(router, unseen, large_share=0.3)[1], outcome(router, unseen, large_share=0.5)[1]
    assert low < high


def test_with_both_targets_the_share_caps_the_floor(router):
    floor, cap = router.threshold_for(quality_floor=0.95), router.threshold_for(large_share=0.1)
    assert floor < cap  # the floor alone would need more than 10% large calls
    assert router.threshold_for(quality_floor=0.95, large_share=0.1) == cap
    assert router.threshold_for(quality_floor=0.95, large_share=1.0) == floor


def test_thresholds_are_monotone_in_the_target(router):
    shares = [router.threshold_for(large_share=s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert shares == sorted(shares, reverse=True)
    assert shares[0] == math.inf and shares[-1] == -math.inf
    assert router.threshold_for(quality_floor=0.0) == math.inf  # no floor: everything small
    assert router.threshold_for() == router.threshold_for(quality_floor=0.95)


def test_targets_are_validated(router):
    with pytest.raises(ValueError, match="give a target"):
        router.route.threshold_for()
    with pytest.raises(ValueError, match="large_share"):
        router.threshold_for(large_share=1.5)
    with pytest.raises(ValueError, match="quality_floor"):
        router.threshold_for(quality_floor=-0.1)


@pytest.fixture(scope="module")
def words_only(make_labels):
    return train(make_labels(600, seed=3), alphas=(3.0,), views=("w", "b", "s"))


@pytest.fixture(scope="module")
def with_shape(make_labels):
    return train(make_labels(600, seed=3), alphas=(3.0,), views=("w", "b", "s"), shape_weight=1.0)


@pytest.mark.parametrize("which", ["all views", "without char n-grams", "with the shape-numbers ridge"])
def test_hand_written_score_matches_the_training_design_matrix(router, words_only, with_shape, labels, which):
    router = {"all views": router, "without char n-grams": words_only}.get(which, with_shape)
    texts = [e.prompt for e in labels.examples[:50]] + ["", "add 1 2\n" * 400, "Hello there, how are you?"]
    names = sorted(router.weights)
    X = design(texts, {g: i for i, g in enumerate(names)}, np.array(router.numeric_mean),
               np.array(router.numeric_scale), tuple(router.meta["views"]))
    coef = np.r_[[router.weights[g] for g in names], router.numeric_weight]
    a, b = router.platt
    expected = 1 / (1 + np.exp(-(a * (X @ coef + router.intercept) + b)))
    assert [router.score(t) for t in texts] == pytest.approx(expected.tolist(), abs=1e-6)


def test_save_and_load_round_trip(router, labels, tmp_path):
    path = tmp_path / "router.npz"
    router.save(path)
    loaded = Router.load(path)
    texts = [e.prompt for e in labels.examples[:20]]
    assert [loaded.score(t) for t in texts] == pytest.approx([router.score(t) for t in texts], rel=1e-6)
    for share in (0.2, 0.6):
        assert loaded.threshold_for(large_share=share) == router.threshold_for(large_share=share)
    assert loaded.meta["default_policy"] == {"quality_floor": 0.95}
    assert loaded.tiers == ("small", "large") and len(loaded.tables) == 1
    with pytest.raises(FileNotFoundError, match="router train"):
        Router.load(tmp_path / "missing.npz")


def test_cascade_escalates_on_low_confidence(router):
    assert router.cascade_escalate([], large_share=0.5)
    assert router.cascade_escalate([-5.0, -6.0], large_share=0.5)
    assert not router.cascade_escalate([-0.01, -0.02], large_share=0.5)
    # a wider large share escalates at a higher confidence
    assert router.cascade_escalate([-0.6], large_share=0.9) and not router.cascade_escalate([-0.6], large_share=0.1)


def test_folds_hold_out_whole_groups(labels):
    groups = [e.group for e in labels.examples]
    for fit_rows, held in folds(labels.examples):
        assert not {groups[i] for i in fit_rows} & {groups[i] for i in held}


def test_the_shape_ridge_is_summed_into_one_linear_model(labels):
    """fit_linear's blend is the full ridge and the shape-only ridge, each over its own fitted spread, summed with
    the shape weight: the router evaluates it as one model, and weight 0 is the full ridge alone."""
    from sklearn.linear_model import Ridge

    rows = np.arange(400)
    data = Design([e.prompt for e in labels.examples[:400]], ("w", "b", "s"))
    gain = np.array([e.gain for e in labels.examples[:400]])
    fitted, coef, intercept = fit_linear(data, rows, gain, 3.0, shape_weight=2.0)
    x = data.matrix(rows, *fitted)
    full = Ridge(alpha=3.0).fit(x, gain).predict(x)
    shape = Ridge(alpha=3.0).fit(x[:, len(fitted[0]):].toarray(), gain).predict(x[:, len(fitted[0]):].toarray())
    assert x @ coef + intercept == pytest.approx(full / full.std() + 2.0 * shape / shape.std(), abs=1e-9)
    _, alone, b = fit_linear(data, rows, gain, 3.0)
    assert x @ alone + b == pytest.approx(full / full.std(), abs=1e-9)
