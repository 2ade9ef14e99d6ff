"""bench/gpu_suite.py, the prepared GPU run, end to end on the CPU (tiny shapes, Triton's interpreter): every
step runs and writes its files, the kernels agree with their references and the engine with HF generate."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_runs_end_to_end_on_cpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "bench/gpu_suite.py", str(tmp_path), "--cpu-smoke", "--skip-tests"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["size"] == "smoke"
    assert (tmp_path / "summary.md").read_text().count("|") > 50
    rows = lambda name: list(csv.DictReader((tmp_path / name).open()))
    kernels = rows("kernels.csv")
    assert {r["kind"] for r in kernels} == {"cuBLAS fp16", "cuBLAS bf16", "int8 torch reference", "int8 triton",
                                            "int4 torch reference", "int4 triton"}
    for r in kernels + rows("attention.csv"):
        assert float(r["ms"]) > 0
        if r["kind"].endswith("triton"):
            assert float(r["max_rel_err"]) < 1e-2, r
    [engine] = rows("engine_vs_hf.csv")
    assert engine["greedy_tokens_equal"] == "True"
    assert float(engine["engine_tok_per_s"]) > 0
    assert len(rows("decode_steps.csv")) == 2
