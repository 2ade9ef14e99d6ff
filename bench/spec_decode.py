"""Speculative decoding on models/large (target) with models/small (draft) or n-gram prompt lookup.

Per weight quantization mode of the target (none, int8, int4; the draft stays unquantized) and batch size (1, 8):
decode tokens/s without speculation (the baseline, same run), with the draft model proposing k tokens,
and with n-gram lookup; the acceptance rate (accepted / proposed drafts), the mean accepted length (tokens
emitted per sequence per target forward: accepted drafts + 1) and the speedup over the baseline.
Prompts are 32-token passages of models/heldout.txt, greedy, EOS ignored; decode tokens/s counts tokens
after each request's first one, over the time from the first token to the last (prefill left out).
Each cell keeps its best of --repeats runs (shared CPU). "same" says whether greedy tokens equal the baseline's.

Writes the `spec_decode` section of docs/BENCHMARKS.md.

    .venv/bin/python bench/spec_decode.py [--new-tokens 64] [--k 4] [--threads 1] [--modes none int8 int4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backends.engine import EngineConfig, LLMEngine  # noqa: E402
from bench.quant_decode import decode  # noqa: E402
from bench.report import table, write_section  # noqa: E402

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


def measure(engine: LLMEngine, batch: list[list[int]], new_tokens: int, repeats: int) -> dict:
    spec = engine.speculator
    before = (spec.num_draft_tokens, spec.num_accepted_tokens, spec.num_verified) if spec else (0, 0, 0)
    best, tokens = max(decode(engine, batch, new_tokens) for _ in range(repeats))
    if spec is None:
        return {"tok_s": best, "tokens": tokens, "acceptance": None, "accepted_len": None}
    drafted, accepted, verified = (now - was for now, was in
                                   zip((spec.num_draft_tokens, spec.num_accepted_tokens, spec.num_verified), before))
    return {"tok_s": best, "tokens": tokens, "acceptance": accepted / max(drafted, 1),
            "accepted_len": (accepted + verified) / max(verified, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU; 1 keeps a shared machine steady")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["none", "int8", "int4"])
    args = parser.parse_args()
    rows = []
    cells = [(mode, method) for mode in args.modes for method in METHODS]
    results: dict[tuple, dict] = {}
    for mode, method in tqdm(cells, desc="engines"):
        engine = LLMEngine(EngineConfig(
            str(TARGET), quantization=None if mode == "none" else mode, num_threads=args.threads,
            num_speculative_tokens=args.k, kv_cache_memory_gb=0.25, **METHODS[method],
        ))
        decode(engine, prompts(engine, 1), 8)  # warm-up
        for size in args.batch:
            results[mode, method, size] = measure(engine, prompts(engine, size), args.new_tokens, args.repeats)
    for mode, method in cells:
        for size in args.batch:
            r, base = results[mode, method, size], results[mode, "off", size]
            rows.append([mode, size, method, round(r["tok_s"], 1), "-" if r["acceptance"] is None else r["acceptance"],
                         "-" if r["accepted_len"] is None else r["accepted_len"], r["tok_s"] / base["tok_s"],
                         "yes" if r["tokens"] == base["tokens"] else "no"])
    headers = ["quantization", "batch", "speculation", "decode tok/s", "acceptance", "mean accepted len",
               "speedup", "same tokens"]
    body = table(headers, rows)
    print(body)
    note = (f"Target models/large, draft models/small, k = {args.k} (adaptive: k follows the moving mean accepted "
            f"length), {args.new_tokens} new tokens, {PROMPT_TOKENS}-token prompts, {args.threads} torch thread(s), "
            "best of {} runs per cell. Speedup is against speculation off at the same quantization and batch. "
            "Prompts are passages of held-out text (plain completion); the draft was distilled on a mix that is 90% "
            "checkable tasks, so on free text it agrees with the target less than on task answers (docs/MODELS.md).\n\n"
            .format(args.repeats))
    write_section("spec_decode", "Speculative decoding (draft model, n-gram lookup)",
                  ".venv/bin/python bench/spec_decode.py", note + body)


if __name__ == "__main__":
    main()
