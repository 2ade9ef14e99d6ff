"""Paged decode attention in Triton: one program per (sequence, query head), walking the block table.

Keys and values are read straight from their cache blocks with an online softmax, so no gathered copy
of the context is ever made. Tested against the torch path under TRITON_INTERPRET=1; used on CUDA.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr, block_tables_ptr, context_lens_ptr, scale,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_bt, stride_ob, stride_oh,
    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_T: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    d = tl.arange(0, BLOCK_D)
    t = tl.arange(0, BLOCK_T)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qb + head * stride_qh + d, mask=d_ok, other=0.0).to(tl.float32)
    context_len = tl.load(context_lens_ptr + seq)
    m = tl.max(tl.full([BLOCK_T], float("-inf"), tl.float32), axis=0)
    denom = tl.sum(tl.zeros([BLOCK_T], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for i in range(0, tl.cdiv(context_len, BLOCK_SIZE)):
        block = tl.load(block_tables_ptr + seq * stride_bt + i)
        t_ok = (t < BLOCK_SIZE) & (i * BLOCK_SIZE + t < context_len)
        offsets = block * stride_kb + t[:, None] * stride_kt + kv_head * stride_kh + d[None, :]
        mask = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        scores = tl.where(t_ok, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        p = tl.exp(scores - m_new)
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        denom = denom * alpha + tl.sum(p, axis=0)
        m = m_new
    out = acc / denom
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def paged_decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q: [B, H, D]; caches: [num_blocks, block_size, KVH, D]; block_tables: [B, max_blocks] -> [B, H, D]."""
    batch, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    _paged_decode_kernel[(batch, num_heads)](
        out, q, k_cache, v_cache, block_tables, context_lens, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=block_size, BLOCK_T=triton.next_power_of_2(block_size),
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
    )
    return out
