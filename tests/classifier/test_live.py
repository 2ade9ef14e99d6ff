"""Live targets: a window of recent scores keeps the large share on target when traffic shifts."""
import random

import numpy as np
import pytest

from classifier.live import MIN_SCORES, LiveTargets


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
    live.record_feedback("g", "t", 1.0)
    live.record_feedback("g", "t", 0.5)
    assert live.window("g", "t").feedback_quality() == 0.75
