"""Prompt openings an operator shares across tenants in the engine's prefix cache (the catalog's
`public_prefixes`, e.g. a product-wide system prompt). Every other block of a prompt is salted with its tenant,
so no tenant can detect another's prompt; see docs/ARCHITECTURE.md, "The prefix cache is partitioned by tenant".
"""
from __future__ import annotations

from backends.engine.chat import encode_text, render_chat


def public_heads(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each public text as it opens a prompt: a chat's system turn, and a plain completion prompt."""
    heads = []
    for text in texts:
        if tokenizer.chat_template:
            heads.append(render_chat(tokenizer, [{"role": "system", "content": text}], add_generation_prompt=False))
        heads.append(encode_text(tokenizer, text))
    return heads


def public_prefix_len(token_ids: list[int], heads: list[list[int]]) -> int:
    """Leading tokens of the prompt that are public: the longest head it starts with (0: none)."""
    return max((len(h) for h in heads if token_ids[: len(h)] == h), default=0)
