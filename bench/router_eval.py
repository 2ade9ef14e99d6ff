"""Router evaluation: quality vs strong-model share, the honest (cross-validated) figures on real prompts,
whether targets hold when traffic shifts, and the cost of scoring one query.

1. The `general` router's method, cross-validated on ../shared/router-data (whole MMLU subjects held out,
   GSM8K held out by problem) with bootstrap 95% intervals, beside random, the oracle and RouteLLM's
   published figures.
2. Targets on shifted traffic: the general artifact's calibrated threshold vs the live window
   (classifier/live.py) on each benchmark's prompts streamed alone.
3. The bundled pair's router on its held-out labels (classifier/artifacts/bundled_test.csv).
4. Scoring latency per prompt, prompts up to 4k characters, rounds interleaved.

Writes docs/img/router_<data set>.png and the `router` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/router_eval.py
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import table, write_section  # noqa: E402
from classifier.evaluate import evaluate  # noqa: E402
from classifier.labelfile import read_labels  # noqa: E402
from classifier.live import LiveTargets  # noqa: E402
from classifier.metrics import apgr, auc, cpt, routing_curve  # noqa: E402
from classifier.router import ARTIFACTS, Router  # noqa: E402
from classifier.train import cross_validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "router-data"
IMG = ROOT / "docs" / "img"
# RouteLLM (Ong et al. 2024, GPT-4 vs Mixtral): their best routers' APGR as published, not measured here
PUBLISHED = {"MMLU": "0.57-0.60", "GSM8K": "0.53-0.62"}


def figures(score, qs, ql, label) -> list[float]:
    curve = routing_curve(score, qs, ql)
    return [apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8), auc(score, label)]


def with_ci(score, qs, ql, rounds: int = 200, seed: int = 0) -> list[str]:
    """Each figure with its bootstrap 95% interval over prompts."""
    label = ql > qs
    point = figures(score, qs, ql, label)
    rng, draws = np.random.default_rng(seed), []
    for _ in range(rounds):
        i = rng.integers(0, len(score), len(score))
        if ql[i].mean() > qs[i].mean() and 0 < label[i].sum() < len(i):
            draws.append(figures(score[i], qs[i], ql[i], label[i]))
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return [f"{p:.3f} [{a:.3f}, {b:.3f}]" for p, a, b in zip(point, lo, hi)]


def plot(curves: dict[str, tuple], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for name, (share, quality) in curves.items():
        style = {"random": dict(ls="--", color="grey"), "oracle": dict(ls=":", color="black")}.get(name, {})
        ax.plot(share, quality, label=name, **style)
    ax.set_xlabel("share of queries sent to the strong model (cost)")
    ax.set_ylabel("mean quality on held-out prompts")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_of(score, qs, ql) -> dict[str, tuple]:
    out = {}
    for name, s in (("router", score), ("random", np.zeros(len(score))), ("oracle", ql - qs)):
        c = routing_curve(s, qs, ql)
        out[name] = (c.share, c.quality)
    return out


def cross_validated(general: Router, write: bool) -> tuple[str, list]:
    data = {"MMLU": SHARED / "mmlu_train.csv", "GSM8K": SHARED / "gsm8k_train.csv"}
    labels = read_labels(*data.values())
    start = time.perf_counter()
    z = cross_validate(labels, general.meta["alpha"], tuple(general.meta["views"]))
    took = time.perf_counter() - start
    qs, ql = (np.array([getattr(e, f) for e in labels.examples]) for f in ("quality_small", "quality_large"))
    is_gsm = np.array([e.task == "gsm8k" for e in labels.examples])
    rows = []
    for name, sel in (("MMLU", ~is_gsm), ("GSM8K", is_gsm), ("both", np.ones(len(z), bool))):
        rng = np.random.default_rng(1)
        rows.append([name, "ferryman general (cross-validated)", *with_ci(z[sel], qs[sel], ql[sel])])
        rows.append([name, "random", *with_ci(rng.random(sel.sum()), qs[sel], ql[sel])])
        oracle = figures(ql[sel] - qs[sel], qs[sel], ql[sel], ql[sel] > qs[sel])
        rows.append([name, "oracle", *(f"{v:.3f}" for v in oracle[:3]), "-"])
        if name in PUBLISHED:
            rows.append([name, "RouteLLM published (best routers)", PUBLISHED[name], "-", "-", "-"])
        if write and name != "both":
            plot(curves_of(z[sel], qs[sel], ql[sel]), f"{name}: quality vs cost (held-out {'subjects' if name == 'MMLU' else 'problems'})",
                 IMG / f"router_{name.lower()}.png")
    note = (f"{len(labels.examples)} prompts in {len({e.group for e in labels.examples})} groups, 5 folds, "
            f"ridge alpha {general.meta['alpha']}, views {','.join(general.meta['views'])}; cross-validation took {took:.0f} s")
    return note, rows


def shifted_targets(general: Router) -> list[list]:
    """Each benchmark streamed alone: the calibrated threshold (fitted to both) vs the live window."""
    rows = []
    for name, path in (("MMLU", SHARED / "mmlu_train.csv"), ("GSM8K", SHARED / "gsm8k_train.csv")):
        prompts = [e.prompt for e in read_labels(path).examples]
        random.Random(0).shuffle(prompts)
        scores = np.array([general.score(p) for p in prompts[:3000]])
        for share in (0.2, 0.5):
            calibrated = (scores >= general.threshold_for(large_share=share)).mean()
            live = LiveTargets()
            for s in scores:
                live.record("g", "t", bool(s >= live.threshold(general, "g", "t", s, large_share=share)))
            rows.append([name, f"large_share {share}", calibrated, live.window("g", "t").realised_share()])
        floor = (scores >= general.threshold_for(quality_floor=0.95)).mean()
        rows.append([name, "quality_floor 0.95 (default)", floor, "-"])
    return rows


def latency(routers: dict[str, Router], texts: list[str], rounds: int = 3) -> list[list]:
    """Per prompt, p50 and p99 of wall-clock and of the process's CPU time, per round; rounds interleave the
    routers. Median of rounds with min-max. On a shared machine the wall-clock tail is mostly other
    processes holding the core; the CPU time is the scorer's own work."""
    stats: dict[str, list[tuple[float, ...]]] = {n: [] for n in routers}
    for _ in range(rounds):
        for name, router in routers.items():
            wall, cpu = [], []
            for t in texts:
                start, start_cpu = time.perf_counter(), time.process_time()
                router.score(t)
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            stats[name].append(tuple(1e3 * float(np.percentile(x, q)) for x in (wall, cpu) for q in (50, 99)))
    rows = []
    for name, per_round in stats.items():
        cells = [f"{statistics.median(c):.3f} ({min(c):.3f}-{max(c):.3f})" for c in zip(*per_round)]
        rows.append([name, len(texts) * rounds, *cells])
    return rows


def latency_texts(n: int = 400) -> list[str]:
    """Real prompts, cut or repeated to lengths spread up to 4k characters."""
    prompts = [e.prompt for e in read_labels(SHARED / "mmlu_train.csv").examples]
    rng = random.Random(2)
    out = []
    for _ in range(n):
        text, size = rng.choice(prompts), rng.randint(50, 4000)
        out.append((text * (size // len(text) + 1))[:size])
    return out


def bundled(write: bool) -> str:
    router = Router.load("bundled")
    test = read_labels(ARTIFACTS / "bundled_test.csv").examples
    results = evaluate(router, test)
    if write:
        plot({("router" if r.name == "classifier" else r.name): (r.curve.share, r.curve.quality) for r in results},
             "Bundled pair: quality vs cost (held-out labels)", IMG / "router_bundled.png")
    return table(["router", "APGR", "CPT(50%)", "CPT(80%)", "AUC"], [r.row() for r in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print only; leave the docs and the plots alone")
    args = parser.parse_args()
    write = not args.dry_run
    IMG.mkdir(parents=True, exist_ok=True)
    general = Router.load("general")
    note, cv_rows = cross_validated(general, write)
    shift = shifted_targets(general)
    bundled_table = bundled(write)
    speed = latency({"general": general, "bundled": Router.load("bundled")}, latency_texts())
    size = (ARTIFACTS / "general.npz").stat().st_size / 1e6
    body = f"""
### Real prompts, a real pair (GPT-4 vs Mixtral on MMLU and GSM8K; `../shared/router-data`)

The `general` router (`ferryman router eval --router general ...`) is a ridge regression of the gain
(strong score minus weak score) on word, bigram and first-word-by-length n-grams plus ten shape numbers,
evaluated by hand (artifact {size:.1f} MB). Regressing the gain rather than classifying "strong wins" is
what made it beat random: prompts both models find hard also hold most of the weak model's wins. Built by
`ferryman router train --labels ../shared/router-data/mmlu_train.csv --labels ../shared/router-data/gsm8k_train.csv --views w,b,s --out classifier/artifacts/general.npz`.

Honest estimate: every prompt scored by a model fitted without its group ({note}). Whole MMLU subjects are
held out (a random split lets a router learn each subject's difficulty and reads higher); GSM8K is held out
by problem. Brackets: bootstrap 95% intervals over prompts. AUC is for "strong better than weak".
Oracle CPTs are the share of prompts where the strong model is needed. RouteLLM's figures are published
numbers for their routers trained on other data, quoted, not rerun here.

{table(["data", "router", "APGR", "CPT(50%)", "CPT(80%)", "AUC"], cv_rows)}

![MMLU](img/router_mmlu.png) ![GSM8K](img/router_gsm8k.png)

### Targets on shifted traffic

The general artifact's thresholds are calibrated on both benchmarks together; here each benchmark's prompts
arrive alone (3,000 at most, shuffled), which shifts the score distribution. "calibrated" applies the
artifact's threshold; "live window" is what the gateway does (`classifier/live.py`: the threshold at the
matching quantile of the last 1,000 scores of that route group and tenant).

{table(["traffic", "target", "strong share, calibrated threshold", "strong share, live window"], shift)}

### The bundled pair

The bundled router (`--router bundled`, the gateway's default for the bundled pair), trained on
`classifier/artifacts/bundled_train.csv` and measured on the held-out `bundled_test.csv` (labels from the
pair itself, `python -m classifier.labels`):

{bundled_table}

![bundled](img/router_bundled.png)

### Scoring latency

`Router.score` per prompt, single thread, prompts of real text cut or repeated to 50-4,000 characters;
3 interleaved rounds, median (min-max) of each round's percentile, milliseconds.

{table(["router", "calls", "wall p50 (ms)", "wall p99 (ms)", "CPU p50 (ms)", "CPU p99 (ms)"], speed)}

Load average during this run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other engineers' jobs), which is
what the wall-clock tail measures; the scorer's own CPU time is the figure to hold against the budget
(p50 <= 2 ms, p99 <= 10 ms).
"""
    print(body)
    if write:
        write_section("router", "Difficulty router (classifier)", "python bench/router_eval.py", body)
        print("wrote docs/img/router_*.png and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
