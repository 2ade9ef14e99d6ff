"""Decode speed of our engine on models/large per weight quantization mode, at batch 1 and batch 8.

Each run: `batch` requests with 32-token prompts arrive together; greedy, EOS ignored, 64 new
tokens each. Decode tokens/s counts the tokens after each request's first one, over the time
from the first token to the last (so prefill is not in it); fp32 weights are the baseline of the
same run. Also: whether each mode's greedy tokens equal fp32's (token agreement).

Writes the `quant_decode` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/quant_decode.py [--new-tokens 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
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
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on CPU; 1 keeps timings steady on a shared machine")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the best is kept (shared CPU)")
    args = parser.parse_args()
    rng = random.Random(0)
    vocab = EngineConfig(model=str(MODEL)).hf_config["vocab_size"]
    prompts = [[rng.randrange(4, vocab) for _ in range(PROMPT_TOKENS)] for _ in range(max(args.batch))]

    speed, outputs = {}, {}
    for mode in tqdm(MODES, desc="modes"):
        engine = LLMEngine(EngineConfig(model=str(MODEL), quantization=mode, num_threads=args.threads))
        decode(engine, prompts[:1], 4)  # warm-up: first-call allocations, kernel compilation on GPU
        for batch in args.batch:
            runs = [decode(engine, prompts[:batch], args.new_tokens) for _ in range(args.repeats)]
            speed[mode, batch] = max(r[0] for r in runs)
            outputs[mode, batch] = runs[0][1]
        del engine

    rows = []
    for mode in MODES:
        for batch in args.batch:
            same = sum(a == b for a, b in zip(outputs[mode, batch], outputs[None, batch])) / batch
            rows.append([mode or "fp32", batch, speed[mode, batch], speed[mode, batch] / speed[None, batch], same])
    result = table(["weights", "batch", "decode tokens/s", "vs fp32", "requests with fp32's exact tokens"], rows)
    print(result)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    body = f"""
`LLMEngine` on `models/large` ({device}), weights quantized on load (`EngineConfig.quantization`). {PROMPT_TOKENS}-token
prompts, {args.new_tokens} new tokens per request, greedy, EOS ignored; decode tokens/s excludes prefill (from every
request's first token to the last); best of {args.repeats} runs; {args.threads} torch thread(s) on CPU. Activations are {'fp32' if device == 'cpu' else 'the checkpoint dtype'}.
On CPU the quantized layers dequantize their weights on every forward (torch reference path), so they trade
speed for memory there; on a GPU the fused Triton kernels read the quantized weights directly.

{result}
"""
    write_section("quant_decode", "Weight-only quantization: engine decode speed", "bench/quant_decode.py", body)


if __name__ == "__main__":
    main()
