"""Task families with checkable answers and graded difficulty, plus free-text prompts.

The bundled models are trained on these tasks (bench/train_models.py) and measured on them, so the
classifier can learn which prompts the small model gets wrong. Pure Python: no torch here.

Chat format of one task, as the models see it: `<|bos|><|user|>{prompt}<|assistant|>{answer}<|eos|>`.
Letters and digits in task strings are space-separated so that each one is its own token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
FAMILIES: tuple[str, ...] = ("add", "copy", "reverse", "sort")

# Difficulty grows with the length of what must be handled: digits per operand for add,
# letters for copy and reverse, digits for sort. Level n uses entry n-1.
LENGTHS: dict[str, tuple[int, ...]] = {
    "add": (1, 2, 3, 4, 5),
    "copy": (3, 6, 10, 14, 18),
    "reverse": (2, 4, 6, 8, 10),
    "sort": (3, 5, 7, 9, 12),
}

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"

# Held-out literature (a play never used in training), written by bench/train_models.py.
HELDOUT_TEXT = Path(__file__).resolve().parents[1] / "models" / "heldout.txt"


@dataclass(frozen=True)
class Task:
    family: str
    level: int
    prompt: str
    answer: str


def _number(rng: random.Random, digits: int) -> int:
    if digits == 1:
        return rng.randrange(10)
    return rng.randrange(10 ** (digits - 1), 10**digits)


def make_task(family: str, level: int, rng: random.Random) -> Task:
    if family not in LENGTHS:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    size = LENGTHS[family][level - 1]
    if family == "add":
        a, b = _number(rng, size), _number(rng, size)
        return Task(family, level, f"add {a} {b}", str(a + b))
    if family == "sort":
        items = [rng.choice(DIGITS) for _ in range(size)]
        return Task(family, level, "sort: " + " ".join(items), " ".join(sorted(items)))
    items = [rng.choice(LETTERS) for _ in range(size)]
    answer = items if family == "copy" else items[::-1]
    return Task(family, level, f"{family}: " + " ".join(items), " ".join(answer))


def make_tasks(
    n: int, seed: int, levels: range | tuple[int, ...] = range(1, 6), families: tuple[str, ...] | list[str] | None = None
) -> list[Task]:
    """n tasks, balanced over families and levels (cycling), deterministic for a given seed."""
    families = tuple(families or FAMILIES)
    levels = tuple(levels)
    rng = random.Random(seed)
    cells = [(f, lv) for lv in levels for f in families]
    return [make_task(*cells[i % len(cells)], rng) for i in range(n)]


def is_correct(task: Task, output_text: str) -> bool:
    return output_text.strip() == task.answer


def continue_sample(words: list[str], rng: random.Random) -> tuple[str, str]:
    """A `continue: <passage>` prompt cut from a text's words, and the words that follow it there."""
    n_prompt, n_answer = rng.randint(8, 30), rng.randint(8, 24)
    start = rng.randrange(0, len(words) - n_prompt - n_answer)
    passage = " ".join(words[start : start + n_prompt])
    answer = " ".join(words[start + n_prompt : start + n_prompt + n_answer])
    return "continue: " + passage, answer


def make_text_prompts(n: int, seed: int) -> list[str]:
    """Free-text prompts with no checkable answer, cut from held-out text the models never saw."""
    words = HELDOUT_TEXT.read_text(encoding="utf-8").split()
    rng = random.Random(seed)
    return [continue_sample(words, rng)[0] for _ in range(n)]
