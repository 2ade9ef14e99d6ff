"""The CUDA path in one prepared run (< 8 minutes on one GPU): tests, kernels, engine vs HF, decode steps.

1. tests: the CUDA-only tests and the engine's correctness tests (engine == HF greedy), on the GPU.
2. kernels: each Triton kernel against its torch reference and cuBLAS fp16/bf16 at the decode shapes of 8B and
   70B layers, with achieved bandwidth as a share of the GPU's HBM peak (decode is bound by reading weights).
3. engine vs HF: our engine in bf16 on randomly initialised Llamas (~1B; 8B shapes with 4 layers) against HF
   `generate` on the same GPU: throughput on a mixed-length workload, and greedy tokens compared at batch 1.
4. decode steps: ms per decode step against the HBM floor (weight bytes / peak), and one decode forward
   eager vs replayed from a CUDA graph captured here: the launch overhead graphs would take back. The engine
   does not capture CUDA graphs (yet); this measures whether it should, and whether its forward can be.

Every figure goes to files under OUTDIR (summary.json, *.csv, summary.md, tests.txt). Without CUDA (or with
--cpu-smoke) it runs everything end to end on tiny shapes with TRITON_INTERPRET=1, to check the script itself.

    .venv/bin/python bench/gpu_suite.py OUTDIR
    .venv/bin/python bench/gpu_suite.py OUTDIR --cpu-smoke
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quant_kernels import copy_bandwidth, nominal_peak, time_ms  # noqa: E402
from bench.report import machine, table, write_section  # noqa: E402

CUDA_TESTS = ["tests/engine/test_paged_attention_kernel.py", "tests/engine/test_quant_triton.py"]
ENGINE_TESTS = ["tests/engine/test_model.py", "tests/engine/test_batching.py", "tests/engine/test_quant_model.py"]
SHAPES = {"full": [(4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192)], "smoke": [(256, 128)]}  # (K, N)
BATCHES = {"full": [1, 8, 32], "smoke": [1, 2]}
# (heads, kv heads, head dim, context) of decode attention: Llama-3 8B and 70B at 2k tokens of context.
ATTENTION = {"full": [(32, 8, 128, 2048), (64, 8, 128, 2048)], "smoke": [(4, 2, 16, 32)]}
LLAMAS = {
    "full": {"llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                                num_key_value_heads=4, vocab_size=32000),
             "llama-8b-shapes-4-layers": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                                              num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)},
    "smoke": {"llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=256)},
}
# Mixed-length workload: (requests, prompt length range, output length range, HF batch size).
WORKLOAD = {"full": (32, (16, 512), (16, 256), 8), "smoke": (4, (4, 24), (2, 8), 2)}
GROUP_SIZE = 128
# The engine's activations are bf16 on the GPU; the interpreter computes on numpy, which has no bf16.
ACT = torch.bfloat16 if torch.cuda.is_available() else torch.float16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (automatic without CUDA)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out step 1 (pytest)")
    args = parser.parse_args()
    size = "smoke" if args.cpu_smoke or not torch.cuda.is_available() else "full"
    device = "cuda" if size == "full" else "cpu"
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(), "size": size, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
               "hbm_peak_bytes_per_s": nominal_peak()}
    if device == "cuda":
        summary["copy_bytes_per_s"] = copy_bandwidth("cuda", 1.0)
    peak = summary["hbm_peak_bytes_per_s"] or summary.get("copy_bytes_per_s")
    started = time.perf_counter()
    progress = lambda what: print(f"[{time.perf_counter() - started:5.0f} s] {what}", flush=True)
    progress("tests")
    summary["tests"] = None if args.skip_tests else run_tests(out, size)
    progress("kernels")
    summary["kernels"] = write_csv(out / "kernels.csv", kernel_rows(size, device, peak))
    progress("paged attention")
    summary["attention"] = write_csv(out / "attention.csv", attention_rows(size, device, peak))
    engines, steps = [], []
    for name, shape in LLAMAS[size].items():
        progress(f"engine vs HF: {name}")
        e, s = engine_vs_hf(name, shape, size, device, peak)
        engines.append(e)
        steps += s
    summary["engine_vs_hf"] = write_csv(out / "engine_vs_hf.csv", engines)
    summary["decode_steps"] = write_csv(out / "decode_steps.csv", steps)
    summary["cuda_graphs"] = ("not used by the engine yet; decode_steps.csv: ms per step against the HBM floor, and "
                              "one decode forward eager vs replayed from a captured graph (or why it cannot be captured)")
    summary["wall_s"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report = markdown(summary)
    (out / "summary.md").write_text(report)
    print(report)
    if size == "full":
        write_section("gpu_suite", "The CUDA path (bench/gpu_suite.py)", "python bench/gpu_suite.py OUTDIR", report)


# --- 1. tests -------------------------------------------------------------------------------------


def run_tests(out: Path, size: str) -> dict:
    """pytest on the GPU; on the CPU smoke run only the CUDA-marked tests (they skip: checks the plumbing)."""
    files = CUDA_TESTS + (ENGINE_TESTS if size == "full" else [])
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={out / 'tests.xml'}"]
    if size == "smoke":
        cmd += ["-k", "cuda or gpu"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tests choose for themselves
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    except subprocess.TimeoutExpired as exc:  # the rest of the suite still runs; the report says so
        (out / "tests.txt").write_text(f"timed out after {exc.timeout} s\n{exc.stdout or ''}")
        return {"timed_out": True, "files": files}
    (out / "tests.txt").write_text(proc.stdout + proc.stderr)
    suite = ET.parse(out / "tests.xml").getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "returncode": proc.returncode, "files": files}


# --- 2. kernels -----------------------------------------------------------------------------------


def kernel_rows(size: str, device: str, peak: float | None) -> list[dict]:
    from backends.engine.quant import formats, kernels

    rows = []
    for k, n in SHAPES[size]:
        w = torch.randn(n, k, device=device) * 0.02
        q8, q4 = formats.quantize_int8(w), formats.quantize_int4(w, GROUP_SIZE)
        w16, wbf = w.half(), w.bfloat16()  # cuBLAS (on the CPU: torch's own matmul)
        del w
        for m in BATCHES[size]:
            x16 = torch.randn(m, k, device=device, dtype=torch.float16)
            xbf, x = x16.bfloat16(), x16.to(ACT)
            act = (m * k + m * n) * 2
            int8_bytes = q8.qweight.numel() + q8.scales.numel() * 2 + act
            int4_bytes = q4.qweight.numel() + q4.scales.numel() * 2 + q4.zeros.numel() + act
            int8_ref = lambda: (x @ q8.qweight.to(x.dtype).T) * q8.scales.to(x.dtype)  # QuantLinear's torch path
            int4_ref = lambda: x @ formats.dequantize_int4(q4.qweight, q4.scales, q4.zeros, GROUP_SIZE, x.dtype).T
            int8_tri = lambda: kernels.int8_matmul(x, q8.qweight, q8.scales)
            int4_tri = lambda: kernels.int4_matmul(x, q4.qweight, q4.scales, q4.zeros, GROUP_SIZE)
            cases = [("cuBLAS fp16", lambda: x16 @ w16.T, w16.numel() * 2 + act, None),
                     ("cuBLAS bf16", lambda: xbf @ wbf.T, wbf.numel() * 2 + act, None),
                     ("int8 torch reference", int8_ref, int8_bytes, None),
                     ("int8 triton", int8_tri, int8_bytes, int8_ref),
                     ("int4 torch reference", int4_ref, int4_bytes, None),
                     ("int4 triton", int4_tri, int4_bytes, int4_ref)]
            base = None
            for kind, fn, nbytes, ref in cases:
                ms = time_ms(fn)
                base = base or ms  # cuBLAS fp16 comes first
                rows.append({"K": k, "N": n, "batch": m, "kind": kind, "ms": ms, "GB_per_s": nbytes / ms / 1e6,
                             "share_of_peak": nbytes / (ms / 1e3) / peak if peak else None,
                             "speedup_vs_cublas_fp16": base / ms, "max_rel_err": _rel_err(fn, ref)})
        del q8, q4, w16, wbf
        _free(device)
    return rows


def attention_rows(size: str, device: str, peak: float | None) -> list[dict]:
    from backends.engine.kernels.paged_attention import paged_decode_attention_triton
    from backends.engine.layers.attention import paged_decode_attention_torch

    rows, block = [], 16
    for heads, kv_heads, dim, context in ATTENTION[size]:
        for b in BATCHES[size]:
            blocks = b * context // block
            k_cache, v_cache = (torch.randn(blocks, block, kv_heads, dim, device=device, dtype=ACT)
                                for _ in range(2))
            tables = torch.randperm(blocks, device=device).view(b, -1)
            lens = torch.full((b,), context, device=device)
            q = torch.randn(b, heads, dim, device=device, dtype=ACT)
            args = (q, k_cache, v_cache, tables, lens, dim**-0.5)
            ref = lambda: paged_decode_attention_torch(*args)
            nbytes = 2 * k_cache.numel() * 2
            for kind, fn in (("torch reference", ref), ("triton", lambda: paged_decode_attention_triton(*args))):
                ms = time_ms(fn)
                rows.append({"heads": heads, "kv_heads": kv_heads, "head_dim": dim, "context": context, "batch": b,
                             "kind": kind, "ms": ms, "GB_per_s": nbytes / ms / 1e6,
                             "share_of_peak": nbytes / (ms / 1e3) / peak if peak else None,
                             "max_rel_err": _rel_err(fn, ref if kind == "triton" else None)})
            del k_cache, v_cache
            _free(device)
    return rows


def _rel_err(fn, ref) -> float | None:
    if ref is None:
        return None
    got, want = fn().float(), ref().float()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-6)).item()


# --- 3. engine vs HF, 4. decode steps -------------------------------------------------------------


def engine_vs_hf(name: str, shape: dict, size: str, device: str, peak: float | None) -> tuple[dict, list[dict]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from backends.base import SamplingParams
    from backends.engine import EngineConfig, LLMEngine

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = LlamaConfig(**shape, max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        hf = LlamaForCausalLM(config).to(dtype).eval()
    hf.generation_config.eos_token_id = None  # fixed lengths: the engine runs with ignore_eos
    prompts, outputs, hf_batch = _workload(size, shape["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        engine = LLMEngine(EngineConfig(model=tmp, dtype=str(dtype).split(".")[1], device=device,
                                        kv_cache_memory_gb=8.0 if device == "cuda" else 0.02,
                                        max_num_batched_tokens=2048 if device == "cuda" else 256))
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in outputs]
    engine.generate(prompts[:1], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))  # warm-up
    engine_s, done = _timed(lambda: engine.generate(prompts, params))
    hf_s, _ = _timed(lambda: _hf_batches(hf, prompts, outputs, hf_batch))
    match = _greedy_match(hf, prompts[:2], [d.token_ids for d in done[:2]])
    tokens = sum(outputs)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    row = {"model": name, "params_b": sum(p.numel() for p in hf.parameters()) / 1e9, "requests": len(prompts),
           "output_tokens": tokens, "engine_tok_per_s": tokens / engine_s, "hf_tok_per_s": tokens / hf_s,
           "speedup": hf_s / engine_s, "hf_batch": hf_batch, **match}
    steps = [_decode_step(engine, name, b, shape["vocab_size"], weight_bytes, peak) for b in BATCHES[size]]
    del engine, hf
    _free(device)
    return row, steps


def _workload(size: str, vocab: int) -> tuple[list[list[int]], list[int], int]:
    n, (p_lo, p_hi), (o_lo, o_hi), hf_batch = WORKLOAD[size]
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(p_lo, p_hi))] for _ in range(n)]
    return prompts, [rng.randint(o_lo, o_hi) for _ in range(n)], hf_batch


def _hf_batches(hf, prompts: list[list[int]], outputs: list[int], batch: int) -> None:
    """HF generate in static batches (left padding), each to its longest requested output."""
    device = hf.device
    for i in range(0, len(prompts), batch):
        group, width = prompts[i : i + batch], max(len(p) for p in prompts[i : i + batch])
        ids = torch.tensor([[0] * (width - len(p)) + p for p in group], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
        with torch.inference_mode():
            hf.generate(ids, attention_mask=mask, max_new_tokens=max(outputs[i : i + batch]), do_sample=False,
                        pad_token_id=0)


def _greedy_match(hf, prompts: list[list[int]], engine_tokens: list[list[int]]) -> dict:
    """Greedy tokens at batch 1, HF vs engine: how many agree before the first difference, and HF's own logit
    margin there (random weights make near-ties, which bf16 rounding can flip)."""
    agree, total, margins = 0, 0, []
    for prompt, ours in zip(prompts, engine_tokens):
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt], device=hf.device), max_new_tokens=len(ours), do_sample=False,
                              pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        theirs = out.sequences[0, len(prompt):].tolist()
        same = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), len(ours))
        agree, total = agree + same, total + len(ours)
        if same < len(ours):
            scores = out.scores[same][0].float()
            margins.append((scores[theirs[same]] - scores[ours[same]]).item())
    return {"greedy_tokens_equal": agree == total, "greedy_agree_before_first_difference": f"{agree}/{total}",
            "hf_logit_margin_at_difference": max(margins) if margins else None}


def _decode_step(engine, name: str, batch: int, vocab: int, weight_bytes: int, peak: float | None) -> dict:
    """ms per decode-only step at this batch, against the time to read every weight once at HBM peak."""
    from backends.base import SamplingParams

    for i in range(batch):
        engine.add_request(f"decode-{batch}-{i}", [3 + i % (vocab - 3)] * 8, SamplingParams(max_tokens=64, temperature=0,
                                                                                           ignore_eos=True))
    for _ in range(3):  # prefill, then a warm decode step
        engine.step()
    _sync()
    start, steps = time.perf_counter(), 16
    for _ in range(steps):
        engine.step()
    _sync()
    ms = (time.perf_counter() - start) / steps * 1e3
    graphs = _graph_vs_eager(engine) if torch.cuda.is_available() else {}
    for i in range(batch):
        engine.abort(f"decode-{batch}-{i}")
    floor = weight_bytes / peak * 1e3 if peak else None
    return {"model": name, "batch": batch, "ms_per_step": ms, "hbm_floor_ms": floor,
            "floor_share": floor / ms if floor else None, "forward_eager_ms": graphs.get("eager_ms"),
            "forward_graph_ms": graphs.get("graph_ms"), "graph_equal": graphs.get("equal"),
            "graph_error": graphs.get("error")}


def _graph_vs_eager(engine) -> dict:
    """The next decode batch's forward pass, eager and replayed from a captured CUDA graph: what graphs would
    save per step, and whether the forward can be captured at all (the engine does not capture them yet).
    Replaying rewrites the same keys and values into the same slots, so the engine's state is unchanged."""
    runner = engine.model_runner
    input_ids, positions, meta, _, _ = runner._prepare(engine.scheduler.schedule().batch)
    forward = lambda: runner.model(input_ids, positions, meta)
    try:
        with torch.inference_mode():
            eager_ms, want = time_ms(forward), forward()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                got = forward()
            graph_ms = time_ms(graph.replay)
            graph.replay()
            return {"eager_ms": eager_ms, "graph_ms": graph_ms, "equal": torch.equal(got, want)}
    except Exception as exc:  # the measurement is why: what stops the forward from being captured
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}


# --- output ---------------------------------------------------------------------------------------


def _timed(fn) -> tuple[float, object]:
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return time.perf_counter() - start, result


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def write_csv(path: Path, rows: list[dict]) -> list[dict]:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def markdown(summary: dict) -> str:
    parts = [f"{summary['machine']}; torch {summary['torch']}; HBM peak {_gbs(summary['hbm_peak_bytes_per_s'])}, "
             f"measured copy {_gbs(summary.get('copy_bytes_per_s'))}; suite wall time {summary['wall_s']:.0f} s."]
    if (t := summary["tests"]) and t.get("timed_out"):
        parts.append(f"Tests ({', '.join(t['files'])}): timed out (tests.txt).")
    elif t:
        parts.append(f"Tests ({', '.join(t['files'])}): {t['tests']} run, {t['failures']} failed, "
                     f"{t['errors']} errors, {t['skipped']} skipped.")
    for key in ("kernels", "attention", "engine_vs_hf", "decode_steps"):
        rows = summary[key]
        parts.append(f"**{key}**\n\n" + table(list(rows[0]), [list(r.values()) for r in rows]))
    parts.append(f"CUDA graphs: {summary['cuda_graphs']}.")
    return "\n\n".join(parts) + "\n"


def _gbs(value: float | None) -> str:
    return f"{value / 1e9:,.0f} GB/s" if value else "unknown"


if __name__ == "__main__":
    main()
