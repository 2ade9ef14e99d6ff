"""Speculative decoding on models/large (target) with models/small (draft) or n-gram prompt lookup.

Per weight quantization mode of the target (none, int8, int4; the draft stays unquantized) and batch size (1, 8):
decode tokens/s without speculation (the baseline, same run), with the draft model proposing k tokens,
and with n-gram lookup; the acceptance rate (accepted / proposed drafts), the mean accepted length (tokens
emitted per sequence per target forward: accepted drafts + 1) and the speedup over the baseline.
Prompts are 32-token passages of models/heldout.txt, greedy, EOS ignored; decode tokens/s counts tokens
after each request's first one, over the time from the first token to the last (prefill left out).
Every engine stays loaded and --rounds interleaved rounds each run every cell once, in turn, so load from other
processes falls on all alike; speeds are median (min-max) over rounds, speedups are taken within a round.
"same tokens" says whether every round's greedy tokens equal the baseline's (its first round).

Writes the `spec_decode` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/spec_decode.py [--rounds 3] [--new-tokens 64] [--k 4] [--threads 1] [--modes none int8 int4]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backends.engine import EngineConfig, LLMEngine  # noqa: E402
from bench.quant_decode import decode  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402

TARGET, DRAFT = ROOT / "models" / "large", ROOT / "models" / "small"
PROMPT_TOKENS = 32
METHODS = {"off": {}, "draft": {"speculative_method": "draft", "speculative_model": str(DRAFT)},
           "ngram": {"speculative_method": "ngram"}}


def prompts(engine: LLMEngine, count: int) -> list[list[int]]:
    """Passages from evenly spaced places of the held-out text, PROMPT_TOKENS tokens each with the leading
    <|bos|> that plain-text completion gets (the tokenizer adds no special tokens itself)."""
    tok = engine.tokenizer
    text = (ROOT / "models" / "heldout.txt").read_text()
    step = len(text) // (count + 1)
    return [[tok.bos_token_id] + tok.encode(text[i * step : i * step + 400], add_special_tokens=False)[:PROMPT_TOKENS - 1]
            for i in range(1, count + 1)]


def measure(engine: LLMEngine, batch: list[list[int]], new_tokens: int) -> dict:
    """One run: decode tokens/s, the tokens, and the speculator's acceptance over this run alone."""
    spec = engine.speculator
    before = (spec.num_draft_tokens, spec.num_accepted_tokens, spec.num_verified) if spec else (0, 0, 0)
    tok_s, tokens = decode(engine, batch, new_tokens)
    if spec is None:
        return {"tok_s": tok_s, "tokens": tokens, "acceptance": None, "accepted_len": None}
    drafted, accepted, verified = (now - was for now, was in
                                   zip((spec.num_draft_tokens, spec.num_accepted_tokens, spec.num_verified), before))
    return {"tok_s": tok_s, "tokens": tokens, "acceptance": accepted / max(drafted, 1),
            "accepted_len": (accepted + verified) / max(verified, 1)}


def steady(values: list[float], digits: int) -> str:
    """A figure greedy decoding could repeat: the value when every round agrees, else median (min-max)."""
    return f"{values[0]:.{digits}f}" if len(set(values)) == 1 else spread(values, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU; 1 keeps a shared machine steady")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (each runs every cell once); median and min-max reported")
    parser.add_argument("--modes", nargs="+", default=["none", "int8", "int4"])
    args = parser.parse_args()
    engines: dict[tuple, LLMEngine] = {}
    for mode, method in tqdm([(mode, method) for mode in args.modes for method in METHODS], desc="loading"):
        engines[mode, method] = LLMEngine(EngineConfig(
            str(TARGET), quantization=None if mode == "none" else mode, num_threads=args.threads,
            num_speculative_tokens=args.k, kv_cache_memory_gb=0.25, **METHODS[method],
        ))
    batches = {size: prompts(engines[args.modes[0], "off"], size) for size in args.batch}
    for engine in engines.values():  # warm-up at every batch size: first-call allocations per shape
        for batch in batches.values():
            decode(engine, batch, 8)
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for size, batch in batches.items():
            for (mode, method), engine in engines.items():
                runs[mode, method, size].append(measure(engine, batch, args.new_tokens))

    rows, varied = [], False
    for mode, method in engines:
        for size in args.batch:
            cell, base = runs[mode, method, size], runs[mode, "off", size]
            if method == "off":
                acceptance = accepted_len = speedup = "-"
            else:
                acceptances, accepted_lens = [r["acceptance"] for r in cell], [r["accepted_len"] for r in cell]
                acceptance, accepted_len = steady(acceptances, 3), steady(accepted_lens, 2)
                varied |= len(set(acceptances)) > 1 or len(set(accepted_lens)) > 1
                speedup = spread([r["tok_s"] / b["tok_s"] for r, b in zip(cell, base)], 2)
            same = all(r["tokens"] == base[0]["tokens"] for r in cell)
            rows.append([mode, size, method, spread([r["tok_s"] for r in cell], 1), acceptance, accepted_len, speedup,
                         "yes" if same else "no"])
    headers = ["quantization", "batch", "speculation", "decode tok/s", "acceptance", "mean accepted len",
               "speedup (per round)", "same tokens"]
    body = table(headers, rows)
    print(body)
    steadiness = ("show one value where every round agreed, else median (min-max): they can differ by round because k "
                  "adapts to the moving mean accepted length, which carries over from one run to the next"
                  if varied else "were identical in every round")
    note = (f"Target models/large, draft models/small, k = {args.k} (adaptive: k follows the moving mean accepted "
            f"length), {args.new_tokens} new tokens, {PROMPT_TOKENS}-token prompts, {args.threads} torch thread(s), "
            f"greedy, EOS ignored. Every engine stays loaded; {args.rounds} interleaved rounds each run every cell "
            "once, in turn. Decode tok/s is the median (min-max) over rounds; speedup is against speculation off at "
            "the same quantization and batch, taken within each round. Acceptance and mean accepted length (greedy, "
            f"so deterministic for a given k) {steadiness}. \"Same tokens\": every round's tokens equal the baseline's. "
            "Prompts are passages of held-out text (plain completion); the draft was distilled on a mix that is 90% "
            "checkable tasks, so on free text it agrees with the target less than on task answers (docs/MODELS.md).\n\n")
    command = (f".venv/bin/python bench/spec_decode.py --rounds {args.rounds} --new-tokens {args.new_tokens} "
               f"--k {args.k} --threads {args.threads} --batch {' '.join(map(str, args.batch))} "
               f"--modes {' '.join(args.modes)}")
    write_section("spec_decode", "Speculative decoding (draft model, n-gram lookup)", command, note + body)


if __name__ == "__main__":
    main()
