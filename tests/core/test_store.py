"""The label store: one label per item, idempotent re-import, durable across connections."""
import sqlite3

import pytest

from activelab.store import LabelConflict, LabelStore


def test_label_is_durable_and_visible_to_a_new_connection(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.add_label("7", 3, round=0, annotator="ann")
    # A second, independent connection sees the committed label without any close/flush by the first.
    other = sqlite3.connect(tmp_path / "labels.sqlite")
    assert other.execute("SELECT item_id, value FROM labels").fetchall() == [("7", "3")]
    other.close()
    store.close()


def test_same_label_twice_is_a_no_op_and_a_different_one_is_refused(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.add_label("a", {"text": "hi"}, 0, "x") is True
    assert store.add_label("a", {"text": "hi"}, 1, "y") is False
    with pytest.raises(LabelConflict, match="already has label"):
        store.add_label("a", {"text": "bye"}, 1, "y")
    assert store.labels() == {"a": {"text": "hi"}}
    assert store.count_labels() == 1


def test_undo_only_withdraws_labels_of_the_given_round(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_label("old", 1, 0, "x")
    store.add_label("new", 2, 1, "x")
    assert store.remove_label("old", round=1) is False
    assert store.remove_label("new", round=1) is True
    assert store.labels() == {"old": 1}


def test_batches_skips_metrics_and_state_round_trip(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path)
    store.open_batch(2, ["b", "a"], [0.5, 0.25])
    store.skip(2, "a")
    store.add_metrics(0, {"round": 0, "accuracy": 0.5})
    store.set_state("status", "paused")
    store.close()
    again = LabelStore(path)
    assert again.batch(2) == (["b", "a"], [0.5, 0.25])
    assert again.batch(3) is None
    assert again.skipped(2) == {"a"}
    assert again.metrics() == [{"round": 0, "accuracy": 0.5}]
    assert again.get_state("status") == "paused"
    # Labelling a skipped item clears its skip.
    again.add_label("a", 1, 2, "x")
    assert again.skipped(2) == set()
    with pytest.raises(sqlite3.IntegrityError):
        again.open_batch(2, ["c"], None)  # a round's query is written once
