"""The routing seam with the real router: N tiers by thresholds between neighbours, targets held by the live
window per route group and tenant."""
import random
from types import SimpleNamespace

import pytest

from classifier.labelfile import Example, Labels
from classifier.live import LiveTargets
from classifier.router import Router
from classifier.train import train
from gateway.policies.router import router_tier

TIERS = ["tiny", "mid", "big"]


def tenant(tenant_id=1, quality_floor=None, large_share=None):
    return SimpleNamespace(tenant_id=tenant_id, quality_floor=quality_floor, large_share=large_share)


@pytest.fixture(scope="module")
def three_tier_router():
    """Sums get harder with more digits; the tiny model fails first, the mid one later, the big one rarely."""
    rng, rows = random.Random(0), []
    for _ in range(900):
        d = rng.randint(2, 6)
        scores = tuple(float(rng.random() < p) for p in (1.2 - 0.19 * d, 1.1 - 0.09 * d, 1.0 - 0.03 * d))
        prompt = f"add {rng.randrange(10 ** (d - 1), 10 ** d)} {rng.randrange(10 ** (d - 1), 10 ** d)}"
        rows.append(Example(prompt, scores, f"add{d}", None, prompt))
    return train(Labels(tuple(TIERS), rows), alphas=(3.0,))


def test_three_tiers_are_all_used_and_ordered_by_difficulty(three_tier_router):
    chosen = {d: router_tier(three_tier_router, tenant(quality_floor=0.95), f"add {'7' * d} {'3' * d}", TIERS)[0]
              for d in (2, 6)}
    assert chosen[2] < chosen[6]
    rng = random.Random(1)
    sums = [f"add {rng.randrange(10 ** (d - 1), 10 ** d)} {rng.randrange(10 ** (d - 1), 10 ** d)}"
            for d in [rng.randint(2, 6) for _ in range(300)]]
    used = {router_tier(three_tier_router, tenant(quality_floor=0.95), q, TIERS)[0] for q in sums}
    assert used == {0, 1, 2}


def test_the_live_window_holds_a_large_share_on_traffic_unlike_the_calibration_set():
    general = Router.load("general")
    # only long, digit-heavy prompts arrive: all of them score above the calibration set's typical prompt
    rng = random.Random(2)
    prompts = [f"Compute {rng.randrange(10**5, 10**7)} * {rng.randrange(10**5, 10**7)} and explain each step of "
               f"the carrying, then check the result modulo {rng.randrange(3, 99)}." for _ in range(1200)]
    live, p = LiveTargets(), tenant(large_share=0.3)
    picks = [router_tier(general, p, q, ["weak", "strong"], live, "auto")[0] for q in prompts]
    fixed = [router_tier(general, p, q, ["weak", "strong"])[0] for q in prompts]
    assert sum(picks[-1000:]) / 1000 == pytest.approx(0.3, abs=0.03)
    assert live.window("auto", "1").realised_share() == pytest.approx(0.3, abs=0.03)
    assert abs(sum(fixed) / len(fixed) - 0.3) > 0.03  # the calibrated threshold alone misses it here
