"""The paged KV cache's bookkeeping: fixed-size blocks, ref counts, and automatic prefix caching.

A full block is identified by a hash chained over every token before it (and the request's cache salt, so
tenants never share blocks beyond an operator-marked public prefix), so equal hashes mean equal prefixes. Freed blocks keep their contents and hash and sit in an LRU queue: a later request with the same
prefix takes them back (a hit); allocation reuses the least recently freed block, evicting its hash.

Host-memory blocks hold the caches of sequences preempted by swap. Swapping out frees the device blocks
(their contents and hashes stay, so the prefix cache may still hit them); swapping in takes fresh ones.
"""
from __future__ import annotations

from collections import OrderedDict

from backends.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, num_cpu_blocks: int = 0) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU first
        self.cached: dict[int, int] = {}  # hash -> block id
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found
        self.free_cpu_blocks = list(range(num_cpu_blocks))
        self.swapped_in_cpu_blocks: list[int] = []  # read by this step's swap-in copies: free from the next step

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / len(self.blocks)

    def match_prefix(self, seq: Sequence) -> int:
        """On admission: take every cached block of the longest cached prefix, always leaving one token to compute.

        Returns the number of tokens found."""
        if not self.enable_prefix_caching:
            return 0
        h = None
        for i in range((len(seq) - 1) // self.block_size):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            h = self.block_hash(seq, i, h, tokens)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            self._take(block_id)
            seq.block_table.append(block_id)
        seq.num_hashed_blocks = len(seq.block_table)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def block_hash(self, seq: Sequence, i: int, prev: int | None, tokens: tuple[int, ...]) -> int:
        """Block i's key, chained over every block before it. Blocks wholly inside the operator's public prefix
        hash unsalted, so all tenants share them; every later block carries the request's salt, so a tenant can
        never hit, and so never detect, another tenant's prompt."""
        salt = seq.cache_salt if (i + 1) * self.block_size > seq.public_prefix_len else None
        return hash((prev, salt, tokens))

    def record_prefix_query(self, num_tokens: int, num_hits: int) -> None:
        self.prefix_queries += num_tokens
        self.prefix_hits += num_hits

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give seq slots for its next num_new_tokens tokens."""
        for _ in range(self.blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._allocate())

    def can_swap_out(self, seq: Sequence) -> bool:
        return len(seq.block_table) <= len(self.free_cpu_blocks)

    def swap_out(self, seq: Sequence) -> list[tuple[int, int]]:
        """Move seq's cache to host blocks; returns the (device, host) block copies to make."""
        host = [self.free_cpu_blocks.pop() for _ in seq.block_table]
        copies = list(zip(seq.block_table, host))
        self.free(seq)
        seq.cpu_block_table = host
        return copies

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]]:
        """Give swapped-out seq device blocks again; returns the (host, device) block copies to make."""
        host, seq.cpu_block_table = seq.cpu_block_table, []
        seq.block_table = [self._allocate() for _ in host]
        self.swapped_in_cpu_blocks += host
        return list(zip(host, seq.block_table))

    def release_swapped_in(self) -> None:
        self.free_cpu_blocks += self.swapped_in_cpu_blocks
        self.swapped_in_cpu_blocks = []

    def commit(self, seq: Sequence) -> None:
        """Register seq's newly completed full blocks (all tokens computed) in the prefix cache.

        Only blocks of tokens already in seq count: accepted speculative tokens, computed but appended one by
        one afterwards, are registered at the next commit."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens, len(seq)) // bs
        h = self.blocks[seq.block_table[seq.num_hashed_blocks - 1]].hash if seq.num_hashed_blocks else None
        for i in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = block.hash = self.block_hash(seq, i, h, block.token_ids)
            self.cached.setdefault(h, block.block_id)
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        # Tail blocks go to the LRU queue first, so they are evicted before the shared prefix they extend.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
        self.free_cpu_blocks += seq.cpu_block_table
        seq.cpu_block_table = []

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Roll seq back to its first num_tokens tokens (e.g. rejected speculative tokens), freeing trailing blocks."""
        keep = -(-num_tokens // self.block_size)
        tail, seq.block_table = seq.block_table[keep:], seq.block_table[:keep]
        for block_id in reversed(tail):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
        if len(seq.block_table) > num_tokens // self.block_size:  # the kept partial block will be written again
            self._evict(seq.block_table[-1])
        del seq.token_ids[num_tokens:]
        seq.num_computed_tokens = min(seq.num_computed_tokens, num_tokens)
        seq.num_hashed_blocks = min(seq.num_hashed_blocks, num_tokens // self.block_size)

    def _allocate(self) -> int:
        block_id = next(iter(self.free_blocks))
        self._evict(block_id)
        self._take(block_id)
        return block_id

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_blocks[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids = None, ()
