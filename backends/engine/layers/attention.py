"""Attention over the paged KV cache.

A step's tokens arrive flattened: the first `num_decode_tokens` are single-token decodes (one per sequence),
the rest are prefill chunks, each possibly continuing a context already in the cache (prefix hit or an
earlier chunk). New keys/values are written to their cache slots first; attention then reads the cache
through each sequence's block table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PrefillChunk:
    start: int  # offset of the chunk's first token in the flattened batch
    num_tokens: int
    context_len: int  # tokens in the cache once this chunk is written (cached + chunk)
    block_table: torch.Tensor  # [num_blocks] int64


@dataclass
class DecodeGroup:
    """Decodes of similar context length: their block tables are padded to the group's longest only."""

    start: int
    num_tokens: int
    block_tables: torch.Tensor  # [num_tokens, max_blocks], padded with block 0
    context_lens: torch.Tensor  # [num_tokens]


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot (block * block_size + offset) of each token
    decodes: list[DecodeGroup]  # the batch's first tokens, one per decoding sequence
    prefills: list[PrefillChunk]


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5
        # Set by the ModelRunner: [num_blocks, block_size, num_kv_heads, head_dim] each.
        self.k_cache = self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, KVH, D] -> [T, H, D]."""
        self.k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, k)
        self.v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, meta.slot_mapping, v)
        out = torch.empty_like(q)
        for g in meta.decodes:
            rows = slice(g.start, g.start + g.num_tokens)
            out[rows] = paged_decode_attention(q[rows], self.k_cache, self.v_cache, g.block_tables, g.context_lens, self.scale)
        for p in meta.prefills:
            rows = slice(p.start, p.start + p.num_tokens)
            out[rows] = self._prefill(q[rows], k[rows], v[rows], p)
        return out

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: PrefillChunk) -> torch.Tensor:
        if p.context_len == p.num_tokens:  # nothing earlier in the cache: the chunk's own keys are the context
            return _sdpa(q, k, v, None, self.scale, causal=True)
        keys = self.k_cache.index_select(0, p.block_table).flatten(0, 1)[: p.context_len]
        values = self.v_cache.index_select(0, p.block_table).flatten(0, 1)[: p.context_len]
        # Query i sits at absolute position context_len - num_tokens + i and sees keys up to there.
        q_pos = torch.arange(p.context_len - p.num_tokens, p.context_len, device=q.device)
        mask = torch.arange(p.context_len, device=q.device)[None, :] <= q_pos[:, None]
        return _sdpa(q, keys, values, mask, self.scale, causal=False)


def _sdpa(q, k, v, mask, scale: float, causal: bool) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)


def paged_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """One query token per sequence against its paged context. q: [B, H, D] -> [B, H, D]."""
    if q.is_cuda:
        from backends.engine.kernels.paged_attention import paged_decode_attention_triton

        return paged_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_decode_attention_torch(q, k_cache, v_cache, block_tables, context_lens, scale)


def paged_decode_attention_torch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    b, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    # index_select copies whole blocks at a time; on CPU it is several times faster than advanced indexing.
    keys = k_cache.index_select(0, block_tables.flatten()).view(b, -1, num_kv_heads, head_dim).transpose(1, 2)
    values = v_cache.index_select(0, block_tables.flatten()).view(b, -1, num_kv_heads, head_dim).transpose(1, 2)
    mask = torch.arange(keys.shape[2], device=q.device)[None, :] < context_lens[:, None]
    # The query heads sharing a KV head act as that head's queries: no copy of K/V per query head.
    grouped = q.view(b, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(b, num_heads, head_dim)
