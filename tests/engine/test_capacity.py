"""The capacity simulator: the real Scheduler and BlockManager on a simulated clock, the roofline step-time model,
its calibration, and the engine's GPU-second attribution."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.capacity.calibrate import fit, model_with
from backends.engine.capacity.hardware import GPUS, MODELS, model_spec
from backends.engine.capacity.plan import SLO, max_rate
from backends.engine.capacity.simulator import EngineKnobs, Speculation, simulate
from backends.engine.capacity.step_time import Efficiency, Layout, StepModel
from backends.engine.capacity.workload import MIXES, Mix, Request, generate, load, save

SMALL = Mix("test", 64, 0.5, 32, 0.5, (0.5, 0.3, 0.2), 0.5, 32, 2, "test")


def model_8b(layout: Layout = Layout()) -> StepModel:
    return StepModel(MODELS["llama-3-8b"], "bf16", GPUS["h100-sxm"], layout)


def test_same_seed_same_result_and_scheduler_really_runs():
    requests = generate(SMALL, rate=40, duration=3, seed=7)
    a, b = (simulate(requests, model_8b(), EngineKnobs(num_blocks=64)) for _ in range(2))
    assert [r.first_token for r in a.records] == [r.first_token for r in b.records]
    assert np.array_equal(a.itl_all(), b.itl_all()) and a.end == b.end
    # 64 blocks of 16 tokens cannot hold ~120 requests of ~100 tokens at once: the real scheduler preempts,
    # and the shared prefixes hit the real prefix cache
    assert a.preemptions > 0 and a.prefix_hit_rate > 0
    assert all(r.finished and r.tokens == r.request.output_len for r in a.records)
    other = simulate(generate(SMALL, rate=40, duration=3, seed=8), model_8b(), EngineKnobs(num_blocks=64))
    assert [r.first_token for r in other.records] != [r.first_token for r in a.records]


def test_below_capacity_meets_slo_far_above_does_not():
    model, knobs, slo = model_8b(), EngineKnobs(max_num_seqs=32, max_num_batched_tokens=512), SLO(ttft_p95_s=0.2)
    light = simulate(generate(SMALL, rate=5, duration=5, seed=1), model, knobs)
    heavy = simulate(generate(SMALL, rate=1000, duration=2, seed=1), model, replace(knobs, max_waiting=300))
    assert slo.met(light) and np.percentile(light.ttft(), 95) < 0.05
    assert heavy.overloaded and not slo.met(heavy) and np.percentile(heavy.ttft(), 95) > 0.2


def test_tp2_halves_weight_read_time_per_rank():
    shape = [(1, 500)] * 8
    one, two = model_8b(Layout(tp=1)).breakdown(shape), model_8b(Layout(tp=2)).breakdown(shape)
    assert two["weights"] == pytest.approx(one["weights"] / 2)
    assert two["kv"] == pytest.approx(one["kv"] / 2)
    assert one["allreduce"] == 0 and two["allreduce"] > 0
    pp = model_8b(Layout(pp=2)).breakdown(shape)
    assert pp["bubble"] > 0  # fill and drain of two stages


def test_calibration_round_trip():
    """Step times made by a known Efficiency are fitted back to it, and the fit predicts them."""
    truth = Efficiency(bandwidth=0.31, flops=0.12, step_overhead_s=4e-3, seq_overhead_s=2e-4, overlap=0.4)
    model = StepModel(model_spec("large"), "bf16", GPUS["l40s"], full_bytes=4, kv_bytes=4)
    shapes = [[(1, c)] * b for b in (1, 4, 16, 64) for c in (16, 256)] + [[(n, 0)] for n in (64, 256, 1024, 4096)]
    samples = [(s, model_with(model, truth).step_time(s)) for s in shapes]
    fitted = model_with(model, fit(samples, model))
    for shape, seconds in samples:
        assert fitted.step_time(shape) == pytest.approx(seconds, rel=0.01)
    assert fitted.eff.step_overhead_s == pytest.approx(truth.step_overhead_s, rel=0.05)
    assert fitted.eff.flops == pytest.approx(truth.flops, rel=0.05)
    assert fitted.eff.overlap == pytest.approx(truth.overlap, abs=0.05)


def test_max_rate_doubles_with_replicas():
    model, knobs = model_8b(Layout(1, 1, 1)), EngineKnobs(max_num_seqs=16, max_num_batched_tokens=256)
    one = max_rate(SMALL, model, SLO(0.1), knobs, duration=3, start=50, steps=2)
    two = max_rate(SMALL, model.with_layout(Layout(1, 1, 2)), SLO(0.1), knobs, duration=3, start=50, steps=2)
    assert one.max_rate > 0 and two.max_rate == pytest.approx(2 * one.max_rate)
    assert any(not p.met for p in one.points) and one.best.rate == one.max_rate


def test_speculation_cuts_itl_at_low_load():
    requests = generate(SMALL, rate=2, duration=5, seed=3)
    plain = simulate(requests, model_8b())
    spec = simulate(requests, model_8b(), EngineKnobs(speculation=Speculation(acceptance=0.8)))
    assert np.median(spec.itl_all()) < 0.6 * np.median(plain.itl_all())
    assert [r.tokens for r in spec.records] == [r.tokens for r in plain.records]


def test_workload_file_round_trip(tmp_path):
    requests = generate(MIXES["rag"], rate=3, duration=10, seed=0, arrival="bursty")
    save(requests, tmp_path / "w.jsonl")
    assert load(tmp_path / "w.jsonl") == requests
    assert all(r.prompt_len + r.output_len <= 8192 for r in requests)
    shared = [r for r in requests if r.prefix_group is not None]
    same = [r for r in shared if r.prefix_group == shared[0].prefix_group]
    assert len(same) > 1 and same[0].prompt_ids(4096)[:512] == same[1].prompt_ids(4096)[:512]
    assert Request(0.0, 10, 5).prompt_ids(4096) != Request(0.0, 10, 5, seed=1).prompt_ids(4096)


def test_attributed_gpu_seconds_sum_to_engine_busy_time(tiny_model):
    engine = LLMEngine(EngineConfig(str(tiny_model), num_kv_blocks=24, max_num_seqs=4, max_num_batched_tokens=32))
    for i, (length, out) in enumerate([(40, 6), (5, 12), (70, 3), (12, 9), (30, 5)]):
        engine.add_request(str(i), list(range(10, 10 + length)), SamplingParams(max_tokens=out, ignore_eos=True), i % 3)
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out.gpu_seconds
        if len(final) == 2 and "3" in engine.seqs:
            final["3"] = engine.abort("3").gpu_seconds
    assert len(final) == 5 and all(s > 0 for s in final.values())
    assert sum(final.values()) == pytest.approx(engine.busy_seconds, rel=1e-9)


def test_step_shares_follow_tokens_and_kv_read():
    model = StepModel(MODELS["llama-3-70b"], "int8", GPUS["h100-sxm"], Layout(tp=4))
    step, (long_ctx, short_ctx, prefill) = model.cost([(1, 6000), (1, 10), (512, 0)])
    assert long_ctx + short_ctx + prefill == pytest.approx(step)
    assert prefill > long_ctx > short_ctx


def test_backend_usage_carries_gpu_seconds(tiny_model):
    import asyncio

    from backends.base import GenerationRequest
    from backends.engine import EngineBackend

    async def run():
        backend = EngineBackend("tiny", EngineConfig(str(tiny_model), num_kv_blocks=16))
        request = GenerationRequest("r1", [5, 6, 7, 8], SamplingParams(max_tokens=4, ignore_eos=True))
        deltas = [d async for d in backend.generate(request)]
        await backend.stop()
        return deltas[-1].usage, backend.engine.busy_seconds

    usage, busy = asyncio.run(run())
    assert usage.gpu_seconds == pytest.approx(busy) and usage.gpu_seconds > 0
