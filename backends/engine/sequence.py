"""One request's life inside the engine."""
from __future__ import annotations

import enum
import itertools
import time

import torch

from backends.base import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    _ids = itertools.count()

    def __init__(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 1,
        cache_salt: str | None = None, public_prefix_len: int = 0, weight: int = 1,
    ) -> None:
        self.seq_id = next(Sequence._ids)
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.priority = priority
        self.cache_salt = cache_salt  # its prefix-cache partition; see BlockManager.block_hash
        self.public_prefix_len = public_prefix_len
        self.weight = weight  # its tenant's weight in the fair share of seats within its class (Scheduler)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose keys/values are in the cache
        self.num_cached_tokens: int | None = None  # prompt tokens the prefix cache served on first admission
        self.block_table: list[int] = []
        self.cpu_block_table: list[int] = []  # host-memory blocks holding its cache while swapped out
        self.num_hashed_blocks = 0  # leading full blocks already registered in the prefix cache
        self.finish_reason: str | None = None
        self.matcher = None  # its grammar's xgrammar GrammarMatcher (structured output), else None
        self.generator = torch.Generator()
        if params.seed is None:
            self.generator.seed()  # fresh entropy, leaving torch's global generator alone
        else:
            self.generator.manual_seed(params.seed)
        self.arrival_time = time.perf_counter()
        self.class_since = self.arrival_time  # when it entered its current priority class (for aging)
        self.last_token_time: float | None = None
        self.gpu_seconds = 0.0  # device time attributed to it, step by step (LLMEngine._charge)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.seq_id)
