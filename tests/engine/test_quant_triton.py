"""The Triton dequantizing matmuls against the torch reference.

Under TRITON_INTERPRET=1 on CPU, in a child process: the variable must be set before triton is
imported, and setting it here would change how every other test in this process sees triton.
The interpreter does not type-check what a GPU build would, so the kernels are also compiled ahead
of time to cubins for Hopper and Ampere with the ptxas that ships with triton, no GPU needed.
On a CUDA machine the numeric checks also run compiled, in this process.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CASES = [  # mode, M, N, K, group_size, bias, dtype
    *[("int8", m, 80, 256, None, True, torch.float32) for m in (1, 3, 17)],
    ("int8", 5, 48, 200, None, False, torch.float32),  # K not a multiple of the K tile
    *[("int4", m, 80, 256, 64, m == 3, torch.float32) for m in (1, 3, 17)],
    ("int4", 20, 64, 256, 128, False, torch.float32),  # prefill tiles: group (128) spans two K tiles (64)
    ("int4", 3, 64, 128, 32, True, torch.float16),
    ("int8", 3, 64, 128, None, True, torch.float16),
]


def check_kernels(device: str) -> None:
    from backends.engine.quant import formats, kernels

    for mode, m, n, k, group_size, bias, dtype in CASES:
        g = torch.Generator().manual_seed(m * 1000 + n + k)
        w = torch.randn(n, k, generator=g) * 0.1
        x = torch.randn(m, k, generator=g).to(dtype).to(device)
        b = torch.randn(n, generator=g).to(dtype).to(device) if bias else None
        qw = formats.quantize(w, mode, group_size or 128)
        tensors = [t.to(device) if t is not None else None for t in (qw.qweight, qw.scales, qw.zeros)]
        expected = x.float() @ formats.dequantize(qw).to(device).T + (b.float() if bias else 0)
        if mode == "int8":
            y = kernels.int8_matmul(x, tensors[0], tensors[1], b)
        else:
            y = kernels.int4_matmul(x, *tensors, group_size, b)
        assert y.dtype == dtype, (mode, m, y.dtype, y.shape)
        assert y.shape == (m, n), (mode, m, y.dtype, y.shape)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(y.float(), expected, atol=tol, rtol=tol, msg=lambda e: f"{mode} M={m}: {e}")


def test_triton_kernels_match_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            "from test_quant_triton import check_kernels; check_kernels('cpu')")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _ptxas_ships_with_triton() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


@pytest.mark.skipif(not _ptxas_ships_with_triton(), reason="this triton build has no CUDA backend")
@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("arch, dtype, tiles", [(90, "bf16", (16, 32, 128)), (80, "fp16", (64, 64, 64))])
def test_kernels_compile_for_gpus(mode, arch, dtype, tiles, tmp_path, monkeypatch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from backends.engine.quant import kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # really compile, not a cache hit
    kernel = kernels._int8_matmul_kernel if mode == "int8" else kernels._int4_matmul_kernel
    pointers = {"x_ptr": f"*{dtype}", "w_ptr": "*i8" if mode == "int8" else "*u8", "s_ptr": "*fp16",
                "z_ptr": "*u8", "b_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"}
    constants = {"HAS_BIAS": True, "DOT_PRECISION": "tf32", **dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), tiles))}
    if mode == "int4":
        constants["GROUP_SIZE"] = 128
    names = kernel.arg_names
    signature = {n: "constexpr" if n in constants else pointers.get(n, "i32") for n in names}
    source = ASTSource(kernel, signature, constexprs={(names.index(n),): v for n, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    assert compiled.asm["cubin"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_kernels_match_reference_on_gpu():
    check_kernels("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quant_linear_uses_kernel_on_gpu(mode):
    from torch import nn

    from backends.engine.quant import QuantLinear

    layer = QuantLinear.from_linear(nn.Linear(256, 96, bias=True), mode, group_size=64)
    x = torch.randn(2, 3, 256)
    expected = layer(x)  # CPU: the torch reference path
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), expected, atol=1e-4, rtol=1e-4)
