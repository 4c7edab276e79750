"""Selectors: the conformance kit for each, and their behaviour (running top-k, stream budget, shares)."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from activelab.errors import UserError
from activelab.protocol import Env
from activelab.strategies.selectors import (
    Proportional,
    StreamThreshold,
    Subsample,
    TopK,
    largest_remainder,
    top_k_indices,
)
from activelab.testing import SelectorConformance, make_context

torch.set_num_threads(1)
ENV = Env()


class TestTopKConformance(SelectorConformance):
    covers = ("core", "selector", "topk")

    def make_selector(self):
        return TopK(TopK.Config(), ENV)


class TestSubsampleConformance(SelectorConformance):
    covers = ("core", "selector", "subsample")

    def make_selector(self):
        return Subsample(Subsample.Config(size=15), ENV)


class TestStreamConformance(SelectorConformance):
    covers = ("core", "selector", "stream")

    def make_selector(self):
        return StreamThreshold(StreamThreshold.Config(threshold=0.3), ENV)


class TestProportionalConformance(SelectorConformance):
    covers = ("core", "selector", "proportional")

    def make_selector(self):
        return Proportional(Proportional.Config(floor=0.01), ENV)


def chunked(values, size):
    for start in range(0, len(values), size):
        yield values[start:start + size]


ITEMS = [f"i{n}" for n in range(200)]


# ------------------------------------------------------------------------------------------ top-k
@pytest.mark.parametrize("k", [1, 7, 50, 199, 200, 500])
def test_running_top_k_equals_a_full_sort(k):
    rng = np.random.default_rng(k)
    scores = np.round(rng.random(200), 1)                       # many ties: order must be by candidate index
    want = np.argsort(-scores, kind="stable")[:k]
    np.testing.assert_array_equal(top_k_indices(chunked(scores, 3), k, 200), want)
    chosen = TopK().select(ITEMS, chunked(scores, 3), k, make_context())
    assert chosen == [ITEMS[i] for i in want]


def test_top_k_ranks_nan_last_and_checks_the_count():
    assert list(top_k_indices(np.array([np.nan, 0.1, -5.0]), 3, 3)) == [1, 2, 0]
    with pytest.raises(ValueError, match="2 scores for 3"):
        top_k_indices(np.array([1.0, 2.0]), 1, 3)


def test_top_k_without_scores_is_seeded_random():
    a = TopK().select(ITEMS, None, 10, make_context(seed=1))
    assert a == TopK().select(ITEMS, None, 10, make_context(seed=1))
    assert a != TopK().select(ITEMS, None, 10, make_context(seed=2))
    assert len(set(a)) == 10 and a != ITEMS[:10]


def test_subsample_scores_a_random_subset_in_pool_order():
    sel = Subsample(Subsample.Config(size=30))
    subset = sel.candidates(ITEMS, make_context(round=1))
    assert len(subset) == 30 and subset == sorted(subset, key=ITEMS.index)
    assert subset != sel.candidates(ITEMS, make_context(round=2))
    assert sel.candidates(ITEMS[:20], make_context()) == ITEMS[:20]
    scores = np.arange(30.0)
    assert sel.select(subset, scores, 3, make_context()) == subset[::-1][:3]
    assert Subsample.Config().size == 10000


# ------------------------------------------------------------------------------------------ stream
class Counting:
    """A score stream that counts how many chunks were read."""

    def __init__(self, values, size):
        self.values, self.size, self.read, self.closed = values, size, 0, False

    def __iter__(self):
        try:
            for chunk in chunked(self.values, self.size):
                self.read += 1
                yield chunk
        finally:
            self.closed = True


def test_stream_stops_reading_scores_once_the_budget_is_spent():
    sel = StreamThreshold(StreamThreshold.Config(threshold=0.5))
    ctx = make_context()
    arrivals = sel.candidates(ITEMS, ctx)
    assert sorted(arrivals) == sorted(ITEMS) and arrivals != ITEMS
    assert arrivals == sel.candidates(ITEMS, ctx)
    values = np.zeros(200)
    values[[3, 8, 9, 12, 40, 41]] = [0.9, 0.6, 0.5, 0.51, 1.0, 1.0]   # 0.5 is not above the threshold
    stream = Counting(values, 5)
    gen = iter(stream)
    chosen = sel.select(arrivals, gen, 3, ctx)
    assert chosen == [arrivals[3], arrivals[8], arrivals[12]]          # first three above 0.5, in arrival order
    assert stream.read == 3 and stream.closed                          # items after 15 were never scored


def test_stream_threshold_and_budget():
    values = np.linspace(0, 1, 200)
    ctx = make_context()
    sel = StreamThreshold(StreamThreshold.Config(threshold=0.9))
    chosen = sel.select(ITEMS, chunked(values, 16), 100, ctx)
    assert chosen == [ITEMS[i] for i in np.flatnonzero(values > 0.9)]   # budget not reached: all above it
    capped = StreamThreshold(StreamThreshold.Config(threshold=0.9, budget=4))
    assert capped.select(ITEMS, chunked(values, 16), 100, ctx) == chosen[:4]
    assert capped.select(ITEMS, chunked(values, 16), 2, ctx) == chosen[:2]
    assert sel.select(ITEMS, None, 3, ctx) == ITEMS[:3]                 # uninformed: the first arrivals
    with pytest.raises(ValidationError):
        StreamThreshold.Config()                                         # threshold is required


def test_stream_with_zero_budget_reads_nothing():
    stream = Counting(np.ones(10), 2)
    assert StreamThreshold(StreamThreshold.Config(threshold=0.0)).select(ITEMS[:10], iter(stream), 0,
                                                                         make_context()) == []
    assert stream.read == 0


# ------------------------------------------------------------------------------------------ proportional
def test_largest_remainder_by_hand():
    assert list(largest_remainder(np.array([0.5, 0.3, 0.2]), 7)) == [4, 2, 1]   # 3.5, 2.1, 1.4
    assert list(largest_remainder(np.ones(3), 10)) == [4, 3, 3]                 # tie to the earlier
    assert list(largest_remainder(np.array([1.0, 0.0]), 0)) == [0, 0]


def test_proportional_shares_sum_to_k_and_follow_the_scores():
    levels = ["lvl1", "lvl2", "lvl3", "lvl4", "lvl5"]
    inv_psnr = 1.0 / np.array([34.0, 30.0, 27.0, 25.0, 23.0])
    sel = Proportional()
    assert sel.allows_repeats
    chosen = sel.select(levels, chunked(inv_psnr, 2), 100, make_context())
    counts = [chosen.count(level) for level in levels]
    assert sum(counts) == 100 and counts == sorted(counts)              # harder levels (lower PSNR) get more
    assert counts == list(largest_remainder(inv_psnr, 100))
    assert chosen == [lvl for lvl, c in zip(levels, counts) for _ in range(c)]
    assert [sel.select(levels, None, 100, make_context()).count(lvl) for lvl in levels] == [20] * 5


def test_proportional_floor_and_bad_scores():
    sel = Proportional(Proportional.Config(floor=0.1))
    chosen = sel.select(["a", "b", "c"], np.array([1.0, 0.0, 0.0]), 10, make_context())
    assert [chosen.count(x) for x in "abc"] == [8, 1, 1]
    with pytest.raises(UserError, match="floor"):
        Proportional(Proportional.Config(floor=0.5)).select(["a", "b", "c"], None, 10, make_context())
    with pytest.raises(ValueError, match="non-negative"):
        Proportional().select(["a", "b"], np.array([1.0, -1.0]), 10, make_context())
