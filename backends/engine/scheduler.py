"""Continuous batching: every step, decodes first, then prefill chunks, under one token budget.

Running decodes never wait behind a long prompt: the prompt is prefilled a budget-sized chunk per step
alongside them (one exception: a tenant the step share below protects has its chunk placed before the others'
decodes, which then get what budget is left). Priority classes (0 interactive, 1 standard, 2 batch) are served in
order: a class's decodes, prefill chunks and admissions all come before the next class's, and a waiting request takes
the seat and blocks of a lower-class running one; with aging, a request that waits long climbs a class at a
time, so no class starves forever. Within a class, seats (decode slots) are shared between tenants (the
`cache_salt` the gateway sets per tenant) by weighted fair share: a tenant's share is its seats in the class
divided by its weight (the catalog's `tenant_weights`, default 1). Prefill chunks and admissions go to the
tenant of the smallest share first, and while every seat is taken, the tenant of the largest share gives up
its latest seat to a waiting request whose tenant would still hold no larger a share after the move, so one
tenant's flood of long generations cannot keep another tenant waiting for a seat. A seat alone does not bound that
tenant's latency where a step's time grows with its batch and its context (a CPU, or a compute-bound device): so while
one tenant holds a strictly smaller share than every other, each step shares its sequences too: that tenant's work goes
in first, and each other tenant adds no more sequences than its weight's worth of that tenant's (equal weights: as
many), however many seats it holds; the others' first running sequence always computes, so none starves.

When the cache runs out of blocks, the lowest-priority, latest-arrived running sequence is preempted: by
recompute (its blocks are freed and it is prefilled again later, its full blocks often still in the prefix
cache by then) or by swap (its blocks are copied to host memory and copied back when it resumes).

schedule() returns the step's plan (SchedulerOutput); after the forward pass, advance() records what the step
computed. The engine and the capacity simulator both step through this pair. Swap copies are executed by the
model runner before the step's forward pass: all swap-outs, then all swap-ins. Host blocks freed by a swap-in
are reused only from the next step, so no copy in a step reads a block another copy of the same step writes.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from backends.engine.block_manager import BlockManager
from backends.engine.config import EngineConfig
from backends.engine.sequence import Sequence, SequenceStatus

ScheduledBatch = list[tuple[Sequence, int]]  # (sequence, number of its tokens to compute this step)


@dataclass
class SchedulerOutput:
    """One step's plan: the batch to compute, and the cache copies to make before it."""

    batch: ScheduledBatch = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device block, host block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (host block, device block)
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.block_manager = block_manager
        self.waiting: list[Sequence] = []  # kept sorted by (priority, arrival)
        self.running: list[Sequence] = []  # likewise
        self.preemption_mode = config.preemption_mode
        self.priority_aging_s = config.priority_aging_s
        self.num_preemptions = 0
        self.num_swap_outs = 0
        self.fair_step_share = config.fair_step_share

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self.waiting.sort(key=Sequence.sort_key)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        batch, budget = out.batch, self.max_num_batched_tokens
        self.block_manager.release_swapped_in()
        self._age_waiting()
        self._make_room_for_higher_class(out)
        self._share_seats(out)
        preemptions_before = len(out.preempted)
        admitting, in_step = True, Counter()  # sequences per tenant in this step
        seats, protected = self._seats(), self._protected()
        # Class by class: the protected tenant's work first, then decodes, running prefill chunks, admissions
        # (fewest seats' tenant first, then FIFO).
        for seq in sorted(self.running + self.waiting, key=lambda s: _schedule_order(s, seats, protected)):
            if not budget:
                break
            if not self._fits_share(seq, protected, in_step):
                continue
            if seq.status == SequenceStatus.RUNNING:
                n = min(seq.num_uncomputed_tokens, budget)
                if n and self._reserve(seq, n, out):
                    batch.append((seq, n))
                    budget -= n
                    in_step[seq.cache_salt] += 1
            elif admitting:
                n = self._admit(seq, budget, out) if len(self.running) < self.max_num_seqs else 0
                if n:
                    batch.append((seq, n))
                    budget -= n
                    in_step[seq.cache_salt] += 1
                admitting = bool(n)  # nothing jumps a waiting request that does not fit
            # After a preemption the cache is full: admitting now would only preempt again.
            admitting = admitting and preemptions_before == len(out.preempted)
        return out

    def advance(self, batch: ScheduledBatch) -> list[Sequence]:
        """After the step's forward pass: the batch's tokens are in the cache (their full blocks join the prefix
        cache). Returns the sequences whose chunk reached their end, each due its next token(s)."""
        for seq, n in batch:
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)
        return [seq for seq, _ in batch if seq.num_computed_tokens >= len(seq)]

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        (self.running if seq in self.running else self.waiting).remove(seq)
        self.block_manager.free(seq)

    def _admit(self, seq: Sequence, budget: int, out: SchedulerOutput) -> int:
        swapped = bool(seq.cpu_block_table)
        hits = 0 if swapped else self.block_manager.match_prefix(seq)
        n = min(seq.num_uncomputed_tokens, budget)
        if not self.block_manager.can_append(seq, n):
            if not swapped:
                self.block_manager.free(seq)
                seq.num_computed_tokens = 0
            return 0
        if swapped:
            out.swap_in += self.block_manager.swap_in(seq)
        else:
            self.block_manager.record_prefix_query(len(seq), hits)
        self.block_manager.append(seq, n)
        if seq.num_cached_tokens is None:  # billing counts the first admission's hits, not a recompute's
            seq.num_cached_tokens = hits
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        self.running.sort(key=Sequence.sort_key)
        return n

    def _reserve(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        scheduled = {s.seq_id for s, _ in out.batch}
        while not self.block_manager.can_append(seq, n):
            victim = next(s for s in reversed(self.running) if s.seq_id not in scheduled)
            self._preempt(victim, out)
            if victim is seq:
                return False
        self.block_manager.append(seq, n)
        return True

    def _age_waiting(self) -> None:
        if not self.priority_aging_s:
            return
        now = time.perf_counter()
        for seq in self.waiting:
            if seq.priority > 0 and now - seq.class_since >= self.priority_aging_s:
                seq.priority, seq.class_since = seq.priority - 1, now
        self.waiting.sort(key=Sequence.sort_key)

    def _make_room_for_higher_class(self, out: SchedulerOutput) -> None:
        """Preempt the lowest-class running sequences while the first waiting one, of a higher class, lacks a seat or blocks."""
        while self.waiting and self.running and self.running[-1].priority > self.waiting[0].priority:
            seq = self.waiting[0]
            n = min(seq.num_uncomputed_tokens, self.max_num_batched_tokens)
            if len(self.running) < self.max_num_seqs and self.block_manager.can_append(seq, n):
                return
            self._preempt(self.running[-1], out)

    def _seats(self) -> Counter:
        return Counter((s.priority, s.cache_salt) for s in self.running)

    def _share_seats(self, out: SchedulerOutput) -> None:
        """All seats taken: the first waiting request of the best class whose tenant has the smallest share takes
        the latest seat of the same class's tenant with the largest share, if that tenant's share after giving the
        seat up is still at least the taker's (equal weights: it holds 2+ seats more)."""
        if not self.waiting or len(self.running) < self.max_num_seqs:
            return
        seats = self._seats()
        seq = min(self.waiting, key=lambda s: (s.priority, _share(s, seats), s.seq_id))
        peers = [s for s in self.running if s.priority == seq.priority]
        if not peers:
            return
        victim = max(peers, key=lambda s: (_share(s, seats), s.seq_id))
        given, taken = seats[victim.priority, victim.cache_salt] - 1, seats[seq.priority, seq.cache_salt] + 1
        if given * seq.weight >= taken * victim.weight:  # given / victim.weight >= taken / seq.weight
            self._preempt(victim, out)

    def _protected(self) -> Sequence | None:
        """The first sequence of the tenant whose share of seats is strictly the smallest of those with work (its
        class and weight stand for the tenant's); None for one tenant, a tie, or the step share off."""
        if not self.fair_step_share:
            return None
        seats, first = Counter(), {}
        for seq in self.running + self.waiting:
            seats[seq.cache_salt] += (seq.status == SequenceStatus.RUNNING) / seq.weight
            first.setdefault(seq.cache_salt, seq)
        if len(seats) < 2:
            return None
        (least, share), (_, next_share) = sorted(seats.items(), key=lambda item: item[1])[:2]
        return None if share == next_share else first[least]

    @staticmethod
    def _fits_share(seq: Sequence, protected: Sequence | None, in_step: Counter) -> bool:
        """Whether seq may join the step: another tenant's (same class or lower) only within its weight's worth of
        the protected tenant's sequences in it, but the others' first running sequence always."""
        if protected is None or seq.cache_salt == protected.cache_salt or seq.priority < protected.priority:
            return True
        theirs = sum(in_step.values()) - in_step[protected.cache_salt]
        if not theirs and seq.status == SequenceStatus.RUNNING:
            return True
        return (in_step[seq.cache_salt] + 1) * protected.weight <= in_step[protected.cache_salt] * seq.weight

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        if self.preemption_mode == "swap" and self.block_manager.can_swap_out(seq):
            out.swap_out += self.block_manager.swap_out(seq)
            self.num_swap_outs += 1
        else:
            self.block_manager.free(seq)
            seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.add(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)


def _share(seq: Sequence, seats: Counter) -> float:
    """Its tenant's seats in its class per unit of the tenant's weight."""
    return seats[seq.priority, seq.cache_salt] / seq.weight


def _schedule_order(seq: Sequence, seats: Counter, protected: Sequence | None) -> tuple[int, bool, bool, float, bool]:
    # The protected tenant's work first; then decodes (share 0), then prefill chunks and admissions by their tenant's
    # share of the class's seats.
    others = protected is not None and seq.cache_salt != protected.cache_salt
    waiting, prefill = seq.status == SequenceStatus.WAITING, seq.num_uncomputed_tokens > 1
    share = _share(seq, seats) if prefill or waiting else 0
    return seq.priority, others, waiting, share, prefill
