"""The shipped `general` router: how it is made, from which files, and the recipe bench/router_eval.py re-fits per fold.

    .venv/bin/python -m classifier.general [--data ../shared/router-data]   # writes classifier/artifacts/general.npz

Three sources of real prompts with a real strong/weak pair (../shared/router-data, see its README): MMLU and GSM8K
(GPT-4 vs Mixtral, correctness 0/1) and AlpacaEval-dev (open-ended instructions; GPT-4 Turbo vs Mixtral, the
judge's preference). The sources score on different scales: a preference of 0.12 is not a correctness of 0.12, so
each source's gain is put on the exam sources' scale (same mean and spread) before the ridge sees it. Left raw, the
open-ended prompts' larger gains would teach "instructions need the strong model", which is false of the writing
and role-play that fill chat traffic. On the open-ended prompts the gain learned from is GPT-4 Turbo's preference
over the mean of all ten weaker models the file judged, not over Mixtral's alone: one judge's verdict on one answer
is noisy (the data's README), and what makes a prompt need a strong model is shared by the weak ones. The folds and
the tables still score the (Mixtral, GPT-4 Turbo) pair.

The model: a ridge on words, word bigrams and first-word-by-length plus ten shape numbers, with a ridge on the
shape numbers alone beside it at equal say (classifier.train.fit_linear, SHAPE_WEIGHT): the n-grams learn the kinds
seen, the shape numbers are what carries to a kind never seen (bench/router_eval.py, folds held out by source).

The artifact carries AlpacaEval's licence (CC BY-NC 4.0) in its meta, as the data's README asks.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from classifier.labelfile import Example, Labels, read_labels
from classifier.router import SHIPPED, Router
from classifier.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "router-data"
EXAMS = {"MMLU": "mmlu_train.csv", "GSM8K": "gsm8k_train.csv"}
OPEN = {"AlpacaEval-dev": "alpaca_dev.csv"}
STRONG, WEAK = "gpt4_1106_preview", "Mixtral-8x7B-Instruct-v0.1_concise"  # the pair of the exam files
VIEWS = ("w", "b", "s")
ALPHAS = (10.0,)  # of 3 and 10, 10 held up better on every whole-source fold (docs/BENCHMARKS.md)
SHAPE_WEIGHT = 1.0  # equal say; 2.0 scored lower on 5 of 8 held-out folds (bench/router_eval.py also picks it per fold)
LICENCE = "trained on AlpacaEval data (CC BY-NC 4.0, non-commercial) and RouteLLM's MMLU/GSM8K outcomes (Apache-2.0)"


def open_ended(path: Path, name: str) -> list[Example]:
    """An AlpacaEval file as the (Mixtral, GPT-4 Turbo) pair; one group per prompt."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [Example(r["prompt"], (float(r[WEAK + "_score"]), float(r[STRONG + "_score"])), r["task"], None,
                    r["prompt"], name) for r in rows]


def judged_gain(shared: Path = SHARED) -> dict[str, float]:
    """Each open-ended prompt's gain over the mean of every weaker model judged on it (module docstring)."""
    out = {}
    for file in OPEN.values():
        with open(shared / file, newline="") as f:
            for r in csv.DictReader(f):
                weak = [float(v) for k, v in r.items() if k.endswith("_score") and k != STRONG + "_score"]
                out[r["prompt"]] = float(r[STRONG + "_score"]) - sum(weak) / len(weak)
    return out


def sources(shared: Path = SHARED) -> dict[str, list[Example]]:
    """Every source's examples by name, tiers (weak, strong)."""
    out = {name: read_labels(shared / file).examples for name, file in EXAMS.items()}
    out |= {name: open_ended(shared / file, name) for name, file in OPEN.items()}
    for name in EXAMS:
        out[name] = [Example(e.prompt, e.scores, e.task, e.confidence, e.group, name) for e in out[name]]
    return out


def target(examples: list[Example], judged: dict[str, float]) -> np.ndarray:
    """The gain each prompt's strong answer buys, every source on the exam sources' scale; open-ended prompts'
    from `judged` (judged_gain; module docstring)."""
    gain = np.array([judged[e.prompt] if e.source in OPEN else e.gain for e in examples])
    source = np.array([e.source for e in examples])
    exam = np.isin(source, list(EXAMS))
    mean, spread = (gain[exam].mean(), gain[exam].std()) if exam.any() else (0.0, 1.0)
    for name in set(source) - set(EXAMS):
        own = source == name
        gain[own] = (gain[own] - gain[own].mean()) / (gain[own].std() or 1.0) * spread + mean
    return gain


def fit(examples: list[Example], judged: dict[str, float]) -> Router:
    """The recipe on some examples (bench/router_eval.py fits it without a source, to fine-tune from)."""
    return train(Labels(("weak", "strong"), examples), alphas=ALPHAS, views=VIEWS, target=target(examples, judged),
                 shape_weight=SHAPE_WEIGHT)


def build(shared: Path = SHARED) -> Router:
    router = fit([e for found in sources(shared).values() for e in found], judged_gain(shared))
    router.meta |= {"trained_on": [*EXAMS.values(), *OPEN.values()], "licence": LICENCE}
    return router


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED, help="the folder of the three label files")
    built = build(parser.parse_args().data)
    built.save(SHIPPED["general"])
    print(f"wrote {SHIPPED['general']}: {built.meta['examples']} prompts, alpha {built.meta['alpha']}, "
          f"cross-validated APGR {built.meta['cv_apgr']:.3f}")
