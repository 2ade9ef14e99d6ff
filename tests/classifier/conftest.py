import random

import pytest

from classifier.train import Example, train


def synthetic_examples(n: int, seed: int) -> list[Example]:
    """Sums whose difficulty grows with the operands' digits: the small model fails long ones more often.
    Operands have at least two digits, so prompts rarely repeat and seeds give disjoint sets."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        digits = rng.randint(2, 6)
        a, b = rng.randrange(10 ** (digits - 1), 10**digits), rng.randrange(10 ** (digits - 1), 10**digits)
        small = float(rng.random() < 1.2 - 0.19 * digits)
        large = float(rng.random() < 1.0 - 0.03 * digits)
        confidence = -0.3 * digits + rng.gauss(0.0, 0.3)
        examples.append(Example(f"add {a} {b}", "task", "add", digits - 1, small, large, confidence, large > small))
    return examples


@pytest.fixture(scope="session")
def make_examples():
    return synthetic_examples


@pytest.fixture(scope="session")
def examples() -> list[Example]:
    return synthetic_examples(4000, seed=0)


@pytest.fixture(scope="session")
def router(examples):
    return train(examples)
