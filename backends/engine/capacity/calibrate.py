"""Fit the step-time model's efficiency factors to the real engine's measured step times, and check it.

measure_peaks() times this machine's memory copy and matmul (the "datasheet" of a CPU); record_steps() captures
every step the real LLMEngine takes (its batch shape and wall time); fit() finds the Efficiency under which the
roofline best predicts those times (least squares on log time, so short and long steps count alike);
run_real() replays a workload on the real engine in real time, as the serving loop would, for the held-out check.
"""
from __future__ import annotations

import math
import time

import numpy as np

from backends.engine.capacity.hardware import Hardware
from backends.engine.capacity.step_time import Efficiency, Shape, StepModel
from backends.engine.capacity.workload import Request


def measure_peaks(rounds: int = 5) -> Hardware:
    """This CPU's memory bandwidth (a 256 MB copy) and float32 matmul FLOP/s, best of `rounds`."""
    import torch

    src, dst = torch.ones(64 * 2**20), torch.empty(64 * 2**20)
    a = torch.randn(1024, 1024)
    copy = min(_timed(lambda: dst.copy_(src)) for _ in range(rounds))
    mm = min(_timed(lambda: a @ a) for _ in range(rounds))
    return Hardware("this CPU", 0.0, 2 * src.numel() * 4 / copy, 2 * 1024**3 / mm, 1e9,
                    f"measured here: {torch.get_num_threads()} torch thread(s), 256 MB copy, 1024^2 float32 matmul")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def record_steps(engine) -> list[tuple[Shape, float]]:
    """From now on, append (batch shape, seconds) for every engine.step() to the returned list."""
    samples: list[tuple[Shape, float]] = []
    schedule, step = engine.scheduler.schedule, engine.step
    shapes: list[Shape] = []

    def traced_schedule():
        plan = schedule()
        shapes.append([(n, seq.num_computed_tokens) for seq, n in plan.batch])
        return plan

    def timed_step():
        start = time.perf_counter()
        outputs = step()
        if shapes and shapes[-1]:
            samples.append((shapes.pop(), time.perf_counter() - start))
        shapes.clear()
        return outputs

    engine.scheduler.schedule, engine.step = traced_schedule, timed_step
    return samples


def fit(samples: list[tuple[Shape, float]], model: StepModel) -> Efficiency:
    """The efficiency factors (bandwidth, FLOPs, per-step and per-sequence overhead, memory/compute overlap) that
    best predict the samples."""
    from scipy.optimize import least_squares

    measured = np.log([seconds for _, seconds in samples])

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = model_with(model, _efficiency(x, model.eff))
        return np.log([trial.step_time(shape) for shape, _ in samples]) - measured

    start = [*np.log([0.5, 0.5, 1e-3, 1e-4]), 0.5]  # the first four as logarithms, the overlap as is
    solution = least_squares(residuals, start, bounds=([*np.log([1e-3, 1e-3, 1e-7, 1e-8]), 0.0],
                                                       [*np.log([1.0, 1.0, 10.0, 1.0]), 1.0]))
    eff = _efficiency(solution.x, model.eff)
    # Log residuals fit the geometric mean; a workload's time is a sum of steps, so match the sweep's total time
    # (on a shared CPU, step times are skewed upward by whoever else holds the core).
    fitted = model_with(model, eff)
    scale = sum(t for _, t in samples) / sum(fitted.step_time(shape) for shape, _ in samples)
    return Efficiency(eff.bandwidth / scale, eff.flops / scale, eff.step_overhead_s * scale, eff.seq_overhead_s * scale,
                      eff.allreduce_latency_s, eff.overlap)


def _efficiency(x: np.ndarray, base: Efficiency) -> Efficiency:
    bw, flops, step, seq = (math.exp(v) for v in x[:4])
    return Efficiency(bw, flops, step, seq, base.allreduce_latency_s, float(x[4]))


def model_with(model: StepModel, eff: Efficiency) -> StepModel:
    return StepModel(model.model, model.fmt, model.hardware, model.layout, eff, model.full_bytes, model.kv_bytes)


def run_real(engine, requests: list[Request], vocab: int) -> dict:
    """Replay requests on the real engine in real time; TTFT from each scheduled arrival to its first token."""
    from backends.base import SamplingParams

    prompts = [r.prompt_ids(vocab) for r in requests]  # made up front: not on the clock
    first: dict[str, float] = {}
    tokens, i, start, cpu = 0, 0, time.perf_counter(), time.process_time()
    while i < len(requests) or engine.has_unfinished():
        now = time.perf_counter() - start
        while i < len(requests) and requests[i].arrival <= now:
            params = SamplingParams(max_tokens=requests[i].output_len, temperature=0, ignore_eos=True)
            engine.add_request(str(i), prompts[i], params, requests[i].priority)
            i += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, requests[i].arrival - now))
            continue
        outputs = engine.step()
        now = time.perf_counter() - start
        for out in outputs:
            first.setdefault(out.request_id, now - requests[int(out.request_id)].arrival)
            tokens += len(out.token_ids)
    end = time.perf_counter() - start
    return dict(ttft=np.array([first[str(k)] for k in range(len(requests))]), tokens_per_s=tokens / end, end=end,
                cpu_share=(time.process_time() - cpu) / end)
