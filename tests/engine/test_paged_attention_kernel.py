"""The Triton paged decode attention kernel against the torch path, under TRITON_INTERPRET=1.

The interpreter is chosen when a kernel is defined, so the check runs in its own process: other tests
keep whatever Triton mode they import with.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHECK = r"""
import torch
from backends.engine.kernels.paged_attention import paged_decode_attention_triton
from backends.engine.layers.attention import paged_decode_attention_torch

torch.manual_seed(0)
for heads, kv_heads, head_dim, block_size, lens in [
    (4, 2, 16, 4, [1, 5, 13]),        # GQA, partial last blocks, a single-token context
    (8, 8, 32, 16, [16, 33]),         # MHA, exact block boundary
    (6, 2, 24, 8, [7, 40, 19, 2]),    # head_dim and group not powers of two
]:
    num_blocks = 64
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim)
    width = max(-(-n // block_size) for n in lens)
    tables = torch.stack([torch.randperm(num_blocks)[:width] for _ in lens])  # scattered, non-contiguous blocks
    context_lens = torch.tensor(lens)
    q = torch.randn(len(lens), heads, head_dim)
    scale = head_dim ** -0.5
    got = paged_decode_attention_triton(q, k_cache, v_cache, tables, context_lens, scale)
    want = paged_decode_attention_torch(q, k_cache, v_cache, tables, context_lens, scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
print("ok")
"""


@pytest.mark.slow
def test_triton_kernel_matches_torch_under_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_matches_torch_on_cuda():
    from backends.engine.kernels.paged_attention import paged_decode_attention_triton
    from backends.engine.layers.attention import paged_decode_attention_torch

    torch.manual_seed(0)
    k_cache, v_cache = (torch.randn(128, 16, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    tables = torch.stack([torch.randperm(128, device="cuda")[:20] for _ in range(5)])
    lens = torch.tensor([1, 17, 100, 319, 320], device="cuda")
    q = torch.randn(5, 16, 64, device="cuda", dtype=torch.bfloat16)
    got = paged_decode_attention_triton(q, k_cache, v_cache, tables, lens, 0.125)
    want = paged_decode_attention_torch(q, k_cache, v_cache, tables, lens, 0.125)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
