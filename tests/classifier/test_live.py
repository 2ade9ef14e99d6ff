"""Live targets: a window of recent scores keeps the large share on target when traffic shifts."""
import random

import numpy as np
import pytest

from classifier.live import FEEDBACK_SHIFT, MIN_SCORES, MIN_STRONG_FEEDBACK, MIN_WEAK_FEEDBACK, LiveTargets


def route(live, router, scores, tenant="t", **target):
    large = []
    for s in scores:
        cut = live.threshold(router, "default", tenant, s, **target)
        large.append(s >= cut)
        live.record("default", tenant, s >= cut)
    return np.array(large)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_large_share_holds_on_a_shifted_score_distribution(router, share):
    rng = random.Random(share)
    # real prompts score higher than the calibration set: every score pushed halfway up to 1
    shifted = [0.5 + 0.5 * router.score(f"add {rng.randrange(10, 10**6)} {rng.randrange(10, 10**6)}")
               for _ in range(1500)]
    calibrated = np.mean(np.array(shifted) >= router.threshold_for(large_share=share))
    assert calibrated > share + 0.1  # the calibrated threshold alone misses the target on this traffic
    live = LiveTargets()
    large = route(live, router, shifted, large_share=share)
    assert large[-1000:].mean() == pytest.approx(share, abs=0.03)
    assert live.window("default", "t").realised_share() == pytest.approx(share, abs=0.03)


def test_windows_are_per_tenant_and_start_calibrated(router):
    live = LiveTargets()
    low, high = [0.1 + 0.001 * i for i in range(200)], [0.8 + 0.001 * i for i in range(200)]
    route(live, router, low, tenant="a", large_share=0.25)
    route(live, router, high, tenant="b", large_share=0.25)
    assert live.window("a", "a").scores == type(live.window("a", "a").scores)()  # groups and tenants are apart
    a, b = live.windows[("default", "a")], live.windows[("default", "b")]
    assert a.threshold(0.25, 0.0) < 0.3 < 0.8 < b.threshold(0.25, 0.0)
    fresh = LiveTargets()
    assert fresh.threshold(router, "g", "t", 0.5, large_share=0.25) == router.threshold_for(large_share=0.25)
    assert len(fresh.window("g", "t").scores) == 1 < MIN_SCORES


def test_a_quality_floor_becomes_the_share_the_calibration_set_needs(router):
    share = LiveTargets.share_for(router, 0.95, None)
    assert 0.0 < share < 1.0
    assert router.route.quality[list(router.route.share).index(share)] >= 0.95
    live = LiveTargets()
    live.record_feedback("g", "t", strong=True, score=1.0)
    live.record_feedback("g", "t", strong=False, score=0.5)
    assert live.window("g", "t").feedback_quality() == 0.75 and len(live.window("other", "t").feedback) == 0


def graded(live, weak_mean, strong_mean, n_weak=MIN_WEAK_FEEDBACK, n_strong=MIN_STRONG_FEEDBACK, tenant="t"):
    """Feedback whose means are exactly the given ones: half the grades a bit above the mean, half below."""
    for strong, mean, n in ((False, weak_mean, n_weak), (True, strong_mean, n_strong)):
        for i in range(n):
            live.record_feedback("default", tenant, strong=strong, score=mean + (0.05 if i % 2 else -0.05))


@pytest.mark.parametrize("weak_mean, direction", [(0.3, +1), (0.9, -1)])
def test_feedback_moves_a_quality_floor_the_right_way_within_bounds(router, weak_mean, direction):
    rng = random.Random(7)
    scores = [router.score(f"add {rng.randrange(10, 10**6)} {rng.randrange(10, 10**6)}") for _ in range(1500)]
    calibrated = LiveTargets.share_for(router, 0.85, None)
    live = LiveTargets()
    route(live, router, scores[:500], quality_floor=0.85)
    before = live.threshold(router, "default", "t", scores[500], quality_floor=0.85)
    assert live.window("default", "t").target == calibrated
    graded(live, weak_mean, 0.9)
    after = live.threshold(router, "default", "t", scores[501], quality_floor=0.85)
    target = live.window("default", "t").target
    # weak answers graded a third of the strong ones' quality: more strong calls (a lower threshold); graded as well
    # as the strong ones: fewer. Either way feedback moves the share at most FEEDBACK_SHIFT.
    assert direction * (target - calibrated) == pytest.approx(FEEDBACK_SHIFT) and 0.0 <= target <= 1.0
    assert direction * (before - after) > 0
    large = route(live, router, scores[502:], quality_floor=0.85)
    assert large[-1000:].mean() == pytest.approx(target, abs=0.03)  # and the window holds the new share


def test_feedback_meets_the_floor_where_it_can_and_needs_enough_grades(router):
    calibrated = LiveTargets.share_for(router, 0.9, None)
    live = LiveTargets()
    window = live.window("default", "t")
    graded(live, 0.6, 0.8, n_weak=MIN_WEAK_FEEDBACK - 2)
    assert LiveTargets.share_for(router, 0.9, None, window) == calibrated  # too few weak grades: calibration only
    graded(live, 0.6, 0.8, n_weak=2, n_strong=0)
    # weak answers keep 0.75 of the strong tier's quality; s + (1 - s) * 0.75 = 0.9 at s = 0.6
    needed = LiveTargets.share_for(router, 0.9, None, window)
    assert needed == pytest.approx(min(0.6, calibrated + FEEDBACK_SHIFT))
    assert LiveTargets.share_for(router, 0.9, 0.2, window) == 0.2  # a large_share given too stays the cap
    assert LiveTargets.share_for(router, None, 0.3, window) == 0.3  # feedback moves floors, not shares
