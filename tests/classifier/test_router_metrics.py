import numpy as np
import pytest

from classifier.metrics import apgr, auc, cpt, quality_at, routing_curve

# 10 prompts; the large model answers all, the small one the first 6: a gap of 0.4 to recover.
LARGE = np.ones(10)
SMALL = np.r_[np.ones(6), np.zeros(4)]
NEEDS_LARGE = LARGE - SMALL


def test_oracle_recovers_the_gap_with_the_fewest_large_calls():
    curve = routing_curve(NEEDS_LARGE, SMALL, LARGE)
    # PGR climbs from 0 to 1 while the 4 hard prompts go large, then stays at 1: area 1 - 0.4 / 2
    assert apgr(curve) == pytest.approx(0.8)
    assert cpt(curve, 0.5) == pytest.approx(0.2)
    assert cpt(curve, 0.8) == pytest.approx(0.32)
    assert quality_at(curve, 0.4) == pytest.approx(1.0)


def test_constant_score_is_the_random_router():
    curve = routing_curve(np.zeros(10), SMALL, LARGE)
    assert apgr(curve) == pytest.approx(0.5)
    assert cpt(curve, 0.5) == pytest.approx(0.5)
    assert cpt(curve, 0.8) == pytest.approx(0.8)
    assert list(curve.share) == [0.0, 1.0]


def test_a_backwards_router_wastes_its_large_calls_first():
    curve = routing_curve(-NEEDS_LARGE, SMALL, LARGE)
    assert apgr(curve) == pytest.approx(0.2)
    assert cpt(curve, 0.5) == pytest.approx(0.8)


def test_ties_are_straight_segments_between_group_ends():
    score = np.array([0.9, 0.9, 0.5, 0.1])
    curve = routing_curve(score, np.array([0.0, 1.0, 0.0, 1.0]), np.ones(4))
    assert list(curve.share) == [0.0, 0.5, 0.75, 1.0]
    assert list(curve.threshold) == [np.inf, 0.9, 0.5, 0.1]
    assert curve.quality == pytest.approx([0.5, 0.75, 1.0, 1.0])


def test_a_router_can_beat_always_large_when_the_small_model_is_sometimes_better():
    small, large = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    curve = routing_curve(np.array([0.0, 1.0, 0.5]), small, large)
    assert curve.quality.max() == pytest.approx(2 / 3)
    assert curve.quality_large == pytest.approx(1 / 3)


def test_auc_known_values():
    label = NEEDS_LARGE.astype(bool)
    assert auc(NEEDS_LARGE, label) == 1.0
    assert auc(-NEEDS_LARGE, label) == 0.0
    assert auc(np.zeros(10), label) == 0.5


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no gap"):
        routing_curve(np.zeros(3), np.ones(3), np.ones(3)).pgr
    with pytest.raises(ValueError, match="one non-zero length"):
        routing_curve(np.zeros(3), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="target"):
        cpt(routing_curve(NEEDS_LARGE, SMALL, LARGE), 1.5)
    with pytest.raises(ValueError, match="both labels"):
        auc(np.zeros(3), np.ones(3))
