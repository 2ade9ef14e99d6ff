"""Label generation against the bundled model pair: batching must not change what a model answers."""
import math

import pytest
import torch

from classifier.labels import MODELS, Pair


PROMPTS = ["add 3 5", "reverse: a b c d e f", "sort: 9 1 4", "continue: Full fathom five thy father lies; of his bones"]


@pytest.fixture(scope="module")
def pair():
    threads = torch.get_num_threads()
    yield Pair(batch_size=4)
    torch.set_num_threads(threads)  # Pair pins one thread; the rest of the suite keeps its own


def test_batched_greedy_answers_match_one_at_a_time(pair):
    for model in (pair.small, pair.large):
        batched = pair.generate(model, PROMPTS, 12)
        alone = [pair.generate(model, [p], 12)[0] for p in PROMPTS]
        assert [a.ids for a in batched] == [a.ids for a in alone]
        assert [a.mean_logprob for a in batched] == pytest.approx([a.mean_logprob for a in alone], abs=1e-4)


def test_the_judge_agrees_with_the_large_models_own_confidence(pair):
    answers = pair.generate(pair.large, PROMPTS, 12)
    judged = pair.judge(PROMPTS, answers)
    for answer, quality in zip(answers, judged):
        assert 0.0 < quality <= 1.0
        if answer.ids[-1] != pair.tok.eos_token_id:  # no end of turn: both average the same tokens
            assert math.log(quality) == pytest.approx(answer.mean_logprob, abs=1e-4)
