"""Router evaluation: does one router hold across kinds of traffic, how fast it learns a new kind, whether targets
hold when traffic shifts, and the cost of scoring one query.

1. The `general` recipe (classifier/general.py) held out by kind: each whole source of ../shared/router-data
   (MMLU, GSM8K, AlpacaEval-dev) in turn, then whole MMLU subjects, against TF-IDF + logistic regression fitted
   on the same rows; APGR with bootstrap 95% intervals.
2. A learning curve: the recipe fitted without a source, fine-tuned on 25..400 labelled prompts of it
   (classifier/tune.py, `ferryman router train --from general`), beside those labels alone.
3. Familiarity: the share of prompts the artifact flags unfamiliar, on its sources and on kinds absent from them.
4. Targets on shifted traffic: the calibrated threshold vs the live window (classifier/live.py).
5. The bundled pair's router on its held-out labels (classifier/artifacts/bundled_test.csv).
6. Scoring latency per prompt, prompts up to 4k characters, rounds interleaved.

Writes docs/img/router_learning_curve.png, docs/img/router_bundled.png and the `router` section of
docs/BENCHMARKS.md. Runs for about ten minutes on two busy cores.

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
from classifier.labelfile import Labels, read_labels  # noqa: E402
from classifier.live import LiveTargets  # noqa: E402
from classifier.metrics import apgr, auc, routing_curve  # noqa: E402
from classifier.router import ARTIFACTS, Router  # noqa: E402
from classifier.train import Design, fit_linear, predict  # noqa: E402
from classifier.tune import fine_tune  # noqa: E402
from classifier import general as general_recipe  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402
from tests.classifier.strange_prompts import STRANGE_KINDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
SHARED = general_recipe.SHARED  # --data
JUDGED: dict[str, float] = {}  # the open-ended prompts' training gain (general_recipe.judged_gain), set by main
SUBJECT_FOLDS = 5
STEPS = (25, 50, 100, 200, 400)  # labelled prompts of a new source added, per learning-curve step
REPEATS = 5
NESTED_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)  # shape weights the nested check picks from (inner_weight)


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


def apgr_ci(score, qs, ql, rounds: int = 300, seed: int = 0) -> tuple[float, float, float]:
    """APGR and its bootstrap 95% interval over prompts."""
    rng, draws = np.random.default_rng(seed), []
    for _ in range(rounds):
        i = rng.integers(0, len(score), len(score))
        if ql[i].mean() > qs[i].mean():
            draws.append(apgr(routing_curve(score[i], qs[i], ql[i])))
    return (apgr(routing_curve(score, qs, ql)), *np.percentile(draws, [2.5, 97.5]))


def paired_gap(a, b, qs, ql, rounds: int = 300, seed: int = 0) -> tuple[float, float, float]:
    """APGR(a) - APGR(b) on the same bootstrap draws: the interval says whether a beats b beyond noise."""
    rng, draws = np.random.default_rng(seed), []
    for _ in range(rounds):
        i = rng.integers(0, len(a), len(a))
        if ql[i].mean() > qs[i].mean():
            draws.append(apgr(routing_curve(a[i], qs[i], ql[i])) - apgr(routing_curve(b[i], qs[i], ql[i])))
    point = apgr(routing_curve(a, qs, ql)) - apgr(routing_curve(b, qs, ql))
    return (point, *np.percentile(draws, [2.5, 97.5]))


def held_out_folds(examples: list) -> list[tuple[str, np.ndarray]]:
    """Each whole source held out in turn, then MMLU's subjects in 5 whole-subject folds (the rest trains)."""
    source = np.array([e.source for e in examples])
    out = [(f"{name} (trained on the other two)", source == name) for name in (*general_recipe.EXAMS, *general_recipe.OPEN)]
    mmlu = np.flatnonzero(source == "MMLU")
    subjects = [examples[i].task for i in mmlu]
    for k, (_, held) in enumerate(GroupKFold(SUBJECT_FOLDS).split(mmlu, groups=subjects)):
        test = np.zeros(len(examples), bool)
        test[mmlu[held]] = True
        out.append((f"MMLU subjects, fold {k + 1} ({len({subjects[i] for i in held})} subjects)", test))
    return out


def general_scores(data: Design, examples: list, train_rows: np.ndarray, test_rows: np.ndarray,
                   shape_weight: float | None = None) -> np.ndarray:
    """The general recipe (classifier/general.py: target, alpha, shape weight) fitted on some rows, scoring others;
    shape_weight=0 is the n-gram ridge alone (the recipe before the shape numbers had a say of their own)."""
    y = general_recipe.target([examples[i] for i in train_rows], JUDGED)
    weight = general_recipe.SHAPE_WEIGHT if shape_weight is None else shape_weight
    return predict(data, test_rows, *fit_linear(data, train_rows, y, general_recipe.ALPHAS[0], weight))


def tfidf_scores(texts: list[str], label: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
    """The peer baseline: TF-IDF of words and word bigrams, logistic regression on "strong better than weak"."""
    vectors = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x = vectors.fit_transform([texts[i] for i in train_rows])
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, label[train_rows])
    return model.decision_function(vectors.transform([texts[i] for i in test_rows]))


def inner_weight(data: Design, examples: list, train_rows: np.ndarray, qs: np.ndarray, ql: np.ndarray) -> float:
    """The shape weight picked without looking at the held-out fold: each source among the training rows left out in
    turn, the weight of NESTED_WEIGHTS with the best mean APGR on the source left out. The blend is linear in the
    weight, so two fits per inner fold score every weight."""
    source = np.array([examples[i].source for i in train_rows])
    found: dict[float, list] = {w: [] for w in NESTED_WEIGHTS}
    for name in sorted(set(source)):
        fit, held = train_rows[source != name], train_rows[source == name]
        alone = general_scores(data, examples, fit, held, shape_weight=0.0)
        step = general_scores(data, examples, fit, held, shape_weight=1.0) - alone
        for w in found:
            found[w].append(apgr(routing_curve(alone + w * step, qs[held], ql[held])))
    return max(NESTED_WEIGHTS, key=lambda w: np.mean(found[w]))


def leave_one_out(general: Router, examples: list, data: Design) -> tuple[list, list]:
    texts = [e.prompt for e in examples]
    qs, ql = (np.array([getattr(e, f) for e in examples]) for f in ("quality_small", "quality_large"))
    label = ql > qs
    rows, summary = [], []
    for name, test in held_out_folds(examples):
        train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
        ours = general_scores(data, examples, train_rows, test_rows)
        ngrams = general_scores(data, examples, train_rows, test_rows, shape_weight=0.0)
        w = inner_weight(data, examples, train_rows, qs, ql)
        nested = apgr(routing_curve(ngrams + w / general_recipe.SHAPE_WEIGHT * (ours - ngrams), qs[test], ql[test]))
        peer = tfidf_scores(texts, label, train_rows, test_rows)
        q = (qs[test], ql[test])
        a, t, gap = apgr_ci(ours, *q), apgr_ci(peer, *q), paired_gap(ours, peer, *q)
        rows.append([name, int(test.sum()), f"{ql[test].mean() - qs[test].mean():.3f}", _ci(a), _ci(t),
                     _ci(gap, signed=True), f"{apgr(routing_curve(ngrams, *q)):.3f}", f"{nested:.3f} ({w:g})", f"{auc(ours, label[test]):.3f}"])
        summary.append((name, a[0], t[0]))
        print(rows[-1], flush=True)
    return rows, summary


def _ci(v: tuple[float, float, float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def learning_curve(examples: list, data: Design, write: bool) -> list:
    """The general recipe fitted without a source is the prior; n labelled prompts of the source fine-tune it
    (classifier/tune.py, what `ferryman router train --from general` runs), and the source's prompts not among the
    labels are scored. Per repeat a fixed test set (what is left after the largest pool); median (min-max) of the
    repeats. Beside it the same n labels alone, fitted by the recipe from scratch. Both learn the pair's own gain
    (a tenant has only its pair), the prior the recipe's target."""
    qs, ql = (np.array([getattr(e, f) for e in examples]) for f in ("quality_small", "quality_large"))
    source = np.array([e.source for e in examples])
    gain = ql - qs
    rows, curves = [], {}
    for name in ("GSM8K", "AlpacaEval-dev"):
        own = np.flatnonzero(source == name)
        prior = general_recipe.fit([examples[i] for i in np.flatnonzero(source != name)], JUDGED)
        pool_size = min(max(STEPS), len(own) - 100)  # at least 100 prompts stay for testing
        steps = [n for n in (0, *STEPS) if n <= pool_size]
        tuned: dict[int, list] = {n: [] for n in steps}
        alone: dict[int, list] = {n: [] for n in steps if n}
        for rep in range(REPEATS):
            order = np.random.default_rng(rep).permutation(own)
            pool, test_rows = order[:pool_size], order[pool_size:]
            q = (qs[test_rows], ql[test_rows])
            for n in steps:
                router = fine_tune(prior, Labels(prior.tiers, [examples[i] for i in pool[:n]])) if n else prior
                tuned[n].append(apgr(routing_curve(np.array([router.decision(examples[i].prompt) for i in test_rows]), *q)))
                if n:
                    fitted = fit_linear(data, pool[:n], gain[pool[:n]], general_recipe.ALPHAS[0], general_recipe.SHAPE_WEIGHT)
                    alone[n].append(apgr(routing_curve(predict(data, test_rows, *fitted), *q)))
        for n in steps:
            rows.append([name, n, len(own) - pool_size, _median_range(tuned[n]), _median_range(alone[n]) if n else "-"])
        curves[name] = (steps, [statistics.median(tuned[n]) for n in steps], [statistics.median(alone[n]) for n in steps if n])
        print(rows[-len(steps):], flush=True)
    if write:
        plot_learning(curves, IMG / "router_learning_curve.png")
    return rows


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def plot_learning(curves: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for (name, (steps, ours, alone)), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        ax.plot(steps, ours, marker="o", color=color, label=f"{name}: general fine-tuned on n labels")
        ax.plot(steps[1:], alone, marker="x", ls="--", color=color, label=f"{name}: n labels alone")
    ax.axhline(0.5, color="grey", ls=":", label="random")
    ax.set_xscale("symlog", linthresh=25)
    ticks = sorted({n for steps, *_ in curves.values() for n in steps})
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.set_xlim(-4, ticks[-1] * 1.2)
    ax.set_xlabel("labelled prompts of the new source added")
    ax.set_ylabel("held-out APGR on that source")
    ax.set_title("Learning a new kind of traffic")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)  # below: the curves fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
                router.assess(t)
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
    parser.add_argument("--data", type=Path, default=general_recipe.SHARED, help="the folder of the label files")
    args = parser.parse_args()
    write = not args.dry_run
    global SHARED, JUDGED
    SHARED = args.data
    JUDGED = general_recipe.judged_gain(SHARED)
    IMG.mkdir(parents=True, exist_ok=True)
    general = Router.load("general")
    examples = [e for found in general_recipe.sources(SHARED).values() for e in found]
    start = time.perf_counter()
    data = Design([e.prompt for e in examples], tuple(general.meta["views"]))  # features once, every fold reuses them
    fold_rows, summary = leave_one_out(general, examples, data)
    curve_rows = learning_curve(examples, data, write)
    took = time.perf_counter() - start
    shift = shifted_targets(general)
    bundled_table = bundled(write)
    texts = latency_texts()
    speed = latency({"general (score + familiarity)": general, "bundled": Router.load("bundled")}, texts)
    strange = familiarity_rows(general)
    size = (ARTIFACTS / "general.npz").stat().st_size / 1e6
    wins = sum(a > t for _, a, t in summary)
    body = f"""
### Real prompts, real pairs: one router across kinds of traffic (`../shared/router-data`)

The `general` router (`router: general`, the default of an operator's catalog) is a ridge regression of the gain
(strong score minus weak score; each source's gain put on the exam sources' scale; on the open-ended prompts the
gain over the mean of the ten weaker models judged) on words, word bigrams and first-word-by-length plus ten shape
numbers, beside a ridge on the shape numbers alone with an equal say (each divided by the spread of its fitted
values, then summed: one linear model), evaluated by hand (artifact {size:.1f} MB, alpha {general.meta['alpha']},
shape weight {general.meta['shape_weight']}). Trained on {', '.join(general.meta['trained_on'])} ({general.meta['examples']} prompts;
{general.meta['licence']}) by `python -m classifier.general` (recipe and reasons: `classifier/general.py`). The pairs:
GPT-4 vs Mixtral-8x7B on MMLU and GSM8K (correctness), GPT-4 Turbo vs Mixtral-8x7B on AlpacaEval-dev (the
AlpacaEval judge's preference).

**Held out by kind.** Each fold fits the same recipe (features, target, alpha, shape weight) on everything except
the held-out prompts: a whole source (the router has never seen a prompt of that kind), or whole MMLU subjects. The
peer is TF-IDF (words and bigrams, sublinear tf) + logistic regression on "strong better than weak", fitted on the
same rows. "gap" is the strong model's mean score minus the weak one's on the held-out prompts: APGR divides by
it, so a small gap (MMLU subjects fold 5) makes a noisy APGR. Brackets: bootstrap 95% intervals over the held-out
prompts (300 draws); "general - TF-IDF" is the paired difference on the same draws. "n-grams alone" is the recipe
without the shape-numbers ridge (the artifact shipped before). "weight picked inside" is the recipe with the shape
weight chosen from {', '.join(f'{w:g}' for w in NESTED_WEIGHTS)} by leaving out each source of the fold's training rows in turn
(in brackets the weight picked), so nothing about the held-out prompts chose it. AUC is the general recipe's, for "strong better than
weak". Random routing is 0.500. The general recipe is above random on {sum(a > 0.5 for _, a, _ in summary)} of
{len(summary)} folds and beats the peer on {wins} of {len(summary)}.

{table(["held out", "prompts", "gap", "APGR general", "APGR TF-IDF + LR", "general - TF-IDF", "APGR n-grams alone", "APGR, weight picked inside", "AUC general"], fold_rows)}

How the recipe was chosen, so the figures can be weighed: configs were compared on these same folds in three rounds.
First (the recipe kept): alpha 10, 20, 30; char n-grams of the shape; the target centred per source; a source
indicator; the score shrunk toward the middle for prompts with few known words; the shape-numbers ridge at weight 1
and 2; the ten-model target; about a dozen fits per fold. Second, to win MMLU subject folds 2 and 4 too: a logistic
regression on "strong better" on the same features beside the ridge at an equal say (C 0.3, 1, 3; it lowered every
source fold, and subject fold 5 to 0.42-0.43); the peer's own TF-IDF + LR beside the recipe at weight 1 and 0.5 (fold
2: 0.569 and 0.562); idf-weighted n-grams; the ridge on the peer's TF-IDF features, alone, with the shape ridge, and
with the peer beside it (this one won folds 2 and 4 but fell to 0.40 on fold 5, below random); alpha 3; the
shape ridge fitted within each source; the shape numbers inside the one ridge at 3 and 10 times the scale (fold 2:
0.560-0.563, fold 4: 0.574-0.578); about 25 more fits per fold. Third (about 300 fits): rank-averaging with a
logistic model on the same features or with the peer; an equal say per source; word trigrams, char n-gram TF-IDF
(2-4 and 3-5 characters), the mean gain of the nearest training prompts, a ridge on "strong better" alone; alpha
from 1 to 100 (none takes fold 2 past 0.565); the n-gram, TF-IDF and shape ridges at an equal say (fold 2 0.571,
fold 4 0.579, within 0.01 of the peer, but fold 5 0.506 and GSM8K 0.569), and with the shape ridge fitted on what
the n-grams miss (fold 5 0.473, below random). Even with the blend's weights tuned on the folds themselves (a
ceiling, not a result), the best worst-fold margin over the peer was -0.002. No config was above random on every fold and ahead
of the peer on every fold: on folds 2 and 4 the shape numbers, which carry the recipe on unseen kinds (GSM8K, fold
5), cost 0.02 against the n-grams alone, and the peer's margin there is inside the intervals. The recipe is
unchanged. So these are not untouched held-out figures: the choice among configs saw them (the nested column is the
check on the one knob kept). No fold's prompts were ever used to fit the model scored on them. Held-out sets
outside `../shared/router-data` (the issue's table) were not used.

**Learning a tenant's kind of traffic.** What `ferryman router train --from general --labels FILE` does
(`classifier/tune.py`), run here from the general recipe fitted without a source: n labelled prompts of that
source (as `ferryman router label` or `--from-ledger` feedback would give) fine-tune it (a ridge toward the prior's
weights, the prior's strength picked by cross-validation on the n labels only), and the source's prompts that were
not among the labels are scored (a fixed test set per repeat: what is left after the largest pool; AlpacaEval-dev
has 415 prompts and keeps 100 for testing, so its steps stop at 200). Median (min-max) of {REPEATS} repeats with
different draws. "alone" fits the recipe from scratch on the same n labels only. Both learn the pair's own gain.
Features, folds and the learning curve took {took:.0f} s.

{table(["source", "labels added", "test prompts", "APGR general fine-tuned", "APGR labels alone"], curve_rows)}

![learning curve](img/router_learning_curve.png)

**Knowing when it does not know.** The artifact stores what its training prompts looked like: the share of a
prompt's words its vocabulary knows (measured for each training prompt against a vocabulary fitted without its
group; the 1% quantile is the bar) and the range of the ten shape numbers. Share of prompts flagged unfamiliar:

{table(["prompts", "count", "flagged unfamiliar"], strange)}

### Targets on shifted traffic

The general artifact's thresholds are calibrated on all sources together; here each exam benchmark's prompts
arrive alone (3,000 at most, shuffled), which shifts the score distribution. "calibrated" applies the
artifact's threshold; "live window" is what the gateway does (`classifier/live.py`: the threshold at the
matching quantile of the last 1,000 scores of that route group and tenant).

{table(["traffic", "target", "strong share, calibrated threshold", "strong share, live window"], shift)}

### The bundled pair

The bundled router (`router: bundled`, the embedded catalog's), trained on `classifier/artifacts/bundled_train.csv`
and measured on the held-out `bundled_test.csv` (labels from the pair itself, `python -m classifier.labels`):

{bundled_table}

![bundled](img/router_bundled.png)

### Scoring latency

What the gateway calls per prompt (`Router.assess`: score and familiarity), single thread, prompts of real text
cut or repeated to 50-4,000 characters; 3 interleaved rounds, median (min-max) of each round's percentile,
milliseconds. The gateway runs it off the event loop for prompts long enough to block it.

{table(["router", "calls", "wall p50 (ms)", "wall p99 (ms)", "CPU p50 (ms)", "CPU p99 (ms)"], speed)}

Load average during this run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other engineers' jobs), which is
what the wall-clock tail measures; the scorer's own CPU time is the figure to hold against the budget
(p50 <= 2 ms, p99 <= 10 ms).
"""
    print(body)
    if write:
        write_section("router", "Difficulty router (classifier)", "python bench/router_eval.py", body)
        print("wrote docs/img/router_*.png and docs/BENCHMARKS.md")


def familiarity_rows(general: Router) -> list[list]:
    """Training kinds against kinds absent from every training file (tests/classifier/strange_prompts.py)."""
    rows = []
    for name, prompts in general_recipe_prompts().items():
        flags = [general.assess(p)[1] for p in prompts]
        rows.append([name, len(prompts), f"{sum(flags) / len(prompts):.1%}"])
    return rows


def general_recipe_prompts() -> dict[str, list[str]]:
    found = {name: [e.prompt for e in ex] for name, ex in general_recipe.sources(SHARED).items()}
    return found | STRANGE_KINDS


if __name__ == "__main__":
    main()
