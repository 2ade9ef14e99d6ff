"""Labelled prompts in one CSV format for any number of models: `prompt, <model>_score, ...`.

Every `<model>_score` column is one model's quality on the prompt (0/1 correctness, a judge's grade
scaled to [0, 1], ...). Optional columns: `task` (what the prompt belongs to: an MMLU subject, a task
family; cross-validation holds out whole tasks) and `confidence` (the cheapest model's own mean token
log-probability, for the cascade). Anything else (`source`, ...) is kept out of the way.

Tiers are ordered by mean score, weakest first: the weakest model is taken to be the cheapest, which
is why one pays for the stronger ones.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIX = "_score"


@dataclass(frozen=True)
class Example:
    prompt: str
    scores: tuple[float, ...]  # one per tier, weakest first
    task: str = ""
    confidence: float | None = None
    group: str = ""  # what cross-validation holds out together: the task, or the prompt in a one-task file
    source: str = ""  # the label file (its name without .csv): the kind of traffic it stands for

    @property
    def quality_small(self) -> float:
        return self.scores[0]

    @property
    def quality_large(self) -> float:
        return self.scores[-1]

    @property
    def gain(self) -> float:
        """What sending this prompt to the strongest tier instead of the weakest buys."""
        return self.scores[-1] - self.scores[0]

    @property
    def label(self) -> bool:
        """The weakest model does not suffice: the strongest one does better."""
        return self.gain > 0


@dataclass(frozen=True)
class Labels:
    tiers: tuple[str, ...]  # model names, weakest first
    examples: list[Example]


def read_labels(*paths: Path | str) -> Labels:
    """One or more label files with the same models; tiers ordered by mean score over all of them."""
    rows: list[dict] = []
    models: list[str] | None = None
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            found = [c[: -len(SUFFIX)] for c in reader.fieldnames or [] if c.endswith(SUFFIX)]
            if "prompt" not in (reader.fieldnames or []) or len(found) < 2:
                raise ValueError(f"{path}: a label file needs a `prompt` column and two or more `<model>_score` columns")
            if models is not None and set(found) != set(models):
                raise ValueError(f"{path} scores {sorted(found)}, the other files {sorted(models)}")
            models = models or found
            found_rows = list(reader)
        # a file of one task (GSM8K) is held out by problem, a file of many (MMLU) by whole task
        by_prompt = len({r.get("task") or "" for r in found_rows}) < 2
        rows += [r | {"group": r["prompt"] if by_prompt else r.get("task") or "", "source": Path(path).stem}
                 for r in found_rows]
    means = {m: np.mean([float(r[m + SUFFIX]) for r in rows]) for m in models}
    tiers = tuple(sorted(models, key=means.get))
    return Labels(tiers, [_example(r, tiers) for r in rows])


def _example(row: dict, tiers: tuple[str, ...]) -> Example:
    confidence = row.get("confidence")
    return Example(row["prompt"], tuple(float(row[m + SUFFIX]) for m in tiers), row.get("task") or "",
                   float(confidence) if confidence not in (None, "") else None, row["group"], row["source"])


def write_labels(labels: Labels, path: Path | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", *(m + SUFFIX for m in labels.tiers), "task", "confidence"])
        for e in labels.examples:
            writer.writerow([e.prompt, *e.scores, e.task, "" if e.confidence is None else e.confidence])
