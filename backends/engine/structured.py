"""Structured output: a request's grammar, compiled once per checkpoint tokenizer, enforced token by token.

xgrammar (chosen over llguidance and outlines-core by measured mask time per token, docs/BENCHMARKS.md)
compiles a JSON schema or an EBNF grammar against the tokenizer's vocabulary; each constrained sequence holds
a GrammarMatcher that fills its row of the step's token bitmask (sampling.py masks the logits with it) and
accepts each chosen token. JSON is compact (no free whitespace), so a model cannot stall a constrained answer
on endless blanks. Compiled grammars are cached by xgrammar's compiler, keyed by the grammar's text.
"""
from __future__ import annotations

import json


class Grammars:
    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1)

    def compile(self, spec: dict):
        """The compiled grammar of vLLM-style `structured_outputs`; ValueError naming what is wrong with it."""
        try:
            if set(spec) == {"json"}:
                return self.compiler.compile_grammar(json_ebnf(spec["json"] or {"type": "object"}))  # {}: any object
            if set(spec) == {"grammar"}:
                return self.compiler.compile_grammar(spec["grammar"])
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ValueError(f"the grammar cannot be compiled: {str(exc).splitlines()[0]}") from None
        raise ValueError("structured output takes one of 'json' (a JSON schema) or 'grammar' (EBNF)")

    def matcher(self, spec: dict):
        import xgrammar

        return xgrammar.GrammarMatcher(self.compile(spec))


def json_ebnf(schema: dict) -> str:
    """The EBNF of compact JSON valid under `schema`."""
    import xgrammar

    ebnf = str(xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True))
    # xgrammar 0.2.9 lets a length-bounded string hold raw control characters, which JSON forbids (json.loads
    # refuses them): its characters take the same class as its unbounded strings.
    return ebnf.replace(r'[^\"\\\r\n]', r'[^\0-\x1f\"\\]')
