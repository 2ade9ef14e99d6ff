"""Tenant isolation of the prefix cache: blocks are keyed by the request's cache salt (as vLLM's `cache_salt`),
except those inside a prefix the operator marked public."""
from __future__ import annotations

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from backends.engine.block_manager import BlockManager
from backends.engine.sequence import Sequence

SECRET = list(range(10, 30))  # 20 tokens: 5 full blocks of 4


def admit(bm: BlockManager, tokens: list[int], salt: str | None = None, public: int = 0) -> tuple[Sequence, int]:
    seq = Sequence("r", tokens, SamplingParams(), cache_salt=salt, public_prefix_len=public)
    hits = bm.match_prefix(seq)
    bm.append(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = len(seq)
    bm.commit(seq)
    bm.free(seq)
    return seq, hits


def test_another_salt_never_hits_but_the_same_salt_does():
    bm = BlockManager(num_blocks=32, block_size=4)
    admit(bm, SECRET, salt="tenant-b")
    assert admit(bm, SECRET, salt="tenant-a")[1] == 0  # the oracle: A's guess of B's prompt finds nothing
    assert admit(bm, SECRET, salt=None)[1] == 0  # nor does an unsalted request
    assert admit(bm, SECRET, salt="tenant-b")[1] == 16  # B's own next turn reuses every full block but the last


def test_public_prefix_blocks_are_shared_and_the_rest_stay_private():
    bm = BlockManager(num_blocks=32, block_size=4)
    public = SECRET[:10]  # 2 full blocks + 2 tokens: the straddling third block holds private tokens too
    admit(bm, public + [7, 7, 7, 7, 7, 7, 7, 7], salt="tenant-b", public=len(public))
    _, hits = admit(bm, public + [7, 7, 7, 7, 7, 7, 7, 7], salt="tenant-a", public=len(public))
    assert hits == 8  # only the blocks wholly inside the public prefix
    _, hits = admit(bm, public + [7, 7, 7, 7, 7, 7, 7, 7], salt="tenant-b", public=len(public))
    assert hits == 16  # B still reuses its own private blocks after the public ones


def test_engine_reports_cached_tokens_only_within_one_salt(tiny_model):
    engine = LLMEngine(EngineConfig(model=str(tiny_model), block_size=4, num_kv_blocks=64, dtype="float32"))
    greedy = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)

    def run(salt: str) -> tuple[list[int], int]:
        engine.add_request(salt + str(len(engine.seqs)), SECRET, greedy, cache_salt=salt)
        tokens, cached = [], 0
        while engine.has_unfinished():
            for out in engine.step():
                tokens += out.token_ids
                cached = out.cached_tokens
        return tokens, cached

    b_tokens, _ = run("tenant-b")
    a_tokens, a_cached = run("tenant-a")
    b_again, b_cached = run("tenant-b")
    assert (a_cached, b_cached) == (0, 16)
    assert a_tokens == b_tokens == b_again  # salting changes what is shared, never what is computed
