"""Decode speed of our engine on models/large per weight quantization mode, at batch 1, 8 and 32.

Each run: `batch` requests with 32-token prompts arrive together; greedy, EOS ignored, 64 new
tokens each. Decode tokens/s counts the tokens after each request's first one, over the time
from the first token to the last (so prefill is not in it); fp32 weights are the baseline of the
same run. Also: whether each mode's greedy tokens equal fp32's (token agreement).

Writes the `quant_decode` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/quant_decode.py [--new-tokens 64] [--rounds 3] [--threads 1] [--batch 1 8 32]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backends.base import SamplingParams  # noqa: E402
from backends.engine import EngineConfig, LLMEngine  # noqa: E402
from bench.report import table, write_section  # noqa: E402

MODEL = ROOT / "models" / "large"
MODES = (None, "int8", "int4")
PROMPT_TOKENS = 32


def decode(engine: LLMEngine, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    """Decode tokens/s (after each request's first token) and every request's tokens."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    first: float | None = None
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
        if first is None and all(tokens.values()):
            first = time.perf_counter()
    elapsed = time.perf_counter() - first
    decoded = sum(len(t) - 1 for t in tokens.values())
    return decoded / elapsed, list(tokens.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU; 1 keeps timings steady on a shared machine")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (each runs every mode and batch once); median and min-max reported")
    args = parser.parse_args()
    rng = random.Random(0)
    vocab = EngineConfig(model=str(MODEL)).hf_config["vocab_size"]
    prompts = [[rng.randrange(4, vocab) for _ in range(PROMPT_TOKENS)] for _ in range(max(args.batch))]

    engines = {mode: LLMEngine(EngineConfig(model=str(MODEL), quantization=mode, num_threads=args.threads))
               for mode in tqdm(MODES, desc="loading")}
    for engine in engines.values():  # warm-up at every batch size: first-call allocations per shape, weight
        for batch in args.batch:       # packing, kernel compilation on GPU
            decode(engine, prompts[:batch], 4)
    speed, outputs = defaultdict(list), {}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for batch in args.batch:
            for mode, engine in engines.items():
                tokens_per_s, outputs[mode, batch] = decode(engine, prompts[:batch], args.new_tokens)
                speed[mode, batch].append(tokens_per_s)

    rows = []
    for mode in MODES:
        for batch in args.batch:
            same = sum(a == b for a, b in zip(outputs[mode, batch], outputs[None, batch])) / batch
            runs = speed[mode, batch]
            ratios = [a / b for a, b in zip(runs, speed[None, batch])]
            rows.append([mode or "fp32", batch, statistics.median(runs), f"{min(runs):,.0f}-{max(runs):,.0f}",
                         f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})", same])
    result = table(["weights", "batch", "decode tokens/s (median)", "min-max", "vs fp32 (per round)",
                    "requests with fp32's exact tokens"], rows)
    print(result)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    body = f"""
`LLMEngine` on `models/large` ({device}), weights quantized on load (`EngineConfig.quantization`). {PROMPT_TOKENS}-token
prompts, {args.new_tokens} new tokens per request, greedy, EOS ignored; decode tokens/s excludes prefill (from every
request's first token to the last); median and min-max of {args.rounds} interleaved rounds (each round runs every
mode at every batch size, so load from other processes falls on all alike; ratios are taken within a round);
{args.threads} torch thread(s) on CPU, the same in every arm. On an x86 CPU int8 runs fbgemm's int8 GEMM with
activations quantized on the fly, symmetric per row (8-bit on AVX-512 VNNI, else 7-bit), so its tokens can drift from fp32's (quality: the
quant_quality section); `lm_head` stays fp32 in every arm. int4
dequantizes its weights every forward there (torch reference path), trading speed for memory. On a GPU the
fused Triton kernels read the quantized weights directly. Load average at the end: {load}.

{result}
"""
    batches = " ".join(map(str, args.batch))
    command = f"bench/quant_decode.py --new-tokens {args.new_tokens} --rounds {args.rounds} --batch {batches}"
    write_section("quant_decode", "Quantized weights: engine decode speed", command, body)


if __name__ == "__main__":
    main()
