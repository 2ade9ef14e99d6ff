"""Speed of the Triton dequantizing matmuls on a GPU: time, achieved memory bandwidth, share of peak.

At decode (M = 1..8) a weight-only matmul is bound by reading the weights, so the figure of merit is
bytes moved per second against the device's peak: cuBLAS fp16 on the same shape is the baseline of
the same run, and a device-to-device copy measures the bandwidth the device really reaches. Each
shape also sweeps the kernels' tile sizes, so defaults can be chosen from data.

Writes the `quant_kernels` section of docs/BENCHMARKS.md (GPU runs only).

    .venv/bin/python bench/quant_kernels.py
    TRITON_INTERPRET=1 .venv/bin/python bench/quant_kernels.py --smoke   # CPU: checks the script runs
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.engine.quant import formats, kernels  # noqa: E402
from bench.report import table, write_section  # noqa: E402

# (K, N) of Llama-2 7B and 70B layers: attention out, MLP up and down.
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
SMOKE_SHAPES = [(256, 128)]
TILES = [(32, 64), (32, 128), (64, 64), (64, 128), (128, 64)]  # (BLOCK_N, BLOCK_K)
# Nominal DRAM bandwidth, bytes/s, by a substring of torch.cuda.get_device_name().
NOMINAL_PEAK = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12,
                "A100-SXM4-40GB": 1.56e12, "A100-PCIE": 1.56e12, "L40S": 0.864e12, "A10G": 0.6e12}
GROUP_SIZE = 128


def time_ms(fn) -> float:
    if torch.cuda.is_available():
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100)
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth(device: str, gib: float) -> float:
    """Bytes/s of a device-to-device copy (read + write): what the memory system reaches in practice."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_ms(lambda: dst.copy_(src)) / 1e3)


def nominal_peak() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((bw for key, bw in NOMINAL_PEAK.items() if key in name), None)


def run_shape(k: int, n: int, m: int, device: str, dtype: torch.dtype, tiles: list) -> list[dict]:
    w = torch.randn(n, k, device=device) * 0.02
    x = torch.randn(m, k, device=device, dtype=dtype)
    q8, q4 = formats.quantize_int8(w), formats.quantize_int4(w, GROUP_SIZE)
    w16 = w.to(dtype)
    act_bytes = (m * k + m * n) * x.element_size()
    rows = [{"kind": "cuBLAS fp16" if dtype == torch.float16 else f"torch {dtype}", "tile": "-",
             "ms": time_ms(lambda: x @ w16.T), "bytes": w16.numel() * w16.element_size() + act_bytes}]
    int8_bytes = q8.qweight.numel() + q8.scales.numel() * 2 + act_bytes
    int4_bytes = q4.qweight.numel() + q4.scales.numel() * 2 + q4.zeros.numel() + act_bytes
    for block_n, block_k in tiles:
        rows.append({"kind": "int8", "tile": f"{block_n}x{block_k}", "bytes": int8_bytes, "ms": time_ms(
            lambda: kernels.int8_matmul(x, q8.qweight, q8.scales, None, block_n=block_n, block_k=block_k))})
        rows.append({"kind": "int4 g128", "tile": f"{block_n}x{block_k}", "bytes": int4_bytes, "ms": time_ms(
            lambda: kernels.int4_matmul(x, q4.qweight, q4.scales, q4.zeros, GROUP_SIZE, None,
                                        block_n=block_n, block_k=block_k))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one tile: check the script on CPU")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="M values (decode batch sizes)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 to check the script on CPU)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    shapes, tiles = (SMOKE_SHAPES, TILES[:1]) if args.smoke else (SHAPES, TILES)
    copy_bw = copy_bandwidth(device, 0.01 if args.smoke else 2.0)
    peak = nominal_peak()

    rows, best = [], []
    for k, n in shapes:
        for m in args.batch:
            results = run_shape(k, n, m, device, dtype, tiles)
            base = results[0]["ms"]
            for r in results:
                bw = r["bytes"] / (r["ms"] / 1e3)
                rows.append([f"{k}x{n}", m, r["kind"], r["tile"], r["ms"] * 1e3, bw / 1e9, bw / copy_bw,
                             bw / peak if peak else "-", base / r["ms"]])
            for kind in ("int8", "int4 g128"):
                top = min((r for r in results if r["kind"] == kind), key=lambda r: r["ms"])
                bw = top["bytes"] / (top["ms"] / 1e3)
                best.append([f"{k}x{n}", m, kind, top["tile"], top["ms"] * 1e3, bw / 1e9,
                             bw / peak if peak else "-", base / top["ms"]])

    headers = ["K x N", "M", "kernel", "tile NxK", "us", "GB/s", "vs copy BW", "vs nominal peak", "speedup vs fp16"]
    full = table(headers, rows)
    summary = table(["K x N", "M", "kernel", "best tile", "us", "GB/s", "vs nominal peak", "speedup vs fp16"], best)
    print(full, "\n\n", summary, sep="")
    if device != "cuda":
        return
    body = f"""
Triton dequantizing matmuls (`backends/engine/quant/kernels.py`) at decode batch sizes on Llama-2 7B/70B
layer shapes, fp16 activations. Bytes moved: quantized weights + scales (+ zero-points) + activations in
and out. Device-to-device copy bandwidth measured in this run: {copy_bw / 1e9:,.0f} GB/s; nominal peak:
{f"{peak / 1e9:,.0f} GB/s" if peak else "unknown for this device"}. Baseline: `x @ W.T` in fp16 (cuBLAS), same run.

Best tile per shape:

{summary}

Every tile:

{full}
"""
    write_section("quant_kernels", "Weight-only quantization: Triton kernel speed on GPU",
                  "bench/quant_kernels.py", body)


if __name__ == "__main__":
    main()
