"""Turn a step's logits into next tokens: greedy, or temperature / top-k / top-p sampling.

Each sequence draws from its own torch.Generator, so a seeded request samples the same tokens whatever
else shares its batch.
"""
from __future__ import annotations

import torch

from backends.engine.sequence import Sequence


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float] | None]:
    """logits: [N, vocab], one row per sequence. Returns token ids and, if any asked, their logprobs."""
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if s.params.temperature > 0]
    if rows:
        probs = _filtered_probs(logits[rows], [seqs[i].params for i in rows]).cpu()
        for j, i in enumerate(rows):
            noise = torch.empty_like(probs[j]).exponential_(generator=seqs[i].generator)
            tokens[i] = (probs[j] / noise).argmax()  # exponential race: picks i with probability probs[i]
    logprobs = None
    if any(s.params.logprobs for s in seqs):
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1).tolist()
    return tokens.tolist(), logprobs


def _filtered_probs(logits: torch.Tensor, params: list) -> torch.Tensor:
    logits = logits / torch.tensor([p.temperature for p in params], device=logits.device)[:, None]
    top_k = [p.top_k if p.top_k > 0 else logits.shape[1] for p in params]
    top_p = [p.top_p for p in params]
    if min(top_k) < logits.shape[1] or min(top_p) < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        rank = torch.arange(logits.shape[1], device=logits.device)
        drop = rank[None, :] >= torch.tensor(top_k, device=logits.device)[:, None]
        sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # Keep the smallest head whose mass reaches top_p: drop a token if the mass before it already does.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= torch.tensor(top_p, device=logits.device)[:, None]
        drop[:, 0] = False
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(dim=-1)
