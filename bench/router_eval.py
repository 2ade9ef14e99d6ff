"""Router evaluation: quality vs large-model share on held-out prompts, and the cost of scoring one query.

Evaluates the shipped artifact (classifier/artifacts/router.npz) on the test split of the shipped labels
(classifier/artifacts/labels.csv): prompts the classifier was neither trained nor calibrated on.
Writes docs/img/router_curve.png and the `router` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/router_eval.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import table, write_section  # noqa: E402
from classifier.labels import TEXT_MARGIN  # noqa: E402
from classifier.evaluate import HEADERS, evaluate, policy_rows  # noqa: E402
from classifier.metrics import quality_at  # noqa: E402
from classifier.router import DEFAULT_PATH, Router  # noqa: E402
from classifier.train import LABELS_PATH, Example, design, read_labels, splits  # noqa: E402

PLOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "router_curve.png"


def label_rows(examples: list[Example]) -> list[list]:
    """What the model pair did on every labelled prompt, per family and level."""
    cells: dict[tuple, list[Example]] = defaultdict(list)
    for e in examples:
        cells[(e.kind, e.family, e.level)].append(e)
    return [[f"{family} L{level}" if kind == "task" else "free text", len(c),
             np.mean([e.quality_small for e in c]), np.mean([e.quality_large for e in c]),
             np.mean([e.label for e in c])]
            for (kind, family, level), c in sorted(cells.items())]


def confidence_rows(test: list[Example]) -> list[list]:
    """The cascade's signal per task family: the small model's mean token log-prob when right and when wrong."""
    rows = []
    for family in sorted({e.family for e in test if e.kind == "task"}):
        cell = [e for e in test if e.family == family]
        right, wrong = ([e.small_confidence for e in cell if e.quality_small == q] for q in (1.0, 0.0))
        rows.append([family, len(cell), np.mean(right) if right else "-", np.mean(wrong) if wrong else "-",
                     np.mean([e.quality_large for e in cell if e.quality_small == 0.0]) if wrong else "-"])
    return rows


def plot(results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for r in results:
        style = {"random": dict(ls="--", color="grey"), "oracle": dict(ls=":", color="black")}.get(r.name, {})
        ax.plot(r.curve.share, r.curve.quality, label=r.name, **style)
    curve = results[0].curve
    ax.scatter([0, 1], [curve.quality_small, curve.quality_large], color="red", zorder=3)
    ax.annotate("always small", (0, curve.quality_small), textcoords="offset points", xytext=(6, -12))
    ax.annotate("always large", (1, curve.quality_large), textcoords="offset points", xytext=(-70, -14))
    ax.set_xlabel("share of queries sent to the large model (cost)")
    ax.set_ylabel("mean quality on held-out prompts")
    ax.set_title("Ferryman router: quality vs cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def latency(router: Router, texts: list[str], repeats: int = 20) -> list[list]:
    """Per single query, p50 and p99: our hand-written scorer against the same model through scikit-learn."""
    names = sorted(router.weights)
    vocab = {g: i for i, g in enumerate(names)}
    mean, scale = np.array(router.numeric_mean), np.array(router.numeric_scale)
    model = LogisticRegression()
    model.coef_ = np.r_[[router.weights[g] for g in names], router.numeric_weight][None, :]
    model.intercept_, model.classes_ = np.array([router.intercept]), np.array([0, 1])
    platt = LogisticRegression()
    platt.coef_, platt.intercept_, platt.classes_ = np.array([[router.platt[0]]]), np.array([router.platt[1]]), np.array([0, 1])

    def sklearn_score(text: str) -> float:
        z = model.decision_function(design([text], vocab, mean, scale))
        return platt.predict_proba(z.reshape(-1, 1))[0, 1]

    rows = []
    for name, fn, rounds in (("Router.score (ours)", router.score, repeats),
                             ("scikit-learn predict_proba, same model", sklearn_score, 2)):
        times = []
        for _ in range(rounds):
            for t in texts:
                start = time.perf_counter()
                fn(t)
                times.append(time.perf_counter() - start)
        rows.append([name, len(times), 1e6 * statistics.median(times), 1e6 * float(np.percentile(times, 99))])
    base = rows[1][2]
    return [row + [f"{base / row[2]:.1f}x"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=LABELS_PATH)
    parser.add_argument("--router", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--dry-run", action="store_true", help="print only; leave the docs and the plot alone")
    args = parser.parse_args()
    start = time.perf_counter()
    router = Router.load(args.router)
    load_ms = 1e3 * (time.perf_counter() - start)
    examples = read_labels(args.labels)
    parts = splits(examples)
    test = parts["test"]
    results = evaluate(router, test)

    main_table = table(HEADERS, [r.row() for r in results])
    at = [0.2, 0.5]
    curve_table = table(["router"] + [f"quality at {s:.0%} large" for s in at],
                        [[r.name] + [quality_at(r.curve, s) for s in at] for r in results[:3]])
    targets = [{"large_share": s} for s in (0.1, 0.3, 0.5)] + [{"quality_floor": q} for q in (0.9, 0.95, 0.98)]
    policy = table(["target (calibrated on calib split)", "large share on test", "quality / all-large on test"],
                   policy_rows(router, test, targets))
    by_kind = []
    for kind in ("task", "text"):
        subset = [e for e in test if e.kind == kind]
        if subset and any(e.label for e in subset) and not all(e.label for e in subset):
            by_kind += [[f"{r.name}, {kind} prompts only"] + r.row()[1:] for r in evaluate(router, subset)[:1]]
    speed = latency(router, [e.prompt for e in test])
    pair = table(["prompts", "n", "small quality", "large quality", "share labelled large-needed"],
                 label_rows(examples))
    counts = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    body = f"""
Labels come from the bundled model pair itself (`ferryman router train --relabel`, `classifier/labels.py`):
both models answer every prompt greedily; checkable tasks score 1 on exact match, free-text continuations
score the geometric-mean token probability of the answer under the large model. A prompt is labelled
"large needed" when the large model's answer beats the small one's (by more than {TEXT_MARGIN} on free text).
Prompts are split by a hash of their text into disjoint train / calib / test sets ({counts}).
The classifier is fitted on train; thresholds are calibrated on calib; everything below is on test.

APGR is the area under the performance-gap-recovered curve over the large-call share (random routing: 0.5);
CPT(x) is the share of large calls needed to recover x of the gap between always-small and always-large
(lower is better); AUC is for the label "large needed". The cascade row ranks by the small model's own mean
token log-probability: it pays for a small answer on every query, so at equal share it costs more.
"no gap" means the large model is not better than the small one on average over those prompts, so there
is no gap to recover (APGR and CPT are undefined); the quality table at the end shows where each model wins.

{main_table}

{curve_table}

{table(HEADERS, by_kind) if by_kind else ""}

Why the cascade ranks as it does: within a family the small model is less sure of its wrong answers, but its
confidence is on a different scale per family, and where it is unsure across the board the large model may fail
too (escalating those buys nothing). The classifier learns both from the labels. Test split, task prompts:

{table(["family", "n", "small's confidence when right", "when wrong", "large's quality where small is wrong"],
       confidence_rows(parts["test"]))}

![router quality vs cost](img/router_curve.png)

Policy: does a threshold calibrated on the calib split meet the tenant's target on unseen test prompts?

{policy}

Scoring one query (the text of the last user turn), single-threaded, {len(test)} test prompts:
router load {load_ms:.1f} ms; artifact {args.router.stat().st_size / 1024:.0f} KiB, {len(router.weights)} n-gram weights.

{table(["scorer", "calls", "p50 (µs)", "p99 (µs)", "speed-up vs scikit-learn"], speed)}

What the model pair does on the labelled prompts (all splits):

{pair}
"""
    print(body)
    if not args.dry_run:
        plot(results, PLOT)
        write_section("router", "Difficulty router (classifier)", "python bench/router_eval.py", body)
        print(f"wrote {PLOT} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
