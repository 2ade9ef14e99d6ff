"""Capacity questions answered with the simulator: the highest request rate that meets an SLO, and what it costs."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from backends.engine.capacity.simulator import EngineKnobs, SimResult, simulate
from backends.engine.capacity.step_time import Layout, StepModel
from backends.engine.capacity.workload import Mix, generate


@dataclass(frozen=True)
class SLO:
    ttft_p95_s: float = 0.5
    itl_p95_s: float | None = None
    priority: int | None = None  # the class the SLO is for; None: every request

    def met(self, result: SimResult) -> bool:
        if result.overloaded or not result.records:
            return False
        ok = float(np.percentile(result.ttft(self.priority), 95)) <= self.ttft_p95_s
        itl = result.itl_all(self.priority)
        return ok and (self.itl_p95_s is None or not len(itl) or float(np.percentile(itl, 95)) <= self.itl_p95_s)


@dataclass
class Point:
    rate: float  # requests/s over the whole layout
    ttft_p95_s: float
    itl_p95_s: float
    tokens_per_s: float  # output tokens/s over the whole layout
    prompt_tokens_per_s: float
    met: bool


@dataclass
class Capacity:
    layout: Layout
    max_rate: float  # requests/s over the whole layout meeting the SLO (0: not even the lowest rate tried)
    points: list[Point] = field(default_factory=list)  # every rate tried, for the latency-vs-load curve

    @property
    def best(self) -> Point | None:
        met = [p for p in self.points if p.met]
        return max(met, key=lambda p: p.rate) if met else None

    def cost_per_million(self, gpu_hour_usd: float) -> tuple[float, float]:
        """USD per 1M output tokens and per 1M tokens in + out, at the highest rate meeting the SLO."""
        best = self.best
        if best is None or not best.tokens_per_s:
            return float("inf"), float("inf")
        per_s = self.layout.gpus * gpu_hour_usd / 3600
        return per_s / best.tokens_per_s * 1e6, per_s / (best.tokens_per_s + best.prompt_tokens_per_s) * 1e6


def max_rate(mix: Mix, model: StepModel, slo: SLO, knobs: EngineKnobs = EngineKnobs(), duration: float = 30.0,
             seed: int = 0, start: float = 2.0, steps: int = 5, max_len: int = 8192) -> Capacity:
    """The highest rate meeting the SLO: doubling from `start` until it fails, then `steps` bisections.

    Replicas behind a round-robin balancer are independent, so one replica is simulated at rate / replicas and the
    figures scaled by the number of replicas."""
    one = model.with_layout(replace(model.layout, replicas=1))
    r = model.layout.replicas
    points: list[Point] = []

    def trial(rate: float) -> bool:
        requests = generate(mix, rate, duration, seed, max_len=max_len)
        result = simulate(requests, one, knobs, seed)
        itl = result.itl_all(slo.priority)
        prompt = sum(rec.request.prompt_len for rec in result.records if rec.first_token is not None)
        points.append(Point(rate * r, float(np.percentile(result.ttft(slo.priority), 95)) if result.records else 0.0,
                            float(np.percentile(itl, 95)) if len(itl) else 0.0, result.tokens_per_s * r,
                            prompt / result.end * r if result.end else 0.0, slo.met(result)))
        return points[-1].met

    lo, hi = 0.0, start
    while trial(hi) and hi < 1e5:
        lo, hi = hi, hi * 2
    if lo == 0.0 and trial(hi / 8):
        lo = hi / 8
    for _ in range(steps if lo else 0):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if trial(mid) else (lo, mid)
    return Capacity(model.layout, lo * r, sorted(points, key=lambda p: p.rate))


def gpu_second_price(gpu_hour_usd: float) -> float:
    """What one GPU-second costs: the price a self-hosted model is charged per attributed GPU-second."""
    return gpu_hour_usd / 3600


def plot_curves(curves: list[tuple[str, Capacity]], slo: SLO, path: Path, title: str) -> None:
    """p95 TTFT and ITL against requests/s per GPU, one line per layout (the rates max_rate tried)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, cap in curves:
        gpus = cap.layout.gpus
        xs = [p.rate / gpus for p in cap.points]
        ax1.plot(xs, [p.ttft_p95_s * 1e3 for p in cap.points], marker="o", label=label)
        ax2.plot(xs, [p.itl_p95_s * 1e3 for p in cap.points], marker="o", label=label)
    ax1.axhline(slo.ttft_p95_s * 1e3, color="k", ls="--", lw=1, label="SLO")
    for ax, name in ((ax1, "p95 TTFT ms"), (ax2, "p95 ITL ms")):
        ax.set_xlabel("requests/s per GPU")
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
