"""``tabular_regression``: the core's conformance checks, then what is particular to regression."""
import math

import numpy as np
import pytest

from activelab.protocol import EMBEDDINGS, FEATURES, MC, PREDICTIONS, Env, rng_for
from activelab.testing import TaskConformance, make_context
from activelab_tabular.regression import PREDICTION, TabularRegression


def make_task(seed: int = 0, **params) -> TabularRegression:
    return TabularRegression(TabularRegression.Config(**params), Env(seed=seed, progress=False))


def some_labels(task, n: int) -> dict:
    ids = list(task.pool_ids())
    return {ids[i]: task.true_label(ids[i]) for i in rng_for(0, "some").permutation(len(ids))[:n]}


def predictions(task, ids, mc=None) -> np.ndarray:
    return np.concatenate([c[PREDICTION] for c in task.predict(ids, {PREDICTION}, mc)], axis=0 if mc is None else 1)


# ------------------------------------------------------------------------------------------- conformance
class TestDiabetesConformance(TaskConformance):
    """The kit's standard checks; ``wants`` adds this task's own output name to the ones the kit knows."""

    covers = ("tabular", "task", "tabular_regression")

    def make_task(self):
        return make_task(dataset="diabetes", epochs=30, chunk_size=16)

    def wants(self, task):
        return {PREDICTION, EMBEDDINGS}

    def garbage_labels(self):
        return [*super().garbage_labels(), True, float("nan"), float("inf"), "twelve", [1.0]]


class TestFriedmanConformance(TestDiabetesConformance):
    def make_task(self):
        return make_task(dataset="friedman1", epochs=30, chunk_size=64)


# ------------------------------------------------------------------------------------------- behaviour
def test_declares_what_reports_need():
    assert TabularRegression.primary_metric == "rmse"
    assert {"rmse", "mae"} <= TabularRegression.lower_is_better
    assert set(TabularRegression.lower_is_better) <= set(TabularRegression.metrics)
    assert {PREDICTION, EMBEDDINGS} <= TabularRegression.outputs


def test_learns_better_than_the_mean():
    task = make_task(dataset="diabetes", hidden=16, lr=0.003)
    task.fit(some_labels(task, 200), make_context(round=0))
    metrics = task.evaluate()
    baseline = float(np.std(task.table.test_y))      # the rmse of always predicting the test mean
    assert metrics["rmse"] < 0.85 * baseline
    assert metrics["mae"] < metrics["rmse"] and 0.2 < metrics["r2"] < 1


def test_predictions_are_in_the_targets_units():
    task = make_task(epochs=5)
    labels = some_labels(task, 30)
    task.fit(labels, make_context(round=0))
    mean = np.mean(predictions(task, list(task.pool_ids())))
    assert abs(mean - np.mean(list(labels.values()))) < 0.3 * np.std(list(labels.values()))


def test_labels_are_finite_numbers():
    task = make_task()
    item = task.pool_ids()[0]
    assert isinstance(task.true_label(item), float)
    assert task.check_label(item, 151) == 151.0
    assert task.check_label(item, " 151.5 ") == 151.5
    assert task.check_label(item, np.float32(2.5)) == 2.5
    for bad in (None, True, "nan", float("-inf"), "a lot"):
        with pytest.raises(ValueError):
            task.check_label(item, bad)
    with pytest.raises(KeyError):
        task.true_label("no such row")


def test_bootstrap_committee_disagrees_and_leaves_the_model_alone():
    task = make_task(epochs=30)
    labels = some_labels(task, 25)
    task.fit(labels, make_context(round=0))
    ids = list(task.pool_ids())[:50]
    before = predictions(task, ids)
    task.fit_bootstrap(labels, 3, seed=1)
    members = predictions(task, ids, MC(samples=3, mode="bootstrap"))
    assert members.shape == (3, 50) and not np.allclose(members[0], members[1])
    np.testing.assert_array_equal(predictions(task, ids), before)
    task.fit(labels, make_context(round=1))
    assert task.members == [], "a new fit must drop the stale committee"


def test_features_are_the_standardised_inputs():
    task = make_task(chunk_size=16)
    ids = list(task.pool_ids())[:40]
    features = np.concatenate([c[FEATURES] for c in task.predict(ids, {FEATURES}, None)])
    np.testing.assert_array_equal(features, task.x[:40].numpy())
    assert PREDICTION == PREDICTIONS == "predictions"


def test_fit_with_a_single_label():
    task = make_task(epochs=5)
    stats = task.fit(some_labels(task, 1), make_context(round=0))
    assert stats["n_train"] == 1 and math.isfinite(stats["train_rmse"])
    assert np.all(np.isfinite(predictions(task, task.pool_ids())))


def test_fingerprint_differs_between_tables():
    assert make_task(dataset="diabetes").data_fingerprint() != make_task(dataset="friedman1").data_fingerprint()
