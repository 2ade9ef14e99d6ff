"""The engine's own Scheduler and BlockManager, stepped on a simulated clock.

Each step, the real Scheduler picks the batch (decodes, prefill chunks, admissions by class, preemptions when
blocks run out) from the real BlockManager (paged cache, prefix hits); the clock then advances by the time the
step-time model predicts for that batch, and Scheduler.advance, as in the engine, records the step and names the
sequences whose chunk reached its end: each gets a token. No model runs: token ids are drawn at random, lengths come from the workload.

Replicas each get every R-th request (round robin) and run independently. Priority aging is off (the Scheduler
reads the wall clock for it). Speculative decoding is modelled, not run: while at most `max_batch` sequences
decode, each decode verifies k drafts and accepts each in turn with the measured acceptance rate.
"""
from __future__ import annotations

import random
from array import array
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from backends.base import SamplingParams
from backends.engine.block_manager import BlockManager
from backends.engine.capacity.step_time import Shape, StepModel
from backends.engine.capacity.workload import Request
from backends.engine.scheduler import ScheduledBatch, Scheduler
from backends.engine.sequence import Sequence

GENERATED = 6  # the token id every simulated output token gets
CLASSES = {0: "interactive", 1: "standard", 2: "batch"}


@dataclass
class Speculation:
    # Probability that each proposed token is accepted, independently; bench/spec_decode.py's accepted / proposed
    # (under the engine's adaptive k) is an estimate of it.
    acceptance: float
    k: int = 4
    draft: StepModel | None = None  # None: n-gram prompt lookup, whose proposals cost nothing
    max_batch: int = 16  # as EngineConfig.speculative_max_batch_size: more decoding sequences, no speculation


@dataclass
class EngineKnobs:
    """The EngineConfig fields the Scheduler and BlockManager read, and the simulation's limits."""

    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    preemption_mode: str = "recompute"
    priority_aging_s: None = None
    fair_step_share: bool = True
    num_blocks: int | None = None  # None: what the step model's memory holds
    speculation: Speculation | None = None
    drain_s: float = 30.0  # the clock stops this long after the last arrival; unfinished requests are cut off
    max_waiting: int = 4000  # a queue this long means hopeless overload: stop there
    vocab: int = 4096


@dataclass
class Record:
    request: Request
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    gpu_seconds: float = 0.0
    finished: bool = False


@dataclass
class SimResult:
    records: list[Record]
    itl: dict[int, array]  # per class: every inter-token gap, seconds
    end: float  # simulated seconds until the last step
    busy_s: float  # step time summed over replicas
    gpus_per_replica: int
    replicas: int
    preemptions: int = 0
    kv_usage: list[float] = field(default_factory=list)  # time-weighted mean per replica
    kv_usage_max: float = 0.0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0
    overloaded: bool = False  # the queue passed EngineKnobs.max_waiting: the simulation stopped there

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def ttft(self, priority: int | None = None) -> np.ndarray:
        """Time to first token per request; a request cut off without one counts its wait so far (a lower bound)."""
        recs = [r for r in self.records if priority is None or r.request.priority == priority]
        return np.array([(r.first_token if r.first_token is not None else self.end) - r.request.arrival for r in recs])

    def itl_all(self, priority: int | None = None) -> np.ndarray:
        keys = [priority] if priority is not None else list(self.itl)
        return np.concatenate([np.frombuffer(self.itl[k], dtype=float) for k in keys if k in self.itl] or [np.zeros(0)])

    @property
    def output_tokens(self) -> int:
        return sum(r.tokens for r in self.records)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.end if self.end else 0.0

    @property
    def unfinished(self) -> int:
        return sum(not r.finished for r in self.records)

    def rows(self) -> list[list]:
        """Per class and overall: requests, TTFT p50/p95/p99 ms, ITL p50/p95/p99 ms, mean GPU-seconds per request."""
        rows = []
        for p in [*sorted({r.request.priority for r in self.records}), None]:
            ttft, itl = self.ttft(p) * 1e3, self.itl_all(p) * 1e3
            recs = [r for r in self.records if p is None or r.request.priority == p]
            rows.append([CLASSES[p] if p is not None else "all", len(recs), *_pct(ttft), *_pct(itl),
                         float(np.mean([r.gpu_seconds for r in recs]))])
        return rows


ROW_HEADERS = ["class", "requests", "TTFT p50 ms", "TTFT p95 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p95 ms",
               "ITL p99 ms", "GPU-s/request"]


def _pct(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, q)) if len(values) else float("nan") for q in (50, 95, 99)]


def simulate(requests: list[Request], model: StepModel, knobs: EngineKnobs = EngineKnobs(), seed: int = 0,
             concurrency: int | None = None) -> SimResult:
    """Run the workload over model.layout.replicas replicas. With `concurrency`, arrival times are ignored: that many
    clients each send their next request when the previous one finishes (a closed loop, as load generators do)."""
    replicas = model.layout.replicas
    result = SimResult([], {}, 0.0, 0.0, model.layout.gpus_per_replica, replicas)
    for i in range(replicas):
        share = requests[i::replicas]
        clients = None if concurrency is None else max(1, concurrency // replicas + (i < concurrency % replicas))
        _Replica(model, knobs, random.Random(f"{seed}-{i}"), result).run(share, clients)
    return result


class _Replica:
    def __init__(self, model: StepModel, knobs: EngineKnobs, rng: random.Random, result: SimResult) -> None:
        self.model, self.knobs, self.rng, self.result = model, knobs, rng, result
        num_blocks = knobs.num_blocks or model.kv_capacity_tokens() // knobs.block_size
        if num_blocks < 1:
            raise ValueError(f"{model.model.name} in {model.fmt} does not fit {model.layout.gpus_per_replica} x "
                             f"{model.hardware.name}: no memory left for the KV cache")
        self.blocks = BlockManager(num_blocks, knobs.block_size, knobs.enable_prefix_caching)
        self.scheduler = Scheduler(knobs, self.blocks)
        self.records: dict[int, Record] = {}
        self.clock = self.busy = self.kv_time = 0.0

    def run(self, requests: list[Request], clients: int | None) -> None:
        capacity = self.blocks.block_size * len(self.blocks.blocks)
        fits = [r for r in requests if r.prompt_len + r.output_len <= capacity]
        self.result.records += [Record(r) for r in requests if r.prompt_len + r.output_len > capacity]  # never served
        backlog = deque(fits[clients:] if clients else [])
        pending = deque([replace(r, arrival=0.0) for r in fits[:clients]] if clients else fits)
        stop_at = fits[-1].arrival + self.knobs.drain_s if fits and not clients else float("inf")
        while pending or self.scheduler.has_unfinished():
            while pending and pending[0].arrival <= self.clock:
                self._add(pending.popleft())
            if not self.scheduler.has_unfinished():
                self.clock = pending[0].arrival
                continue
            if self.clock > stop_at:  # requests still running are cut off (counted in `unfinished`)
                break
            if len(self.scheduler.waiting) > self.knobs.max_waiting:
                self.result.overloaded = True
                break
            finished = self._step()
            if finished is None:  # nothing could be scheduled: cannot happen for requests that fit; stop rather than spin
                self.result.overloaded = True
                break
            for _ in finished:
                if backlog:
                    pending.append(replace(backlog.popleft(), arrival=self.clock))
        self._close()

    def _add(self, request: Request) -> None:
        params = SamplingParams(max_tokens=request.output_len, ignore_eos=True, seed=0)
        seq = Sequence(str(id(request)), request.prompt_ids(self.knobs.vocab), params, priority=request.priority,
                       cache_salt=request.tenant, weight=request.weight)
        self.records[seq.seq_id] = Record(request)
        self.scheduler.add(seq)

    def _step(self) -> list[Record] | None:
        """One engine step; returns the records of requests that finished in it (None: an empty step)."""
        batch = self.scheduler.schedule().batch  # no swap copies to make: no cache holds data here
        if not batch:
            return None
        spec = self.knobs.speculation
        speculating = spec is not None and 0 < sum(n == 1 for _, n in batch) <= spec.max_batch
        self._pass_time(batch, speculating)
        decoding = {seq.seq_id for seq, n in batch if n == 1}
        due = self.scheduler.advance(batch)
        return [rec for seq in due if (rec := self._emit(seq, speculating and seq.seq_id in decoding))]

    def _pass_time(self, batch: ScheduledBatch, speculating: bool) -> None:
        """Advance the clock by the step's predicted time, charging each sequence its share."""
        spec = self.knobs.speculation
        shape: Shape = [(spec.k + 1 if speculating and n == 1 else n, seq.num_computed_tokens) for seq, n in batch]
        seconds, shares = self.model.cost(shape)
        if speculating and spec.draft is not None:  # k draft decode steps, shared like the target's by tokens
            draft = spec.k * spec.draft.step_time([(1, c) for n, c in shape if n == spec.k + 1])
            shares = [s + draft / len(shares) for s in shares]
            seconds += draft
        for (seq, _), share in zip(batch, shares):
            self.records[seq.seq_id].gpu_seconds += share * self.model.layout.gpus_per_replica
        self.kv_time += self.blocks.usage * seconds
        self.result.kv_usage_max = max(self.result.kv_usage_max, self.blocks.usage)
        self.clock += seconds
        self.busy += seconds

    def _emit(self, seq: Sequence, speculating: bool) -> Record | None:
        """Give seq its token(s), with accepted drafts when it speculated; its record if that finished it."""
        record = self.records[seq.seq_id]
        left = seq.params.max_tokens - seq.num_output_tokens
        accepted = self._accepted(seq, left) if speculating else 0
        self.blocks.append(seq, accepted)  # the verify pass computed the accepted drafts' keys and values
        seq.num_computed_tokens += accepted
        seq.token_ids += [GENERATED] * (accepted + 1)  # what the tokens are does not matter to the scheduler
        self._observe(record, seq, accepted + 1)
        if seq.num_output_tokens < seq.params.max_tokens:
            return None
        self.scheduler.finish(seq, "length")
        record.finished = True
        return record

    def _accepted(self, seq: Sequence, left: int) -> int:
        spec = self.knobs.speculation
        accepted = 0
        while accepted < min(spec.k, left - 1) and self.rng.random() < spec.acceptance:
            accepted += 1
        while accepted and not self.blocks.can_append(seq, accepted):
            accepted -= 1
        return accepted

    def _observe(self, record: Record, seq: Sequence, tokens: int) -> None:
        if record.first_token is None:
            record.first_token = self.clock
        else:
            gaps = self.result.itl.setdefault(record.request.priority, array("d"))
            gaps.extend([(self.clock - record.last_token) / tokens] * tokens)
        record.last_token, record.tokens = self.clock, record.tokens + tokens

    def _close(self) -> None:
        r = self.result
        r.records += self.records.values()
        r.end = max(r.end, self.clock)
        r.busy_s += self.busy
        r.preemptions += self.scheduler.num_preemptions
        r.kv_usage.append(self.kv_time / self.busy if self.busy else 0.0)
        r.prefix_queries += self.blocks.prefix_queries
        r.prefix_hits += self.blocks.prefix_hits
