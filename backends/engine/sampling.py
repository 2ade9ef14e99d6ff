"""Turn a step's logits into next tokens: greedy, or temperature / top-k / top-p sampling.

Before choosing, a request's logits are shaped in the order vLLM applies: repetition penalty (HF's rule, over
prompt and output), presence and frequency penalties (OpenAI's, over the output), logit_bias, then its grammar's
mask (structured output). Logprobs are the model's own (log-softmax of the unshaped logits, as vLLM reports by
default), so they are comparable across requests whatever their penalties.

Each sequence draws from its own torch.Generator, so a seeded request samples the same tokens whatever
else shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backends.engine.sequence import Sequence


@dataclass
class Logprob:
    logprob: float  # of the chosen token
    top: list[tuple[int, float]]  # the top_logprobs best tokens (id, logprob), best first


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[Logprob] | None]:
    """logits: [N, vocab], one row per sequence. Returns token ids and, if any asked, their logprobs."""
    raw = logits.float()
    logits = _shaped(raw, seqs)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if s.params.temperature > 0]
    if rows:
        probs = _filtered_probs(logits[rows], [seqs[i].params for i in rows]).cpu()
        for j, i in enumerate(rows):
            noise = torch.empty_like(probs[j]).exponential_(generator=seqs[i].generator)
            tokens[i] = (probs[j] / noise).argmax()  # exponential race: picks i with probability probs[i]
    return tokens.tolist(), _logprobs(raw, tokens, seqs)


def _shaped(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """The logits each request's penalties, bias and grammar make of the model's (the model's when none)."""
    rows = [i for i, s in enumerate(seqs) if s.params.shapes_logits()]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        _penalize(logits[i], seqs[i])
    masked = [i for i in rows if seqs[i].matcher is not None]
    if masked:
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(len(seqs), logits.shape[1])
        for i in masked:
            seqs[i].matcher.fill_next_token_bitmask(bitmask, i)
        xgrammar.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=masked)
    return logits


def _penalize(row: torch.Tensor, seq: Sequence) -> None:
    p = seq.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(seq.token_ids)), device=row.device)
        scores = row[seen]
        row[seen] = torch.where(scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.num_output_tokens:
        counts = torch.bincount(torch.tensor(seq.output_token_ids), minlength=row.shape[0]).to(row)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row)
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=row.device)
        row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=row.dtype, device=row.device)


def _logprobs(logits: torch.Tensor, tokens: torch.Tensor, seqs: list[Sequence]) -> list[Logprob] | None:
    if not any(s.params.logprobs for s in seqs):
        return None
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
    k = max(s.params.top_logprobs for s in seqs)
    best = logprobs.topk(k, dim=-1) if k else None
    out = []
    for i, s in enumerate(seqs):
        n = s.params.top_logprobs
        top = list(zip(best.indices[i, :n].tolist(), best.values[i, :n].tolist())) if n else []
        out.append(Logprob(chosen[i], top))
    return out


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
