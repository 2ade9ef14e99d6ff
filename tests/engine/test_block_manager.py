"""The paged cache's bookkeeping: hash-chained prefix reuse, ref counts, LRU eviction, rollback."""
from __future__ import annotations

from backends.base import SamplingParams
from backends.engine.block_manager import BlockManager
from backends.engine.detokenizer import IncrementalDetokenizer
from backends.engine.sequence import Sequence


def admit(bm: BlockManager, tokens: list[int]) -> Sequence:
    seq = Sequence("r", tokens, SamplingParams())
    hits = bm.match_prefix(seq)
    bm.record_prefix_query(len(seq), hits)
    bm.append(seq, seq.num_uncomputed_tokens)
    seq.num_computed_tokens = len(seq)
    bm.commit(seq)
    return seq


def test_shared_prefix_blocks_are_shared_and_ref_counted():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = admit(bm, list(range(10)))  # blocks: [0..3] [4..7] partial
    b = admit(bm, list(range(8)) + [99, 98, 97])
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert (bm.prefix_queries, bm.prefix_hits) == (21, 8)
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    assert bm.num_free_blocks == 8 - 3


def test_a_different_earlier_block_breaks_the_chain():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    other = admit(bm, [0, 2, 3, 4, 5, 6, 7, 8, 9])  # same second block, different first: no hit
    assert other.num_computed_tokens == 9 and bm.prefix_hits == 0


def test_one_token_is_always_left_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.free(admit(bm, list(range(8))))
    again = Sequence("r", list(range(8)), SamplingParams())
    assert bm.match_prefix(again) == 4  # the second block holds the last token, whose logits we need


def test_least_recently_freed_cached_block_is_evicted_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    old = admit(bm, [1, 2, 3])  # one full, cached block + one partial
    new = admit(bm, [5, 6, 7])
    bm.free(old)
    bm.free(new)
    admit(bm, [9, 9, 9, 9, 9])  # needs 3 of the 4 blocks: the least recently freed go, old's cached one among them
    assert bm.match_prefix(Sequence("r", [1, 2, 0], SamplingParams())) == 0
    assert bm.match_prefix(Sequence("r", [5, 6, 0], SamplingParams())) == 2  # freed later, so it survived


def test_truncate_frees_trailing_blocks_and_forgets_the_partial_ones_hash():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = admit(bm, list(range(12)))
    assert len(seq.block_table) == 3 and seq.num_hashed_blocks == 3
    bm.truncate(seq, 6)
    assert len(seq.block_table) == 2 and seq.token_ids == list(range(6)) and seq.num_computed_tokens == 6
    assert bm.blocks[seq.block_table[1]].hash is None and seq.num_hashed_blocks == 1
    assert bm.num_free_blocks == 6


def test_detokenizer_never_splits_a_character(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "héllo wörld ✓ 渡し守"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [], [])
    pieces = []
    for t in ids:
        detok.add(t)
        pieces.append(detok.take_delta(finished=False))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_detokenizer_holds_back_a_possible_stop_string(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    detok = IncrementalDetokenizer(tok, [], ["STOP"])
    emitted = ""
    for t in tok.encode("go ST then STOP more", add_special_tokens=False):
        if detok.add(t):
            emitted += detok.take_delta(finished=True)
            break
        emitted += detok.take_delta(finished=False)
    assert emitted == "go ST then "
