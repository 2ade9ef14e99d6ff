"""Continuous batching: every step, decodes first, then prefill chunks, under one token budget.

Running decodes never wait behind a long prompt: the prompt is prefilled a budget-sized chunk per step
alongside them. When the cache runs out of blocks, the lowest-priority, latest-arrived running sequence
is preempted: its blocks are freed and it is recomputed later (its full blocks often still in the prefix
cache by then).
"""
from __future__ import annotations

from backends.engine.block_manager import BlockManager
from backends.engine.config import EngineConfig
from backends.engine.sequence import Sequence, SequenceStatus

ScheduledBatch = list[tuple[Sequence, int]]  # (sequence, number of its tokens to compute this step)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []  # kept sorted by (priority, arrival)
        self.running: list[Sequence] = []  # likewise
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.waiting.sort(key=Sequence.sort_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch: ScheduledBatch = []
        budget = self.max_num_batched_tokens
        preemptions_before = self.num_preemptions
        # Decodes (one token) before chunked prefills; the sort is stable, so priority order holds within each.
        for seq in sorted(self.running, key=lambda s: s.num_uncomputed_tokens > 1):
            n = min(seq.num_uncomputed_tokens, budget)
            if seq.status != SequenceStatus.RUNNING or n == 0:
                continue
            if self._reserve(seq, n, batch):
                batch.append((seq, n))
                budget -= n
        # After a preemption the cache is full: admitting now would only preempt again.
        while self.waiting and budget and len(self.running) < self.max_num_seqs and preemptions_before == self.num_preemptions:
            seq = self.waiting[0]
            n = self._admit(seq, budget)
            if not n:
                break
            batch.append((seq, n))
            budget -= n
        return batch

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        (self.running if seq in self.running else self.waiting).remove(seq)
        self.block_manager.free(seq)

    def _admit(self, seq: Sequence, budget: int) -> int:
        hits = self.block_manager.match_prefix(seq)
        n = min(seq.num_uncomputed_tokens, budget)
        if not self.block_manager.can_append(seq, n):
            self.block_manager.free(seq)
            seq.num_computed_tokens = 0
            return 0
        self.block_manager.append(seq, n)
        self.block_manager.record_prefix_query(len(seq), hits)
        if seq.num_cached_tokens is None:  # billing counts the first admission's hits, not a recompute's
            seq.num_cached_tokens = hits
        self.waiting.pop(0)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self.running.sort(key=Sequence.sort_key)
        return n

    def _reserve(self, seq: Sequence, n: int, batch: ScheduledBatch) -> bool:
        scheduled = {s.seq_id for s, _ in batch}
        while not self.block_manager.can_append(seq, n):
            victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
            self._preempt(victim)
            if victim is seq:
                return False
        self.block_manager.append(seq, n)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status, seq.num_computed_tokens = SequenceStatus.WAITING, 0
        self.add(seq)
        self.num_preemptions += 1
