"""Sharding: the memory and bandwidth arithmetic of a 70B Llama on 1-8 H100s, and the measured cost of TP/PP here.

Part 1 is exact arithmetic (no GPU needed): weight bytes at fp16 / int8 / int4 in our quantized formats, KV
bytes per token, what fits, decode-step lower bounds from HBM bandwidth, and the all-reduce cost of
tensor parallelism from a stated latency + bandwidth model. Part 2 runs the bundled models/large with
TP=1, TP=2 and PP=2 on this machine and measures, on rank 0, step time and the bytes and time of
communication per step: every layout stays started and --rounds interleaved rounds each run the workload once
on every layout, in turn; times are median (min-max) over rounds, ratios taken within a round.

    .venv/bin/python bench/sharding.py --rounds 3 # both parts; writes its section of docs/BENCHMARKS.md
    .venv/bin/python bench/sharding.py --table    # part 1 only, printed
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import spread, table, write_section  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "large"
GB = 1e9
GIB = 2**30
# Llama 3 70B
LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 80, 8192, 64, 8, 128, 28672, 128256
# H100 SXM 80GB
HBM_BYTES = 80 * GIB
USABLE = 0.90  # of HBM for weights + KV; the rest is activations, workspace, CUDA context
HBM_BW = 3.35e12  # bytes/s
NVLINK_BW = 450e9  # bytes/s per direction (900 GB/s bidirectional)
ALLREDUCE_LATENCY = 8e-6  # s per small NCCL all-reduce over NVLink within a node (an assumption; measure on the target)
GROUP_SIZE = 128  # int4 group size; scales fp16 + zero points uint8 per group; int8: one fp16 scale per output row


def linear_shapes() -> list[tuple[int, int]]:
    """(out, in) of every linear layer in the decoder stack."""
    per_layer = [(HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN),
                 (HIDDEN, HEADS * HEAD_DIM), (FFN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]
    return per_layer * LAYERS


def weight_bytes(precision: str) -> int:
    """Decoder linears in the given format; embedding, LM head and norms stay fp16 (as backends.engine.quant does)."""
    linears = 0
    for out, inp in linear_shapes():
        if precision == "fp16":
            linears += 2 * out * inp
        elif precision == "int8":
            linears += out * inp + 2 * out
        else:
            linears += out * inp // 2 + out * (inp // GROUP_SIZE) * 3
    rest = 2 * (2 * VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN)
    return linears + rest


def kv_bytes_per_token(dtype_bytes: int = 2) -> int:
    return 2 * LAYERS * KV_HEADS * HEAD_DIM * dtype_bytes


def allreduce_seconds(num_bytes: float, ranks: int) -> float:
    """Ring all-reduce: each rank sends and receives 2(N-1)/N of the buffer, plus a fixed latency."""
    return ALLREDUCE_LATENCY + 2 * (ranks - 1) / ranks * num_bytes / NVLINK_BW


def arithmetic_rows(batch: int, context: int) -> list[list]:
    """Both layouts at the same number of sequences in flight: `batch`, or as many as the KV memory holds."""
    rows = []
    kv_tok = kv_bytes_per_token()
    for precision in ("fp16", "int8", "int4"):
        w = weight_bytes(precision)
        for n in (1, 2, 4, 8):
            kv_tokens = max(0, int((n * HBM_BYTES * USABLE - w) // kv_tok))
            seqs = min(batch, kv_tokens // context)
            if seqs < n:
                rows.append([precision, n, w / n / GIB, "no", "-", "-", "-", "-", "-", "-", "-"])
                continue
            # TP: one batch; a decode step reads every weight and the batch's KV once, N ranks in parallel.
            tp_step = (w + seqs * context * kv_tok) / n / HBM_BW
            comm = 0.0
            if n > 1:
                comm = 2 * LAYERS * allreduce_seconds(seqs * HIDDEN * 2, n) + allreduce_seconds(seqs * VOCAB * 2 / n, n)
            # PP: N micro-batches in flight, one per stage; each stage reads its weights once per micro-batch, so a
            # round in which every sequence advances one token reads the weights N times over.
            pp_step = (w + seqs / n * context * kv_tok) / HBM_BW
            rows.append([
                precision, n, w / n / GIB, "yes", f"{kv_tokens / 1e3:,.0f}k", seqs,
                tp_step * 1e3, comm * 1e3, seqs / (tp_step + comm), pp_step * 1e3, seqs / pp_step,
            ])
    return rows


ARITH_HEADERS = ["weights", "H100s", "weights/GPU GiB", "fits", "KV tokens", "sequences",
                 "TP step >= ms (HBM)", "TP all-reduce ms/step", "TP tokens/s", "PP token latency >= ms", "PP tokens/s"]


def arithmetic_section(batch: int, context: int) -> str:
    w16, w8, w4 = (weight_bytes(p) for p in ("fp16", "int8", "int4"))
    lines = [
        f"Llama 70B: {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads / {KV_HEADS} KV heads x {HEAD_DIM}, FFN {FFN}, "
        f"vocab {VOCAB}. Weights: fp16 {w16 / GB:.1f} GB, int8 {w8 / GB:.1f} GB (per-row fp16 scales), "
        f"int4 {w4 / GB:.1f} GB (group {GROUP_SIZE}: fp16 scale + uint8 zero point per group); the embedding and LM head "
        f"stay fp16 ({2 * 2 * VOCAB * HIDDEN / GB:.1f} GB of each total). KV cache: {kv_bytes_per_token() / 1024:.0f} KiB "
        f"per token at fp16 ({kv_bytes_per_token() * 8192 / GB:.2f} GB for one 8k-token context).",
        "",
        f"H100 SXM 80 GB: {HBM_BW / 1e12:.2f} TB/s HBM, NVLink {2 * NVLINK_BW / 1e9:.0f} GB/s bidirectional; "
        f"{USABLE:.0%} of HBM usable for weights + KV. A decode step at {context} tokens of context per sequence reads "
        f"every weight and the batch's KV once; both layouts hold {batch} sequences (or as many as the KV memory "
        "holds). TP runs them as one batch over N ranks. PP splits them into N micro-batches, one per stage, each "
        "passing through every stage in turn: a token's latency is the whole model's read time, and every round "
        "reads the weights N times over. PP's stage-to-stage sends ([micro-batch, hidden] fp16) are negligible. "
        f"TP all-reduce: 2 per layer of [batch, hidden] fp16 plus an all-gather of the logits, each modelled as "
        f"{ALLREDUCE_LATENCY * 1e6:.0f} us + ring bytes / {NVLINK_BW / 1e9:.0f} GB/s.",
        "",
        table(ARITH_HEADERS, arithmetic_rows(batch, context)),
    ]
    return "\n".join(lines)


# (TP, PP, threads): the baseline is one process on one thread, as each rank of TP=2 / PP=2 gets here; then
# torch's default threads in one process.
LAYOUTS = ((1, 1, 1), (1, 1, None), (2, 1, None), (1, 2, None))


def run(engine, prompts: list[list[int]], params) -> dict:
    """The workload once; steps, time, and the communication bytes and time on rank 0."""
    runner = engine.model_runner
    groups = {name: getattr(runner, name, None) for name in ("tp", "world")}
    for g in groups.values():
        if g is not None:
            g.bytes, g.seconds = 0, 0.0
    steps = 0
    step = engine.step

    def counted():
        nonlocal steps
        steps += 1
        return step()

    engine.step = counted
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    del engine.step  # the class's own method again
    comm = {f"{name}_{what}": getattr(g, what) if g is not None else 0
            for name, g in groups.items() for what in ("bytes", "seconds")}
    return {"steps": steps, "seconds": elapsed, "tokens": [o.token_ids for o in outs], **comm}


def measure(model: str, num_requests: int, rounds: int, seed: int = 0) -> list[list]:
    """Run one fixed workload under every layout, interleaved over rounds; one table row per layout."""
    import torch

    from backends.base import SamplingParams
    from backends.engine import EngineConfig, LLMEngine

    rng = random.Random(seed)
    vocab = 4096
    prompts = [[rng.randrange(6, vocab) for _ in range(rng.randint(32, 96))] for _ in range(num_requests)]
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    threads_before = torch.get_num_threads()
    engines = {}
    for tp, pp, threads in tqdm(LAYOUTS, desc="starting"):
        torch.set_num_threads(threads_before)  # from torch's default, not the thread count the last layout set
        # No prefix caching: every run repeats the same prompts, and each must prefill them in full as the first did.
        engine = LLMEngine(EngineConfig(model, num_kv_blocks=512, max_num_seqs=16, max_num_batched_tokens=256,
                                        tensor_parallel_size=tp, pipeline_parallel_size=pp, num_threads=threads,
                                        enable_prefix_caching=False))
        engine.generate(prompts, params)  # warm-up: first-call allocations at every shape the workload reaches
        # The thread count is per process and each engine sets rank 0's as it starts: set it again before its runs.
        engines[tp, pp, threads] = engine, torch.get_num_threads()
    runs = defaultdict(list)
    for _ in tqdm(range(rounds), desc="rounds"):
        for layout, (engine, threads) in engines.items():
            torch.set_num_threads(threads)
            runs[layout].append(run(engine, prompts, params))
    for engine, _ in engines.values():
        if hasattr(engine.model_runner, "shutdown"):
            engine.model_runner.shutdown()
    torch.set_num_threads(threads_before)

    base, reference = runs[LAYOUTS[0]], runs[LAYOUTS[0]][0]["tokens"]
    rows = []
    for layout, (_, threads) in engines.items():
        tp, pp, rs = *layout[:2], runs[layout]
        for key in ("steps", "tp_bytes", "world_bytes"):  # the same workload: the same steps and bytes every round
            assert len({r[key] for r in rs}) == 1, f"TP={tp} PP={pp}: {key} differ by round: {[r[key] for r in rs]}"
        n = rs[0]["steps"]
        ms = [r["seconds"] / n * 1e3 for r in rs]
        rows.append([
            f"TP={tp} PP={pp}, {threads} thread{'s' if threads > 1 else ''}/rank", n, spread(ms, 1),
            spread([m / (b["seconds"] / b["steps"] * 1e3) for m, b in zip(ms, base)], 2) if rs is not base else "1",
            rs[0]["tp_bytes"] / n / 1e3 if tp > 1 else "-",
            spread([r["tp_seconds"] / n * 1e3 for r in rs], 1) if tp > 1 else "-",
            rs[0]["world_bytes"] / n / 1e3 if tp * pp > 1 else "-",
            spread([r["world_seconds"] / n * 1e3 for r in rs], 1) if tp * pp > 1 else "-",
            "yes" if all(r["tokens"] == reference for r in rs) else "NO",
        ])
    return rows


MEASURED_HEADERS = ["layout", "steps", "ms/step", "x TP=1", "TP collectives KB/step", "TP collectives ms/step",
                    "rank-0 broadcast+p2p KB/step", "rank-0 broadcast+p2p ms/step", "same tokens as TP=1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of the measured part (each runs every layout once); median and min-max")
    ap.add_argument("--batch", type=int, default=64, help="decode batch of the arithmetic table")
    ap.add_argument("--context", type=int, default=4096, help="tokens of context per sequence in the arithmetic table")
    ap.add_argument("--table", action="store_true", help="print the arithmetic only")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    arithmetic = arithmetic_section(args.batch, args.context)
    print(arithmetic)
    if args.table:
        return
    rows = measure(args.model, args.requests, args.rounds)
    measured = table(MEASURED_HEADERS, rows)
    print("\n" + measured)
    if not args.no_write:
        body = (
            f"### 70B on H100s (arithmetic)\n\n{arithmetic}\n\n### Measured here: `{Path(args.model).name}`, "
            f"{args.requests} requests (32-96 token prompts, 32 tokens out), gloo over loopback, one process per rank\n\n"
            f"{measured}\n\nEvery layout stays started (its ranks idle while another runs); {args.rounds} interleaved "
            "rounds each run the workload once on every layout, in turn, after one warm-up run each; prefix caching is off, "
            "so every run prefills its prompts in full. Times are the "
            "median (min-max) over rounds; x TP=1 is taken within each round. Steps and bytes were the same in every "
            "round (the bench checks); same tokens: every round's equal TP=1's. "
            "TP collectives: the two all-reduces per layer, the embedding's all-reduce and the logits' "
            "all-gather. Rank 0 also broadcasts each step's batch (token ids, positions, slots, block tables) to every "
            "rank, and with PP sends hidden states to the next stage and receives the logits back; its time there "
            "includes waiting for the other stage. On this CPU the ranks share the same cores, so neither layout can "
            "be faster than one process: the figures are the price of the communication, not a speed-up. The ratios "
            "are against one process on one thread, as each rank runs here."
        )
        model = "" if args.model == str(DEFAULT_MODEL) else f" --model {args.model}"
        command = (f".venv/bin/python bench/sharding.py --rounds {args.rounds} --requests {args.requests} "
                   f"--batch {args.batch} --context {args.context}{model}")
        write_section("sharding", "Sharding: tensor and pipeline parallelism", command, body)


if __name__ == "__main__":
    main()
