"""Pools over the label store: the classic pool, and the synthesis pool whose generators are never used up."""
import pytest

from activelab.errors import UserError
from activelab.pool import LabelPool, SynthesisPool, make_pool
from activelab.protocol import Label, Skip, Undo
from activelab.store import LabelStore


class Generators:
    """Just enough of a synthesis task: three generators; a label is a dict with a positive count."""

    query_type = "synthesis"

    def pool_ids(self):
        return ["easy", "mid", "hard"]

    def check_label(self, item_id, value):
        if not isinstance(value, dict) or int(value.get("count", 0)) < 1:
            raise ValueError("a synthesised label needs a positive count")
        return value


class Items(Generators):
    query_type = "pool"

    def pool_ids(self):
        return ["a", "b", "c"]

    def check_label(self, item_id, value):
        if value not in (0, 1):
            raise ValueError("classes are 0 and 1")
        return value


def test_synthesis_pool_generators_stay_candidates_and_counts_add_up(tmp_path):
    pool = make_pool(Generators(), LabelStore(tmp_path / "s.sqlite"))
    assert isinstance(pool, SynthesisPool)
    batch = ["easy", "easy", "hard"]  # 2 samples of easy, 1 of hard
    assert pool.outstanding(1, batch) == batch
    assert pool.apply(Label("easy@1", {"count": 2}), 1, batch) == "labelled"
    assert pool.outstanding(1, batch) == ["hard"]
    assert pool.apply(Skip("hard"), 1, batch) == "skipped"
    assert pool.outstanding(1, batch) == []
    assert pool.candidates() == ["easy", "mid", "hard"]          # never used up
    assert pool.n_labeled() == 2
    with pytest.raises(UserError, match="does not come from a generator"):
        pool.apply(Label("mid@1", {"count": 1}), 1, batch)
    with pytest.raises(UserError, match="positive count"):
        pool.apply(Label("hard@1", {"count": 0}), 1, batch)
    assert pool.apply(Undo("easy@1"), 1, batch) == "undone"
    assert pool.outstanding(1, batch) == ["easy", "easy"]


def test_label_pool_takes_labelled_items_out_and_refuses_strangers(tmp_path):
    pool = make_pool(Items(), LabelStore(tmp_path / "p.sqlite"))
    assert type(pool) is LabelPool
    batch = ["b", "c"]
    assert pool.apply(Label("b", 1), 0, batch) == "labelled"
    assert pool.apply(Label("b", 1), 0, batch) == "same"
    assert pool.candidates() == ["a", "c"] and pool.candidates().increasing   # rows in pool order, vouched
    with pytest.raises(UserError, match="not in round 0's batch"):
        pool.apply(Label("a", 0), 0, batch)
    with pytest.raises(UserError, match="classes are 0 and 1"):
        pool.apply(Label("c", 7), 0, batch)
    assert pool.outstanding(0, batch) == ["c"]
