"""Structured output's cost: engine decode time per token, constrained (JSON schema) vs unconstrained, and the
grammar libraries' mask time per token (xgrammar, which the engine uses, against llguidance where installed).

Rounds interleave the modes (unconstrained, constrained, half-and-half in one batch); each figure is the median
(min-max) of the rounds, with the ratio to unconstrained taken round by round.

    .venv/bin/python -m bench.structured_output --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from bench.report import spread, table, write_section

MODEL = Path(__file__).resolve().parents[1] / "models" / "small"
# Long enough that every request runs to max_tokens: the per-token cost, not the grammar's end, is measured.
SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "maxItems": 200, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                     "n": {"type": "integer", "minimum": 0, "maximum": 999},
                                     "kind": {"enum": ["a", "b", "c"]}},
    "required": ["name", "n", "kind"], "additionalProperties": False}}}, "required": ["items"],
    "additionalProperties": False}
INSTANCE = {"items": [{"name": "reverse", "n": 42, "kind": "b"}, {"name": "add two", "n": 7, "kind": "a"}] * 4}


def engine_round(engine: LLMEngine, mode: str, batch: int, tokens: int) -> float:
    """Seconds per generated token for one batch in `mode`."""
    constrained = {"free": 0, "json": batch, "mixed": batch // 2}[mode]
    params = [SamplingParams(max_tokens=tokens, temperature=1.0, seed=i, ignore_eos=True,
                             structured={"json": SCHEMA} if i < constrained else None) for i in range(batch)]
    prompts = [engine.tokenizer.encode(f"record {i}:") for i in range(batch)]
    start = time.perf_counter()
    done = engine.generate(prompts, params)
    return (time.perf_counter() - start) / sum(len(c.token_ids) for c in done)


def mask_round(library: str, tokenizer) -> float:
    """Microseconds to fill one token mask, walking a valid instance of SCHEMA token by token."""
    ids = tokenizer.encode(json.dumps(INSTANCE, separators=(", ", ": ")), add_special_tokens=False)
    if library == "xgrammar":
        import xgrammar

        from backends.engine.structured import json_ebnf

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        matcher = xgrammar.GrammarMatcher(xgrammar.GrammarCompiler(info, max_threads=1).compile_grammar(json_ebnf(SCHEMA)))
        mask = xgrammar.allocate_token_bitmask(1, len(tokenizer))
        fill, accept = (lambda: matcher.fill_next_token_bitmask(mask, 0)), matcher.accept_token
    else:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer),
                                       llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
        mask = llguidance.torch.allocate_token_bitmask(1, len(tokenizer))
        fill, accept = (lambda: llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)), matcher.consume_token
    start = time.perf_counter()
    for token in ids:
        fill()
        assert accept(token), "the instance must be valid under the schema"
    return (time.perf_counter() - start) / len(ids) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    engine = LLMEngine(EngineConfig(str(MODEL)))
    libraries = ["xgrammar"]
    try:
        import llguidance  # noqa: F401  (not a dependency: compared when installed)

        libraries.append("llguidance")
    except ImportError:
        pass
    engine_round(engine, "json", 2, 8)  # warm-up: compile the grammar, touch every code path
    per_token = {m: [] for m in ("free", "json", "mixed")}
    masks = {lib: [] for lib in libraries}
    for _ in range(args.rounds):
        for mode in per_token:
            per_token[mode].append(engine_round(engine, mode, args.batch, args.tokens))
        for lib in libraries:
            masks[lib].append(mask_round(lib, engine.tokenizer))
    rows = [[mode, spread([s * 1e3 for s in per_token[mode]], 3),
             spread([s / f for s, f in zip(per_token[mode], per_token["free"])], 2) + "x"] for mode in per_token]
    lib_rows = [[lib, spread(masks[lib], 0)] for lib in libraries]
    engine_table = table(["batch of 8, 64 tokens each", "ms per token", "vs unconstrained"], rows)
    lib_table = table(["library", "mask fill, us per token"], lib_rows)
    print(engine_table, "\n\n", lib_table, sep="")
    write_section("structured_output", "Structured output: cost per token of grammar-constrained decoding",
                  f"PYTHONPATH=. .venv/bin/python -m bench.structured_output --rounds {args.rounds}",
                  f"""Engine on `models/small` (vocabulary 4,096), {args.batch} requests of {args.tokens} sampled
tokens, `free` = unconstrained, `json` = every request under a JSON schema (arrays of objects with bounded
strings, integers, enums), `mixed` = half of each in one batch. Wall time per generated token, median (min-max)
of {args.rounds} interleaved rounds; the ratio is taken round by round. Load average at the start: {load:.1f} on
{os.cpu_count()} cores (on a busy machine absolute times inflate; the ratios are the figures to read).

{engine_table}

Mask time per token of the grammar libraries on the same tokenizer and schema (a valid instance walked token by
token; llguidance is measured only when installed, it is not a dependency). The engine uses xgrammar: the
faster mask per token here, and its batch bitmask with row indices is what the batched sampler applies.

{lib_table}
""")


if __name__ == "__main__":
    main()
