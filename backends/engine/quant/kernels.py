"""Triton dequantizing matmuls: y = x @ dequant(W).T (+ bias), W never materialized in float.

Each program owns a [BLOCK_M, BLOCK_N] tile of y and walks K: it loads the activation tile and the
quantized weight tile, unpacks the integer codes in registers and feeds both to tl.dot; the scales
multiply the dot's partial sums (per row for int8, per row and group for int4), which costs
BLOCK_M * BLOCK_N multiplies per tile instead of BLOCK_K * BLOCK_N. Decode has M = 1..8, so M is
masked; BLOCK_M stays 16 because tl.dot needs at least 16 rows.

The int4 tile reads each packed byte for both of its columns (offset k // 2, shift (k % 2) * 4):
the second read hits cache, so DRAM traffic stays at half a byte per weight.

Run on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 set before triton is imported (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _int8_matmul_kernel(
    x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < M, offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        q = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
        # Codes in [-127, 127] are exact in fp16/bf16, so the dot runs on raw codes and the
        # per-row scale is applied once to the accumulator.
        acc += tl.dot(x, q.to(x.dtype), input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    acc *= tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _int4_matmul_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg, stride_ym, stride_yn,
    GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < M, offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + (offs_k[:, None] // 2) * stride_wk
    shift = (offs_k[:, None] % 2) * 4
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # K is a multiple of GROUP_SIZE and BLOCK_K divides GROUP_SIZE: each K tile lies in one group.
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        packed = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
        q = ((packed >> shift) & 0xF).to(tl.int32)
        group = k0 // GROUP_SIZE
        s = tl.load(s_ptr + offs_n * stride_sn + group * stride_sg, mask=mask_n, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_n * stride_sn + group * stride_sg, mask=mask_n, other=0).to(tl.int32)
        # q - z lies in [-15, 15], exact in fp16/bf16: the dot runs on it and the group's scale is
        # applied to the [BLOCK_M, BLOCK_N] partial sum, not to every one of BLOCK_K * BLOCK_N weights.
        w = (q - z[None, :]).to(x.dtype)
        acc += tl.dot(x, w, input_precision=DOT_PRECISION) * s[None, :]
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += (BLOCK_K // 2) * stride_wk
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _tiles(m: int, block_n: int | None, block_k: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K). Decode (M <= 16) takes narrow N tiles so that even one row of
    output spreads over enough programs to keep every SM reading weights; bench/quant_kernels.py
    sweeps the alternatives on a GPU."""
    if m <= 16:
        return 16, block_n or 32, block_k or 128
    return (32 if m <= 32 else 64), block_n or 64, block_k or 64


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 activations get a true fp32 dot (not tf32) so the kernel agrees with the torch path.
    return "ieee" if dtype == torch.float32 else "tf32"


def int8_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                block_n: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """x [M, K] float @ (qweight [N, K] int8 * scales [N]).T -> [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = _tiles(m, block_n, block_k)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_matmul_kernel[grid](
        x, qweight, scales, bias if bias is not None else scales, y, m, n, k,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return y


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None, block_n: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """x [M, K] float @ dequant_int4(packed [N, K/2], scales, zeros [N, K/group]).T -> [M, N] in x's dtype."""
    m, k = x.shape
    n = packed.shape[0]
    block_m, block_n, block_k = _tiles(m, block_n, block_k)
    block_k = min(block_k, group_size)
    if group_size % block_k or block_k < 16:
        raise ValueError(f"the int4 kernel needs a group size that is a multiple of 16, got {group_size}")
    if zeros.stride() != scales.stride():
        raise ValueError("int4 scales and zeros must share one layout (both contiguous [N, K / group_size])")
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int4_matmul_kernel[grid](
        x, packed, scales, zeros, bias if bias is not None else scales, y, m, n, k,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1), scales.stride(0), scales.stride(1),
        y.stride(0), y.stride(1),
        GROUP_SIZE=group_size, HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(x.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return y
