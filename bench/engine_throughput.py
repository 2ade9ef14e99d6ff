"""Our engine against HF transformers `generate` on the same checkpoint, in the same run.

Throughput workload: N requests (default 128) with prompt and output lengths drawn uniformly from wide
ranges, all arriving at once. The engine serves them with continuous batching (at most --max-num-seqs at
a time, chunked prefill); HF serves them in arrival order as static, left-padded batches of
each of --hf-batch-sizes, each batch running until its longest output is done. Both decode greedily in float32
with EOS ignored, so outputs must be token-identical; the table says how many are.
Reported: generated tokens/s (useful tokens only), time to first token and inter-token latency
(p50/p95, from the common start), and the engine/HF ratio.

Multi-turn workload: conversations sharing a system prompt, each turn's prompt the whole history so far;
all conversations send turn t together. The engine runs it with prefix caching on and off.

Each of --rounds interleaved rounds runs every system once, in turn; every speed is shown as the median
(min-max) over rounds, and every ratio is computed per round, then summarised the same way.

Writes the `engine_throughput` section of docs/BENCHMARKS.md, docs/data/engine_throughput.csv (every round's
requests, with a round column) and docs/img/engine_throughput.png (when each request got its first and its last
token, per system, in the last round).

    .venv/bin/python bench/engine_throughput.py [--rounds 3] [--model models/large] [--num-requests 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backends.base import SamplingParams  # noqa: E402
from backends.engine import EngineConfig, LLMEngine  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402

CSV = ROOT / "docs" / "data" / "engine_throughput.csv"
PLOT = ROOT / "docs" / "img" / "engine_throughput.png"


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds from the common start, one per token


def make_workload(n: int, vocab: int, prompt_range: tuple[int, int], output_range: tuple[int, int], seed: int) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request([rng.randrange(4, vocab) for _ in range(rng.randint(*prompt_range))], rng.randint(*output_range))
        for _ in range(n)
    ]


@dataclass
class Timing:
    wall: float
    cpu: float  # this process's CPU seconds: steadier than wall time on a shared machine


def run_engine(engine: LLMEngine, requests: list[Request], label: str) -> Timing:
    """Submit all requests at once and step until done."""
    start, cpu = time.perf_counter(), time.process_time()
    for i, r in enumerate(requests):
        engine.add_request(f"{label}-{i}", r.prompt, SamplingParams(max_tokens=r.max_tokens, temperature=0, ignore_eos=True))
    with tqdm(total=sum(r.max_tokens for r in requests), desc=f"engine {label}", unit="tok") as bar:
        while engine.has_unfinished():
            outputs = engine.step()
            now = time.perf_counter() - start
            for out in outputs:
                r = requests[int(out.request_id.rsplit("-", 1)[1])]
                r.tokens += out.token_ids
                r.times += [now] * len(out.token_ids)
            bar.update(len(outputs))
    return Timing(time.perf_counter() - start, time.process_time() - cpu)


class _StepClock:
    """A generate() streamer that only notes when each decoding step's tokens appear."""

    def __init__(self, start: float) -> None:
        self.start, self.times, self._prompt_seen = start, [], False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter() - self.start)
        self._prompt_seen = True

    def end(self) -> None:
        pass


def run_hf(model, requests: list[Request], batch_size: int) -> Timing:
    start, cpu = time.perf_counter(), time.process_time()
    for b in tqdm(range(0, len(requests), batch_size), desc="hf generate"):
        batch = requests[b : b + batch_size]
        width = max(len(r.prompt) for r in batch)
        ids = torch.tensor([[0] * (width - len(r.prompt)) + r.prompt for r in batch])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in batch])
        clock = _StepClock(start)
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False, pad_token_id=0, streamer=clock,
            )
        for row, r in zip(out, batch):
            r.tokens = row[width : width + r.max_tokens].tolist()
            r.times = clock.times[: r.max_tokens]
    return Timing(time.perf_counter() - start, time.process_time() - cpu)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def summarize(requests: list[Request], timing: Timing) -> dict:
    ttft = [r.times[0] for r in requests]
    itl = [b - a for r in requests for a, b in zip(r.times, r.times[1:])]
    tokens = sum(len(r.tokens) for r in requests)
    return {
        "tok/s": tokens / timing.wall, "seconds": timing.wall, "tok/cpu-s": tokens / timing.cpu,
        "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95),
        "itl_p50_ms": 1e3 * pct(itl, 0.5), "itl_p95_ms": 1e3 * pct(itl, 0.95),
    }


def throughput(args, vocab: int) -> tuple[str, list[dict]]:
    from transformers import LlamaForCausalLM

    def workload() -> list[Request]:
        return make_workload(args.num_requests, vocab, args.prompt_range, args.output_range, args.seed)

    engine = LLMEngine(engine_config(args, enable_prefix_caching=False))
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2, temperature=0))  # warm-up
    hf = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # fixed lengths, like the engine's ignore_eos
    systems = {"engine": lambda reqs: run_engine(engine, reqs, "throughput")}
    systems |= {size: (lambda reqs, size=size: run_hf(hf, reqs, size)) for size in args.hf_batch_sizes}
    # Rounds interleave the systems, so load from others on the shared machine falls on all of them alike.
    runs = {name: [] for name in systems}  # name -> one (requests, summary) per round
    for _ in range(args.rounds):
        for name, run in systems.items():
            reqs = workload()
            runs[name].append((reqs, summarize(reqs, run(reqs))))
    ours = runs.pop("engine")
    s_ours = [s for _, s in ours]
    headers = ["system", "generated tok/s", "tok per CPU-s", "wall s", "TTFT p50 s", "TTFT p95 s", "ITL p50 ms", "ITL p95 ms",
               "greedy = engine", "engine speed-up", "speed-up per CPU-s"]
    rows = [[f"engine (max {args.max_num_seqs} seqs, {args.max_num_batched_tokens} tok/step)", *_cells(s_ours), "-", "-", "-"]]
    per_request = [row for r, (reqs, _) in enumerate(ours, 1) for row in _per_request("engine", reqs, r)]
    for size, hf_runs in runs.items():
        s_hf = [s for _, s in hf_runs]
        same = sum(a.tokens == b.tokens for (mine, _), (theirs, _) in zip(ours, hf_runs) for a, b in zip(mine, theirs))
        rows.append([f"HF generate, static batches of {size}", *_cells(s_hf), f"{same}/{len(ours) * args.num_requests}",
                     spread(per_round(s_ours, s_hf, "tok/s")), spread(per_round(s_ours, s_hf, "tok/cpu-s"))])
        per_request += [row for r, (reqs, _) in enumerate(hf_runs, 1) for row in _per_request(f"hf batch {size}", reqs, r)]
    top = max(runs, key=lambda size: statistics.median(s["tok/s"] for _, s in runs[size]))
    s_best = [s for _, s in runs[top]]
    note = (f"\n\nEngine vs HF at its best batch size ({top}, by median tok/s), ratios per round, median (min-max): "
            f"**{spread(per_round(s_ours, s_best, 'tok/s'))}** times the generated tokens/s "
            f"({spread(per_round(s_ours, s_best, 'tok/cpu-s'))} per CPU-second); TTFT p50 "
            f"{spread(per_round(s_best, s_ours, 'ttft_p50'), 1)} and p95 {spread(per_round(s_best, s_ours, 'ttft_p95'), 1)} times lower.")
    return table(headers, rows) + note, per_request


def per_round(a: list[dict], b: list[dict], key: str) -> list[float]:
    """a[key] / b[key], round by round."""
    return [x[key] / y[key] for x, y in zip(a, b)]


def _per_request(system: str, reqs: list[Request], round_: int) -> list[dict]:
    return [{"workload": "throughput", "system": system, "round": round_, "request": i, "prompt_tokens": len(r.prompt),
             "output_tokens": len(r.tokens), "ttft_s": round(r.times[0], 4), "finish_s": round(r.times[-1], 4)}
            for i, r in enumerate(reqs)]


def plot(rows: list[dict]) -> None:
    """Requests sorted by time: when the first token came (solid) and when the last did (dashed), last round."""
    last = max(r["round"] for r in rows)
    rows = [r for r in rows if r["round"] == last]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    systems = sorted({r["system"] for r in rows if r["workload"] == "throughput"}, key=lambda s: (s != "engine", s))
    for i, system in enumerate(systems):
        mine = [r for r in rows if r["workload"] == "throughput" and r["system"] == system]
        color = f"C{i}"
        ax.plot(sorted(r["ttft_s"] for r in mine), range(len(mine)), color=color, label=f"{system}: first token")
        ax.plot(sorted(r["finish_s"] for r in mine), range(len(mine)), color=color, linestyle="--", label=f"{system}: done")
    ax.set_title(f"round {last} of {last}", fontsize=9)
    ax.set_xlabel("seconds since all requests arrived")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    PLOT.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


SPEEDS = {"tok/s": 0, "tok/cpu-s": 0, "seconds": 1, "ttft_p50": 2, "ttft_p95": 2, "itl_p50_ms": 1, "itl_p95_ms": 1}  # -> digits


def _cells(summaries: list[dict]) -> list[str]:
    return [spread([s[key] for s in summaries], digits) for key, digits in SPEEDS.items()]


def multi_turn(args, vocab: int) -> tuple[str, list[dict]]:
    rng = random.Random(args.seed + 1)
    system = [rng.randrange(4, vocab) for _ in range(args.system_tokens)]
    users = [[[rng.randrange(4, vocab) for _ in range(rng.randint(16, 48))] for _ in range(args.turns)] for _ in range(args.conversations)]
    results = {True: [], False: []}  # caching -> one summary per round
    per_request, answers = [], []
    for round_ in range(1, args.rounds + 1):
        for caching in (True, False):
            # A fresh engine every round: a prefix cache left warm by the last round would flatter caching.
            engine = LLMEngine(engine_config(args, enable_prefix_caching=caching))
            engine.generate([[5, 6, 7]], SamplingParams(max_tokens=2, temperature=0))
            histories = [list(system) for _ in users]
            ttft = {t: [] for t in range(args.turns)}
            start = time.perf_counter()
            for turn in tqdm(range(args.turns), desc=f"round {round_} multi-turn caching={caching}"):
                requests = [Request(h + u[turn], args.answer_tokens) for h, u in zip(histories, users)]
                run_engine(engine, requests, f"turn{turn}")
                for i, (h, r) in enumerate(zip(histories, requests)):
                    h[:] = r.prompt + r.tokens
                    ttft[turn].append(r.times[0])
                    per_request.append({"workload": "multi-turn", "system": f"engine caching={caching}", "round": round_,
                                        "request": i, "turn": turn, "prompt_tokens": len(r.prompt),
                                        "output_tokens": len(r.tokens), "ttft_s": round(r.times[0], 4),
                                        "finish_s": round(r.times[-1], 4)})
            answers.append(histories)
            later = [x for t in range(1, args.turns) for x in ttft[t]]
            bm = engine.block_manager
            results[caching].append({"ttft_1": statistics.mean(ttft[0]), "later_p50": pct(later, 0.5),
                                     "later_p95": pct(later, 0.95), "seconds": time.perf_counter() - start,
                                     "hit_rate": bm.prefix_hits / max(bm.prefix_queries, 1)})
    speeds = {"ttft_1": 3, "later_p50": 3, "later_p95": 3, "seconds": 2}  # -> digits
    rows = [[f"prefix caching {'on' if caching else 'off'}",
             *[spread([r[key] for r in results[caching]], digits) for key, digits in speeds.items()],
             f"{statistics.median(r['hit_rate'] for r in results[caching]):.3f}"] for caching in (True, False)]
    rows.append(["ratio off / on", *[spread(per_round(results[False], results[True], key)) for key in speeds], ""])
    same = "identical" if all(a == answers[0] for a in answers) else "DIFFERENT"
    headers = ["engine", "turn-1 TTFT mean s", "later turns TTFT p50 s", "later turns TTFT p95 s", "wall s",
               "prefix hit rate (tokens)"]
    return table(headers, rows) + f"\n\nGreedy conversations with caching on and off, in every round: {same}.", per_request


def engine_config(args, enable_prefix_caching: bool) -> EngineConfig:
    return EngineConfig(
        args.model, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=enable_prefix_caching, kv_cache_memory_gb=args.kv_cache_gb, dtype="float32",
    )


def rerun_command(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that reproduces this run: --rounds, and every flag not left at its default."""
    defaults = vars(p.parse_args([]))
    flags = [f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
             for key, value in vars(args).items() if key == "rounds" or value != defaults[key]]
    return " ".join(["bench/engine_throughput.py", *flags])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "large"))
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--prompt-range", type=int, nargs=2, default=[8, 256])
    p.add_argument("--output-range", type=int, nargs=2, default=[8, 256])
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--kv-cache-gb", type=float, default=1.0)
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-tokens", type=int, default=96)
    p.add_argument("--answer-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both systems")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of every system; medians (min-max) over them")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vocab = EngineConfig(args.model).hf_config["vocab_size"]

    body_tp, rows_tp = throughput(args, vocab)
    body_mt, rows_mt = multi_turn(args, vocab)
    print(body_tp, "\n\n" + body_mt)
    CSV.parent.mkdir(exist_ok=True)
    rows = rows_tp + rows_mt
    with CSV.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows)
    intro = (
        f"Model `{Path(args.model).name}`, float32, {args.threads} torch thread(s) for each system. "
        f"Throughput workload: {args.num_requests} requests, prompt lengths uniform in {list(args.prompt_range)}, "
        f"output lengths uniform in {list(args.output_range)} (EOS ignored), all arriving at t=0; TTFT counts from "
        f"then, so it includes queueing. {args.rounds} interleaved rounds, each running the engine and every HF batch size "
        "once, in turn: every speed is the median (min-max) over rounds, every speed-up is computed per round. HF serves "
        "them in arrival order as static left-padded batches; \"greedy = engine\": requests whose HF output is "
        "token-identical to the engine's in the same round, over all rounds. Per-request data, every round: "
        "`docs/data/engine_throughput.csv`; the plot shows the last round."
    )
    mt = (
        f"Multi-turn workload: {args.conversations} conversations x {args.turns} turns, a shared "
        f"{args.system_tokens}-token system prompt, user turns of 16-48 tokens, {args.answer_tokens}-token answers; "
        "every conversation sends turn t together, each prompt the whole history. Each round runs caching on, then off, "
        "each on a fresh engine; median (min-max) over the rounds, ratios per round."
    )
    write_section("engine_throughput", "Engine: continuous batching and prefix caching vs HF generate",
                  rerun_command(p, args),
                  f"{intro}\n\n{body_tp}\n\n![first and last token per request](img/engine_throughput.png)\n\n{mt}\n\n{body_mt}")


if __name__ == "__main__":
    main()
