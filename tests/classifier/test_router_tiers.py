"""Three tiers: thresholds between neighbouring tiers, calibrated on three models' labels."""
import numpy as np
import pytest

from classifier.train import train

TIERS = ("small", "mid", "large")


@pytest.fixture(scope="module")
def three(make_labels):
    return train(make_labels(3000, seed=10, tiers=TIERS))


@pytest.fixture(scope="module")
def unseen(make_labels):
    return make_labels(2000, seed=11, tiers=TIERS).examples


def routed(router, examples, **target):
    cuts = router.tier_thresholds(**target)
    tier = np.array([router.tier_for(router.score(e.prompt), cuts) for e in examples])
    quality = np.array([e.scores[t] for e, t in zip(examples, tier)])
    return tier, quality.mean() / np.mean([e.scores[-1] for e in examples])


def test_tiers_and_tables_come_from_the_labels(three):
    assert three.tiers == TIERS and len(three.tables) == 2
    cuts = three.tier_thresholds(quality_floor=0.95)
    assert cuts == sorted(cuts)


def test_a_quality_floor_holds_using_every_tier(three, unseen):
    tier, quality = routed(three, unseen, quality_floor=0.95)
    assert quality >= 0.95 - 0.03
    assert set(tier) == {0, 1, 2}  # the middle tier takes what the small one cannot but the large need not
    assert (tier == 2).mean() < 0.8  # measured 0.6
    digits = np.array([int(e.task[3:]) for e in unseen])
    assert tier[digits == 6].mean() > tier[digits == 2].mean()


def test_a_looser_floor_uses_the_expensive_tiers_less(three, unseen):
    strict, _ = routed(three, unseen, quality_floor=0.97)
    loose, _ = routed(three, unseen, quality_floor=0.85)
    assert loose.mean() < strict.mean()


def test_large_share_caps_the_strongest_tier(three, unseen):
    tier, _ = routed(three, unseen, large_share=0.1)
    assert (tier == 2).mean() == pytest.approx(0.1, abs=0.06)
    assert (tier == 1).mean() > 0.1  # lower steps still follow the default floor
