"""How long one engine step takes for the batch the scheduler chose: a roofline with efficiency factors.

A step reads every weight of its shard once per micro-batch and each scheduled sequence's cached keys and values;
it computes 2 FLOPs per weight per token plus attention. Memory time is bytes over (bandwidth x efficiency),
compute time FLOPs over (peak x efficiency); a micro-batch takes the larger of the two (plus the part of the
smaller that does not overlap it: none on a GPU, all of it on one CPU thread). Tensor parallelism
splits both over its ranks and adds two all-reduces per layer; pipeline parallelism runs micro-batches through
its stages, and the fill and drain (the bubble) add (stages - 1) micro-batch times. A fixed overhead per step and
per sequence covers what a roofline does not see (scheduling, input preparation, kernel launches, sampling).
"""
from __future__ import annotations

from dataclasses import dataclass

from backends.engine.capacity.hardware import Hardware, ModelSpec, weight_bytes

Shape = list[tuple[int, int]]  # per scheduled sequence: (tokens computed this step, tokens already in its cache)


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    replicas: int = 1

    @classmethod
    def parse(cls, text: str) -> Layout:
        """"TPxPPxREPLICAS", e.g. "4x1x2"; missing parts are 1."""
        parts = [int(p) for p in text.lower().split("x")]
        if not 1 <= len(parts) <= 3 or min(parts) < 1:
            raise ValueError(f"layout {text!r}: write TPxPPxREPLICAS with positive integers, e.g. 4x1x2")
        return cls(*parts)

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        return self.gpus_per_replica * self.replicas

    def __str__(self) -> str:
        return f"TP{self.tp} PP{self.pp} x{self.replicas}"

    def refusal(self, model: ModelSpec) -> str | None:
        """Why an engine could not shard `model` so (as vLLM refuses it), or None."""
        if not _splits(model, self.tp):
            fits = [str(tp) for tp in range(1, model.heads + 1) if _splits(model, tp)]
            return (f"tensor-parallel degree {self.tp} does not divide {model.name}'s {model.heads} attention heads "
                    f"({model.kv_heads} KV heads) evenly; it can use TP {', '.join(fits)}")
        if self.pp > model.layers:
            return f"{self.pp} pipeline stages for {model.name}'s {model.layers} layers: a stage needs a layer"
        return None


def _splits(model: ModelSpec, tp: int) -> bool:
    """Tensor-parallel ranks split the query heads evenly, and the KV heads too, or replicate them evenly when
    there are fewer KV heads than ranks."""
    kv = model.kv_heads % tp == 0 if tp <= model.kv_heads else tp % model.kv_heads == 0
    return model.heads % tp == 0 and kv


@dataclass(frozen=True)
class Efficiency:
    bandwidth: float = 0.75  # fraction of datasheet memory bandwidth the step's reads reach
    flops: float = 0.55  # fraction of peak FLOP/s the matmuls reach (prefill is compute-bound)
    step_overhead_s: float = 2e-3  # per step, whatever the batch
    seq_overhead_s: float = 10e-6  # per scheduled sequence
    allreduce_latency_s: float = 8e-6  # per NCCL all-reduce within a node (latency term; bytes go over the link)
    # How much of the smaller of memory and compute time hides under the larger: 1 is the roofline (a GPU streams
    # weights while its tensor cores work); one CPU thread does one, then the other (fitted on this CPU: 0.00).
    overlap: float = 1.0


class StepModel:
    def __init__(self, model: ModelSpec, fmt: str, hardware: Hardware, layout: Layout = Layout(),
                 efficiency: Efficiency = Efficiency(), full_bytes: float = 2.0, kv_bytes: float = 2.0) -> None:
        if reason := layout.refusal(model):
            raise ValueError(f"layout {layout}: {reason}")
        self.model, self.fmt, self.hardware, self.layout, self.eff = model, fmt, hardware, layout, efficiency
        self.full_bytes, self.kv_bytes = full_bytes, kv_bytes
        self.weight_bytes = weight_bytes(model, fmt, full_bytes)
        # The embedding is looked up by row, not read whole: every other weight is read each micro-batch.
        self.weight_read_bytes = self.weight_bytes - model.vocab * model.hidden * full_bytes
        self.kv_token_bytes = model.kv_bytes_per_token(kv_bytes)

    def with_layout(self, layout: Layout) -> StepModel:
        return StepModel(self.model, self.fmt, self.hardware, layout, self.eff, self.full_bytes, self.kv_bytes)

    def kv_capacity_tokens(self, usable: float = 0.9) -> int:
        """Tokens of KV cache one replica holds: its memory (a share kept for activations) less the weights."""
        free = self.hardware.memory_gb * 1e9 * usable * self.layout.gpus_per_replica - self.weight_bytes
        return max(0, int(free // self.kv_token_bytes))

    def breakdown(self, shape: Shape) -> dict[str, float]:
        """Seconds per component of one step; 'step' is the total (memory and compute overlap by eff.overlap)."""
        return self._breakdown(shape, *self._per_sequence(shape))

    def step_time(self, shape: Shape) -> float:
        return self.breakdown(shape)["step"]

    def cost(self, shape: Shape) -> tuple[float, list[float]]:
        """The step's seconds, and each sequence's share of them: weights, overhead and communication split by
        tokens computed, the KV cache read and attention by each sequence's own context."""
        kv_times, compute_times = self._per_sequence(shape)
        parts = self._breakdown(shape, kv_times, compute_times)
        tokens = sum(n for n, _ in shape)
        shared = (parts["weights"] + parts["allreduce"] + parts["bubble"] + parts["overhead"]) / tokens
        costs = [shared * n + kv + compute for (n, _), kv, compute in zip(shape, kv_times, compute_times)]
        scale = parts["step"] / sum(costs)
        return parts["step"], [c * scale for c in costs]

    def _per_sequence(self, shape: Shape) -> tuple[list[float], list[float]]:
        """Each sequence's KV-read seconds and compute seconds (per rank, at the efficiency-scaled rates)."""
        ranks = self.layout.gpus_per_replica
        kv_s = self.kv_token_bytes / ranks / (self.hardware.bandwidth * self.eff.bandwidth)
        flop_s = 1 / ranks / (self.hardware.flops * self.eff.flops)
        md = self.model
        # 2 FLOPs per weight per token, the LM head once per sequence (only the last position's logits are computed),
        # attention 4 per (query, key) pair per head and layer (QK^T and AV)
        linear, head, attention = 2 * md.linear_params, 2 * md.vocab * md.hidden, 4 * md.layers * md.heads * md.head_dim
        kv = [(c + n) * kv_s for n, c in shape]
        compute = [(linear * n + head + attention * n * (c + (n + 1) / 2)) * flop_s for n, c in shape]
        return kv, compute

    def _breakdown(self, shape: Shape, kv_times: list[float], compute_times: list[float]) -> dict[str, float]:
        if not shape:
            return dict(weights=0.0, kv=0.0, compute=0.0, allreduce=0.0, bubble=0.0, overhead=0.0, step=0.0)
        pp, m = self.layout.pp, min(self.layout.pp, len(shape))
        bw = self.hardware.bandwidth * self.eff.bandwidth
        weights = m * self.weight_read_bytes / self.layout.gpus_per_replica / bw  # each stage, once per micro-batch
        kv, compute = sum(kv_times), sum(compute_times)
        allreduce = m * self._allreduce(sum(n for n, _ in shape) / m)
        memory = weights + kv
        unhidden = (1 - self.eff.overlap) * min(memory, compute)
        stage = (max(memory, compute) + unhidden + allreduce) / m  # one micro-batch through one stage
        overhead = self.eff.step_overhead_s + self.eff.seq_overhead_s * len(shape)
        bubble = (pp - 1) * stage
        return dict(weights=weights, kv=kv, compute=compute, allreduce=allreduce, bubble=bubble, overhead=overhead,
                    step=m * stage + bubble + overhead)

    def _allreduce(self, tokens: float) -> float:
        """The two all-reduces per layer of a stage's layers, for one micro-batch of `tokens` 16-bit activations."""
        tp = self.layout.tp
        if tp == 1:
            return 0.0
        ring = 2 * (tp - 1) / tp * tokens * self.model.hidden * 2 / self.hardware.link_bandwidth
        return 2 * self.model.layers / self.layout.pp * (self.eff.allreduce_latency_s + ring)


def engine_step_model(config) -> StepModel:
    """The step-time model of an engine's own checkpoint, format and layout (an EngineConfig): the weights by which
    LLMEngine shares each measured step among its sequences."""
    from backends.engine.capacity.hardware import CPU_NOMINAL, GPUS, ModelSpec

    dtype_bytes = config.torch_dtype.itemsize
    hardware = CPU_NOMINAL if config.device == "cpu" else GPUS["h100-sxm"]
    return StepModel(ModelSpec.from_hf_config(config.name, config.hf_config), config.quantization or "bf16", hardware,
                     Layout(config.tensor_parallel_size, config.pipeline_parallel_size), Efficiency(),
                     full_bytes=dtype_bytes, kv_bytes=dtype_bytes)
