"""The engine's Prometheus metrics, in the default registry so the gateway's /metrics shows them."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from backends.engine.block_manager import BlockManager
from backends.engine.scheduler import Scheduler
from backends.engine.sequence import Sequence

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RUNNING = Gauge("ferryman_engine_running_requests", "Requests being prefilled or decoded", ["model"])
WAITING = Gauge("ferryman_engine_waiting_requests", "Requests queued for admission", ["model"])
KV_USAGE = Gauge("ferryman_engine_kv_cache_usage_ratio", "Fraction of KV cache blocks in use", ["model"])
PREFIX_QUERIES = Counter("ferryman_engine_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", ["model"])
PREFIX_HITS = Counter("ferryman_engine_prefix_cache_hits", "Prompt tokens found in the prefix cache", ["model"])
PREEMPTIONS = Counter("ferryman_engine_preemptions", "Sequences preempted for lack of KV blocks", ["model"])
GENERATED = Counter("ferryman_engine_generation_tokens", "Tokens generated", ["model"])
FINISHED = Counter("ferryman_engine_requests_finished", "Requests finished", ["model", "reason"])
TTFT = Histogram("ferryman_engine_time_to_first_token_seconds", "Arrival to first token", ["model"], buckets=_LATENCY_BUCKETS)
ITL = Histogram("ferryman_engine_inter_token_latency_seconds", "Gap between a request's tokens", ["model"], buckets=_LATENCY_BUCKETS)


class EngineMetrics:
    """One engine's view of the shared metrics, labelled by its model name."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._seen = (0, 0, 0)  # prefix queries, prefix hits, preemptions already exported

    def observe_step(self, scheduler: Scheduler, block_manager: BlockManager) -> None:
        RUNNING.labels(self.model).set(len(scheduler.running))
        WAITING.labels(self.model).set(len(scheduler.waiting))
        KV_USAGE.labels(self.model).set(block_manager.usage)
        now = (block_manager.prefix_queries, block_manager.prefix_hits, scheduler.num_preemptions)
        for metric, new, old in zip((PREFIX_QUERIES, PREFIX_HITS, PREEMPTIONS), now, self._seen):
            if new > old:
                metric.labels(self.model).inc(new - old)
        self._seen = now

    def observe_token(self, seq: Sequence, now: float) -> None:
        GENERATED.labels(self.model).inc()
        if seq.last_token_time is None:
            TTFT.labels(self.model).observe(now - seq.arrival_time)
        else:
            ITL.labels(self.model).observe(now - seq.last_token_time)
        seq.last_token_time = now

    def observe_finished(self, seq: Sequence) -> None:
        FINISHED.labels(self.model, seq.finish_reason or "abort").inc()
