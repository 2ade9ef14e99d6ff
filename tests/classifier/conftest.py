import random

import pytest

from classifier.labelfile import Example, Labels
from classifier.train import train

# three fake models: each succeeds less often the more digits the sum has, the weaker the faster
SUCCESS = {"small": lambda d: 1.2 - 0.19 * d, "mid": lambda d: 1.1 - 0.09 * d, "large": lambda d: 1.0 - 0.03 * d}


def synthetic_labels(n: int, seed: int, tiers: tuple[str, ...] = ("small", "large")) -> Labels:
    """Sums whose difficulty grows with the operands' digits. Operands have at least two digits, so prompts
    rarely repeat and seeds give disjoint sets. The task is the digit count."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        digits = rng.randint(2, 6)
        a, b = rng.randrange(10 ** (digits - 1), 10**digits), rng.randrange(10 ** (digits - 1), 10**digits)
        scores = tuple(float(rng.random() < SUCCESS[t](digits)) for t in tiers)
        confidence = -0.3 * digits + rng.gauss(0.0, 0.3)
        prompt = f"add {a} {b}"
        examples.append(Example(prompt, scores, f"add{digits}", confidence, prompt))
    return Labels(tiers, examples)


@pytest.fixture(scope="session")
def make_labels():
    return synthetic_labels


@pytest.fixture(scope="session")
def labels() -> Labels:
    return synthetic_labels(3000, seed=0)


@pytest.fixture(scope="session")
def router(labels):
    return train(labels)
