"""Candidates travel as row positions; selectors return the chosen positions and scores; tasks predict by position.

These are the hot-path changes of the query step: no per-item id lookup between the pool and ``task.predict``, and
the loop never keeps the scores of every candidate."""
from __future__ import annotations

import numpy as np
import pytest

from activelab.protocol import PROBS, Candidates, Context, Picks
from activelab.strategies.blocks import MeasureBlock, joined, reblock
from activelab.strategies.selectors import Proportional, StreamThreshold, Subsample, TopK
from activelab.strategies.uncertainty import Entropy, entropy
from activelab.torchkit import ItemIndex, row_blocks


def ctx(round: int = 1, budget: int = 3) -> Context:
    return Context(round=round, seed=7, budget=budget, labels={})


def test_candidates_are_a_sequence_of_ids_backed_by_rows():
    universe = [f"item{i}" for i in range(10)]
    c = Candidates(universe, [2, 5, 7])
    assert len(c) == 3 and list(c) == ["item2", "item5", "item7"] and c[1] == "item5" and c[-1] == "item7"
    assert c == ["item2", "item5", "item7"] and c[1:].rows.tolist() == [5, 7]
    assert c.take([2, 0]).rows.tolist() == [7, 2] and "item5" in c and "item3" not in c
    assert Candidates(universe).rows.tolist() == list(range(10))


def test_item_index_reads_rows_of_its_own_pool_without_lookups():
    index = ItemIndex(f"x{i}" for i in range(6))
    universe = [f"x{i}" for i in range(6)]
    c = Candidates(universe, [4, 1])
    assert index.positions(c) is c.rows                              # no lookup: the rows themselves
    assert index.positions(c) is c.rows                              # and the universe is checked once
    other = Candidates([f"x{i}" for i in reversed(range(6))], [4, 1])   # another order: looked up by id
    assert index.positions(other).tolist() == [1, 4]
    with pytest.raises(KeyError, match="unknown item"):
        index.positions(Candidates(["nope"], [0]))


def test_row_blocks_are_views_where_consecutive():
    blocks = list(row_blocks(np.array([3, 4, 5, 9, 8, 10]), 3))
    assert blocks[0] == slice(3, 6) and blocks[1].tolist() == [9, 8, 10]
    assert list(row_blocks(np.array([7]), 4)) == [slice(7, 8)]
    assert list(row_blocks(np.zeros(0, dtype=np.int64), 4)) == []
    for gappy in ([3, 5, 4], [3, 3, 5], [5, 4, 3]):     # first and last rows as in a run, but not a run
        (block,) = row_blocks(np.array(gappy), 3)
        assert isinstance(block, np.ndarray) and block.tolist() == gappy


def test_the_pools_candidates_are_cut_into_views_without_reading_their_rows(monkeypatch):
    from activelab.torchkit import items

    universe = [f"x{i}" for i in range(10)]
    index = ItemIndex(universe)
    pool_like = Candidates(universe, np.array([0, 1, 2, 3, 5, 7, 8]), increasing=True)   # rows 4 and 6 labelled
    unknown = Candidates(universe, np.array([0, 1, 2, 3, 5, 7, 8]))                     # same rows, not vouched
    assert Candidates(universe).increasing and not unknown.increasing
    assert pool_like[1:].increasing and not pool_like[::-1].increasing and not pool_like.take([0, 1]).increasing
    reads = []
    monkeypatch.setattr(items, "_consecutive", lambda block: reads.append(len(block)) or True)
    blocks = list(index.blocks(pool_like, 4))
    assert blocks[0] == slice(0, 4) and blocks[1].tolist() == [5, 7, 8] and reads == []
    list(index.blocks(unknown, 4))
    assert reads == [4]                                                  # an unvouched run is read to check it
    reads.clear()
    other_order = Candidates(list(reversed(universe)), np.array([0, 1, 2]), increasing=True)
    assert list(index.blocks(other_order, 4))[0].tolist() == [9, 8, 7] and reads == []   # looked up by id


def test_reblock_joins_small_chunks_and_bounds_bytes():
    parts = [np.full((3, 2), i, dtype=np.float32) for i in range(5)]
    out = list(reblock(parts, rows=7))
    assert [len(b) for b in out] == [9, 6]
    assert np.concatenate(out)[:, 0].tolist() == sum([[i] * 3 for i in range(5)], [])
    mc = [np.ones((4, 3, 2), dtype=np.float32)] * 3                 # (T, B, C): items on axis 1
    assert [b.shape[1] for b in reblock(mc, axis=1, rows=5)] == [6, 3]
    big = [np.ones((10, 100), dtype=np.float32)] * 2                  # 400 bytes per item, 1000 bytes allowed
    assert [len(b) for b in reblock(big, rows=64, max_bytes=1000)] == [10, 10]


class ArrayTask:
    outputs = {PROBS}
    primary_metric = "accuracy"

    def __init__(self, probs: np.ndarray, chunk: int = 4):
        self.probs, self.chunk = probs, chunk
        self.items = ItemIndex(str(i) for i in range(len(probs)))
        self.asked: list[np.ndarray] = []

    def pool_ids(self):
        return list(self.items.ids)

    def predict(self, ids, want, mc=None):
        rows = self.items.positions(ids)
        self.asked.append(rows)
        for block in row_blocks(rows, self.chunk):
            yield {PROBS: self.probs[block]}


def test_entropy_top_k_equals_the_reference_and_returns_positions_and_scores():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=50).astype(np.float32)
    task = ArrayTask(probs)
    universe = task.pool_ids()
    candidates = Candidates(universe, np.arange(3, 50, 2))            # every other item still unlabelled
    stream = Entropy().score(task, candidates, ctx())
    picks = TopK().select(candidates, stream, 4, ctx())
    reference = entropy(probs[candidates.rows])
    order = np.lexsort((np.arange(len(reference)), -reference))[:4]
    assert isinstance(picks, Picks) and picks.positions.tolist() == order.tolist()
    assert list(picks) == [universe[candidates.rows[i]] for i in order]
    np.testing.assert_allclose(picks.scores, reference[order], rtol=1e-6)
    assert task.asked[0] is candidates.rows                           # the task got the positions, no ids


def test_scores_are_blocks_that_any_consumer_can_read():
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=9)
    task = ArrayTask(probs)
    blocks = list(Entropy().score(task, Candidates(task.pool_ids()), ctx()))
    assert all(isinstance(b, MeasureBlock) for b in blocks) and sum(len(b) for b in blocks) == 9
    np.testing.assert_allclose(np.concatenate([np.asarray(b) for b in blocks]), entropy(probs), rtol=1e-6)
    picks = StreamThreshold(StreamThreshold.Config(threshold=0.0)).select(
        Candidates(task.pool_ids()), Entropy().score(task, Candidates(task.pool_ids()), ctx()), 2, ctx())
    assert list(picks) == ["0", "1"] and picks.positions.tolist() == [0, 1]


def test_selectors_keep_candidates_as_positions():
    universe = [str(i) for i in range(100)]
    available = Candidates(universe, np.arange(0, 100, 3))
    sub = Subsample(Subsample.Config(size=5)).candidates(available, ctx())
    assert isinstance(sub, Candidates) and len(sub) == 5 and set(sub.rows.tolist()) <= set(available.rows.tolist())
    assert sub.rows.tolist() == sorted(sub.rows.tolist())
    stream = StreamThreshold(StreamThreshold.Config(threshold=0.5)).candidates(available, ctx())
    assert isinstance(stream, Candidates) and sorted(stream.rows.tolist()) == available.rows.tolist()
    assert TopK().candidates(available, ctx()) is available
    picks = Proportional().select(Candidates(["a", "b"]), np.array([1.0, 3.0]), 4, ctx())
    assert list(picks) == ["a", "b", "b", "b"] and picks.scores.tolist() == [1.0, 3.0, 3.0, 3.0]


def test_top_k_counts_the_scores():
    with pytest.raises(ValueError, match="3 scores for 4 candidates"):
        TopK().select(Candidates(list("abcd")), [np.zeros(3)], 2, ctx())


def test_top_k_joins_small_batches_into_large_blocks_and_streams_stay_lazy():
    probs = np.random.default_rng(2).dirichlet(np.ones(4), size=40)
    blocks = [MeasureBlock("entropy", probs[i:i + 3]) for i in range(0, 40, 3)]
    joined_blocks = list(joined(iter(blocks), rows=10))
    assert [len(b) for b in joined_blocks] == [12, 12, 12, 4]
    np.testing.assert_allclose(np.concatenate([np.asarray(b) for b in joined_blocks]), entropy(probs), rtol=1e-6)
    mixed = list(joined(iter([blocks[0], np.zeros(2), blocks[1], MeasureBlock("margin", probs[:3])]), rows=10))
    assert [type(b).__name__ for b in mixed] == ["MeasureBlock", "ndarray", "MeasureBlock", "MeasureBlock"]
    task = ArrayTask(probs, chunk=4)
    candidates = Candidates(task.pool_ids())
    seen = []

    def counted(stream):
        for chunk in stream:
            seen.append(len(chunk))
            yield chunk

    StreamThreshold(StreamThreshold.Config(threshold=0.0)).select(
        candidates, counted(Entropy().score(task, candidates, ctx())), 2, ctx())
    assert seen == [4]                                                # one task batch read, not the whole pool


@pytest.mark.parametrize("kind", ["least_confidence", "margin", "entropy", "bald"])
def test_torch_blocks_are_measured_with_torch_where_they_live(kind):
    """A task that keeps its probabilities on the accelerator yields tensors: measured there by torch (here on the
    CPU), the same numbers as the float64 reference, and ranked by TopK like any block."""
    import torch

    from activelab.strategies import uncertainty

    rng = np.random.default_rng(3)
    data = rng.dirichlet(np.ones(4), size=(5, 30) if kind == "bald" else 30)
    reference = getattr(uncertainty, kind)(data)
    block = MeasureBlock(kind, torch.as_tensor(data, dtype=torch.float32))
    assert not block.on_host
    np.testing.assert_allclose(np.asarray(block), reference, rtol=1e-5, atol=1e-6)
    picks = TopK().select(Candidates([str(i) for i in range(30)]), iter([block]), 5, ctx())
    assert picks.positions.tolist() == np.lexsort((np.arange(30), -np.asarray(block)))[:5].tolist()
