"""``tabular_classification``: the core's conformance checks, then what is particular to tables."""
import numpy as np
import pytest
from pydantic import ValidationError

from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, MC, PROBS, Env, rng_for
from activelab.testing import TaskConformance, make_context
from activelab_tabular.classification import TabularClassification


def make_task(seed: int = 0, **params) -> TabularClassification:
    return TabularClassification(TabularClassification.Config(**params), Env(seed=seed, progress=False))


def all_labels(task):
    return {i: task.true_label(i) for i in task.pool_ids()}


def spread_labels(task, n: int) -> dict:
    """``n`` labels at random positions (the pool is in dataset order, which for wine and iris is class order)."""
    ids = list(task.pool_ids())
    return {ids[i]: task.true_label(ids[i]) for i in rng_for(0, "spread").permutation(len(ids))[:n]}


# ------------------------------------------------------------------------------------------- conformance
class TestWineConformance(TaskConformance):
    """Every standard check of the kit (chunks align with ids, MC committees have a leading axis and are
    reproducible, fit is deterministic, a checkpoint round-trips exactly, labels, describe, hooks), inherited."""

    covers = ("tabular", "task", "tabular_classification")   # the manifest entry these checks are for

    def make_task(self):
        return make_task(dataset="wine", epochs=30, chunk_size=16)   # small chunks: chunking is exercised


class TestBreastCancerConformance(TaskConformance):
    """The same checks on a two-class table."""

    covers = ("tabular", "task", "tabular_classification")

    def make_task(self):
        return make_task(dataset="breast_cancer", epochs=30, chunk_size=16)


# ------------------------------------------------------------------------------------------- behaviour
def test_learns_the_table():
    task = make_task(dataset="wine")
    untrained = task.evaluate()["accuracy"]
    task.fit(all_labels(task), make_context(round=0))
    assert task.evaluate()["accuracy"] >= 0.9 > untrained


@pytest.mark.parametrize("dataset", ["wine", "breast_cancer", "iris", "digits"])
def test_every_dataset_loads_standardised_and_split(dataset):
    task = make_task(dataset=dataset)
    x = task.table.x
    assert np.allclose(x.mean(axis=0), 0, atol=1e-4)
    spread = x.std(axis=0)
    assert np.allclose(spread[spread > 0], 1, atol=1e-3)
    n_test = len(task.table.test_y)
    assert abs(n_test / (n_test + len(x)) - 0.3) < 0.01
    assert all(i.isdigit() for i in task.table.ids)                   # ids are the dataset's row numbers
    assert len(task.classes) == len(set(task.table.y.tolist()))


def test_split_depends_on_split_seed_not_on_the_run_seed():
    assert make_task(seed=0).pool_ids() == make_task(seed=5).pool_ids()
    assert make_task(split_seed=0).pool_ids() != make_task(split_seed=1).pool_ids()


def test_fit_is_seeded_by_the_round():
    task = make_task()
    labels = spread_labels(task, 12)
    ids = list(task.pool_ids())[:30]
    task.fit(labels, make_context(round=1))
    first = np.concatenate([c[PROBS] for c in task.predict(ids, {PROBS})])
    task.fit(labels, make_context(round=2))
    second = np.concatenate([c[PROBS] for c in task.predict(ids, {PROBS})])
    assert not np.array_equal(first, second)


def test_label_order_does_not_matter():
    a, b = make_task(), make_task()
    labels = spread_labels(a, 15)
    a.fit(labels, make_context(round=0))
    b.fit(dict(reversed(list(labels.items()))), make_context(round=0))
    ids = list(a.pool_ids())
    np.testing.assert_array_equal(next(a.predict(ids, {PROBS}))[PROBS], next(b.predict(ids, {PROBS}))[PROBS])


def test_mc_dropout_members_differ_and_batchwise_masks_ignore_chunking():
    small, large = make_task(chunk_size=7), make_task(chunk_size=500)
    labels = spread_labels(small, 20)
    for task in (small, large):
        task.fit(labels, make_context(round=0))
    ids = list(small.pool_ids())[:40]
    out = np.concatenate([c[PROBS] for c in small.predict(ids, {PROBS}, MC(samples=4, mode="dropout", seed=1))], axis=1)
    assert out.shape == (4, 40, 3)
    assert not np.allclose(out[0], out[1]), "MC dropout passes are identical: dropout is not applied"
    # batchwise: member t is one fixed sub-network, whatever chunk an item falls in
    mc = MC(samples=3, mode="batchwise", seed=2)
    a = np.concatenate([c[PROBS] for c in small.predict(ids, {PROBS}, mc)], axis=1)
    b = np.concatenate([c[PROBS] for c in large.predict(ids, {PROBS}, mc)], axis=1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bootstrap_members_leave_the_model_alone_and_bad_requests_fail():
    task = make_task(epochs=20)
    labels = spread_labels(task, 20)
    task.fit(labels, make_context(round=0))
    ids = list(task.pool_ids())[:20]
    before = next(task.predict(ids, {PROBS, EMBEDDINGS}))
    with pytest.raises(ValueError, match="fit_bootstrap"):
        task.predict(ids, {PROBS}, MC(samples=2, mode="bootstrap"))
    task.fit_bootstrap(labels, 2, seed=3)
    members = next(task.predict(ids, {PROBS}, MC(samples=2, mode="bootstrap")))[PROBS]
    assert not np.allclose(members[0], members[1])
    after = next(task.predict(ids, {PROBS, EMBEDDINGS}))
    np.testing.assert_array_equal(before[PROBS], after[PROBS])
    with pytest.raises(ValueError, match="unknown MC mode"):
        task.predict(ids, {PROBS}, MC(samples=2, mode="telepathy"))


def test_labels_by_index_or_name():
    task = make_task(dataset="breast_cancer")
    item = task.pool_ids()[0]
    assert task.classes == ["malignant", "benign"]
    assert task.check_label(item, "benign") == 1 == task.check_label(item, np.int64(1))
    for bad in (2, -1, True, "1", "Benign", 1.0):
        with pytest.raises(ValueError):
            task.check_label(item, bad)
    with pytest.raises(ValueError, match="unknown item"):
        task.check_label("no such row", 0)
    for n in range(20):
        assert task.corrupt_label(0, rng_for(n, "c")) == 1
    assert task.label_schema() == {"type": "choices", "choices": ["malignant", "benign"]}


def test_describe_shows_the_raw_features():
    task = make_task()
    item = task.pool_ids()[3]
    shown = task.describe(item)
    assert list(shown["features"]) == task.table.feature_names
    assert shown["features"]["alcohol"] == pytest.approx(float(task.table.raw[3][0]), abs=1e-4)


def test_fingerprint_pins_the_data():
    a = make_task().data_fingerprint()
    assert a == make_task(seed=9).data_fingerprint() and len(a) == 64
    assert a != make_task(split_seed=1).data_fingerprint()
    assert a != make_task(dataset="iris").data_fingerprint()


def test_config_is_strict():
    with pytest.raises(ValidationError):
        TabularClassification.Config(dataset="mnist")
    with pytest.raises(ValidationError):
        TabularClassification.Config(hiden=8)
    with pytest.raises(ValidationError):
        TabularClassification.Config(test_fraction=1.0)


def test_checkpoint_of_another_dataset_is_refused():
    state = make_task(dataset="iris").state_dict()
    with pytest.raises(UserError, match="iris"):
        make_task(dataset="wine").load_state_dict(state)
