"""Router.assess's unfamiliar flag: the bar is taken per kind of training prompt (train.familiarity), so a small
kind among the training files is familiar, and a kind absent from all of them is not."""
import random

import numpy as np
import pytest

from classifier.labelfile import Example, Labels
from classifier.train import train
from tests.classifier.strange_prompts import STRANGE_KINDS

TOPICS = ["the sea", "a garden", "an old friend", "the city at night", "winter", "a long journey", "the market"]


def notes(n: int, seed: int) -> list[str]:
    """Short open-ended requests: a different shape (no digits, longer words) from the sums."""
    rng = random.Random(seed)
    return [f"Write a {rng.choice(['short', 'warm', 'sad', 'funny'])} {rng.choice(['poem', 'letter', 'story'])} "
            f"about {rng.choice(TOPICS)} for {rng.choice(['my sister', 'a teacher', 'children', 'our team'])}."
            for _ in range(n)]


@pytest.fixture(scope="module")
def mixed(labels):
    """3000 sums and 60 notes (2% of the prompts), each note in its own label file's kind."""
    rng = random.Random(5)
    extra = [Example(t, (float(rng.random() < 0.5), 1.0), "note", None, t, "notes") for t in notes(60, seed=6)]
    sums = [Example(e.prompt, e.scores, e.task, e.confidence, e.group, "sums") for e in labels.examples]
    return train(Labels(labels.tiers, sums + extra), alphas=(3.0,))


def test_a_small_kind_among_the_training_files_is_familiar(mixed, make_labels):
    """Pooled with 50 times as many sums, the notes sat in the pooled tails of the shape numbers and most were
    flagged; per kind, fresh notes and fresh sums are flagged about as rarely as the 1% tail the bar is set at."""
    fresh_notes = [mixed.assess(t)[1] for t in notes(200, seed=7)]
    fresh_sums = [mixed.assess(e.prompt)[1] for e in make_labels(500, seed=8).examples]
    assert np.mean(fresh_notes) < 0.1 and np.mean(fresh_sums) < 0.1


def test_kinds_absent_from_every_training_file_are_flagged(mixed):
    strange = [p for kind in STRANGE_KINDS.values() for p in kind]
    assert [mixed.assess(p)[1] for p in strange] == [True] * len(strange)
