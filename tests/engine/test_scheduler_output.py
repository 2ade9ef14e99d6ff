"""The step contract: schedule() returns the step's plan (batch, swap copies, preemptions) and advance() records what
the step computed, naming the sequences due a token. No model: the real Scheduler and BlockManager alone."""
from __future__ import annotations

from backends.base import SamplingParams
from backends.engine.block_manager import BlockManager
from backends.engine.capacity.simulator import EngineKnobs
from backends.engine.scheduler import Scheduler
from backends.engine.sequence import Sequence


def scheduler(num_blocks: int, num_cpu_blocks: int = 0, **knobs) -> Scheduler:
    config = EngineKnobs(block_size=4, max_num_seqs=4, max_num_batched_tokens=8, **knobs)
    return Scheduler(config, BlockManager(num_blocks, 4, True, num_cpu_blocks))


def seq(n: int, priority: int = 1, first: int = 1) -> Sequence:
    return Sequence("r", list(range(first, first + n)), SamplingParams(max_tokens=8), priority=priority)


def test_a_prompt_is_due_its_token_only_when_its_last_chunk_is_computed():
    s = scheduler(num_blocks=8)
    a = seq(12)
    s.add(a)
    first = s.schedule()
    assert first.batch == [(a, 8)]
    assert s.advance(first.batch) == []  # 8 of 12 prompt tokens: no token yet
    second = s.schedule()
    assert second.batch == [(a, 4)]
    assert s.advance(second.batch) == [a]
    assert a.num_computed_tokens == 12
    assert s.block_manager.num_free_blocks == 8 - 3


def test_a_swap_preemption_is_in_the_plan_and_its_copies_come_back_in():
    s = scheduler(num_blocks=3, num_cpu_blocks=4, preemption_mode="swap")
    low = seq(8, priority=2)
    s.add(low)
    assert s.advance(s.schedule().batch) == [low]
    low.token_ids.append(9)  # its first output token, as the engine appends it
    held = sorted(low.block_table)
    high = seq(8, priority=0, first=100)
    s.add(high)
    plan = s.schedule()  # the interactive request takes the batch request's blocks
    assert plan.preempted == [low]
    assert sorted(d for d, _ in plan.swap_out) == held
    assert plan.batch == [(high, 8)]
    assert plan.swap_in == []
    s.advance(plan.batch)
    s.finish(high, "stop")
    back = s.schedule()
    assert back.batch == [(low, 1)]  # its prompt's cache came back: only its first output token left to compute
    assert sorted(h for h, _ in back.swap_in) == sorted(h for _, h in plan.swap_out)
    assert back.preempted == []
