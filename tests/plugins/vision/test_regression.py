"""The vision plugin's regression task (``rotation``): conformance, the targets, learning, committees, checkpoints,
and the core's regression scorers on it."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from activelab.errors import UserError
from activelab.plugins.vision.regression import RotationTask, rotate
from activelab.protocol import EMBEDDINGS, FEATURES, MC, PREDICTIONS, Candidates, Context, Env, collect_scores
from activelab.strategies.regression import EMCM, CommitteeVariance, GSx
from activelab.testing import ScorerConformance, TaskConformance, make_context

torch.set_num_threads(1)

SMALL = {"kind": "digits", "max_pool": 120, "max_test": 60}


def make_task(tmp_path=None, seed=0, **params) -> RotationTask:
    params.setdefault("data", SMALL)
    return RotationTask(RotationTask.Config(**params), Env(seed=seed, run_dir=tmp_path, progress=False))


def labels_of(task, n, start=0):
    ids = task.pool_ids()[start:start + n]
    return {i: task.true_label(i) for i in ids}


def ctx(labels, round=0, seed=0):
    return Context(round=round, seed=seed, budget=10, labels=labels)


def values(task, ids, mc=None):
    return np.concatenate([c[PREDICTIONS] for c in task.predict(ids, {PREDICTIONS}, mc)], axis=0 if mc is None else 1)


# ------------------------------------------------------------------------------------------- conformance
class TestRotationConformance(TaskConformance):
    """The core's standard task checks on 120 digits (chunks of 16, so chunking is exercised)."""

    covers = ("vision", "task", "rotation")

    def make_task(self):
        return make_task(epochs=2, min_steps=10, eval_batch_size=16)

    def wants(self, task):
        return {PREDICTIONS, EMBEDDINGS}

    def garbage_labels(self):
        return [*super().garbage_labels(), True, float("nan"), float("inf"), "twelve", [1.0]]


class _OnRotation(ScorerConformance):
    """The core's regression scorers on the image task (bootstrap members of a CNN, the pixels as features)."""

    n_labels = 20
    n_candidates = 40

    def make_task(self):
        task = make_task(epochs=2, min_steps=10, eval_batch_size=16)
        task.fit(labels_of(task, self.n_labels), ctx(labels_of(task, self.n_labels)))
        return task


class TestEMCMOnRotation(_OnRotation):
    def make_scorer(self):
        return EMCM(EMCM.Config(size=2), Env())


class TestCommitteeVarianceOnRotation(_OnRotation):
    def make_scorer(self):
        return CommitteeVariance(CommitteeVariance.Config(members="dropout", size=3), Env())


class TestGSxOnRotation(_OnRotation):
    def make_scorer(self):
        return GSx(GSx.Config(), Env())


# ------------------------------------------------------------------------------------------- targets
def test_rotation_is_counter_clockwise_and_padded():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 4, 7] = 1.0                                  # right of the centre
    up = rotate(image, np.array([90.0]))[0, 0]
    assert divmod(int(up.argmax()), 9) == (1, 4)             # +90: above the centre
    down = rotate(image, np.array([-90.0]))[0, 0]
    assert divmod(int(down.argmax()), 9) == (7, 4)
    assert rotate(image, np.array([0.0]), pad=2).shape == (1, 1, 13, 13)
    torch.testing.assert_close(rotate(image, np.array([0.0])), image)


def test_targets_are_seeded_angles_in_range_and_the_images_are_rotated_by_them():
    a, b, c = make_task(seed=0), make_task(seed=0), make_task(seed=1)
    ids = a.pool_ids()
    angles = np.array([a.true_label(i) for i in ids])
    assert np.all(np.abs(angles) <= 45.0) and angles.std() > 15
    assert [b.true_label(i) for i in ids] == list(angles)
    assert not np.allclose([c.true_label(i) for i in c.pool_ids()[:20]], angles[:20])
    assert a.pool.images.shape[1:] == (1, 12, 12)            # 8 x 8 digits, padded by 2
    torch.testing.assert_close(a.pool.images, b.pool.images)
    assert a.data_fingerprint() == b.data_fingerprint() != c.data_fingerprint()
    wider = make_task(max_angle=90.0)
    assert np.abs([wider.true_label(i) for i in wider.pool_ids()]).max() > 45.0
    assert wider.data_fingerprint() != a.data_fingerprint()


def test_declares_what_reports_and_scorers_need():
    assert RotationTask.primary_metric == "rmse"
    assert {"rmse", "mae"} <= RotationTask.lower_is_better <= set(RotationTask.metrics)
    assert {PREDICTIONS, EMBEDDINGS, FEATURES} <= RotationTask.outputs
    for scorer in (EMCM(), CommitteeVariance(), GSx()):
        assert set(scorer.needs) <= RotationTask.outputs


# ------------------------------------------------------------------------------------------- learning
def test_learns_the_angle_better_than_the_mean():
    task = make_task(data={"kind": "digits", "max_pool": 400, "max_test": 100}, epochs=15)
    labels = labels_of(task, 300)
    stats = task.fit(labels, ctx(labels))
    metrics = task.evaluate()
    baseline = float(np.sqrt(np.mean((task.test_angles - np.mean(list(labels.values()))) ** 2)))
    assert stats["n_train"] == 300 and stats["train_rmse"] < baseline
    assert metrics["rmse"] < 0.6 * baseline, (metrics, baseline)
    assert metrics["mae"] <= metrics["rmse"]


def test_bootstrap_members_disagree_leave_the_model_alone_and_go_stale():
    task = make_task(epochs=2, min_steps=10)
    labels = labels_of(task, 30)
    task.fit(labels, ctx(labels))
    ids = task.pool_ids()[30:80]
    before = values(task, ids)
    with pytest.raises(ValueError, match="fit_bootstrap"):
        values(task, ids, MC(samples=2, mode="bootstrap"))
    task.fit_bootstrap(labels, 3, seed=1)
    members = values(task, ids, MC(samples=3, mode="bootstrap"))
    assert members.shape == (3, 50) and not np.allclose(members[0], members[1])
    np.testing.assert_array_equal(values(task, ids), before)
    dropout = values(task, ids, MC(samples=4, mode="dropout", seed=2))
    assert dropout.shape == (4, 50) and not np.allclose(dropout[0], dropout[1])
    task.fit(labels, ctx(labels, round=1))
    assert task.members == []


def test_features_are_the_rotated_pixels():
    task = make_task()
    ids = task.pool_ids()[:5]
    out = next(iter(task.predict(ids, {FEATURES}, MC(samples=2, mode="dropout"))))
    np.testing.assert_array_equal(out[FEATURES], task.pool.images[:5].reshape(5, -1).numpy())


def test_labels_are_finite_angles():
    task = make_task()
    item = task.pool_ids()[0]
    assert isinstance(task.true_label(item), float)
    assert task.check_label(item, 12) == 12.0 and task.check_label(item, " -7.5 ") == -7.5
    for bad in (None, True, "nan", float("inf"), "a lot"):
        with pytest.raises(ValueError, match="rotation angle in degrees"):
            task.check_label(item, bad)
    with pytest.raises(ValueError, match="unknown item"):
        task.check_label("no such image", 1.0)
    assert abs(task.corrupt_label(3.0, np.random.default_rng(0))) <= 45.0


def test_describe_shows_the_rotated_image(tmp_path):
    task = make_task(tmp_path)
    shown = task.describe(task.pool_ids()[3])
    from PIL import Image
    with Image.open(shown["image"]) as img:
        assert img.size == (120, 120)                        # 12 x 12, upscaled 10 times
    assert "degrees" in shown["text"]


def test_checkpoint_round_trip_with_members_and_a_mismatch():
    a = make_task(epochs=2, min_steps=10, fine_tune=True)
    labels = labels_of(a, 20)
    a.fit(labels, ctx(labels))
    a.fit_bootstrap(labels, 2, seed=3)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    b = make_task(epochs=2, min_steps=10, fine_tune=True)
    b.load_state_dict(state)
    ids = a.pool_ids()[:30]
    mc = MC(samples=2, mode="bootstrap")
    np.testing.assert_array_equal(values(a, ids, mc), values(b, ids, mc))
    more = labels_of(a, 30)                                  # fine-tuning continues from the restored optimiser
    a.fit(more, ctx(more, round=1))
    b.fit(more, ctx(more, round=1))
    np.testing.assert_array_equal(values(a, ids), values(b, ids))
    with pytest.raises(UserError, match="checkpoint does not match.*max_angle"):
        make_task(max_angle=30.0).load_state_dict(state)


# ------------------------------------------------------------------------------------------- the scorers
def test_emcm_asks_about_an_image_unlike_the_labelled_ones_first():
    """A saturated square is no digit: far outside the labelled data, the bootstrap CNNs disagree there and its
    features h are large. It must rank first among 60 ordinary candidates."""
    task = make_task(epochs=4, min_steps=30)
    labels = labels_of(task, 30)
    task.fit(labels, ctx(labels))
    ids = task.pool_ids()
    candidates = Candidates(ids, np.arange(30, 90))
    task.pool.images[57] = 3.0                               # a saturated square
    scores = collect_scores(EMCM(EMCM.Config(size=3)).score(task, candidates, make_context(labels, round=1)))
    assert candidates[int(np.argmax(scores))] == ids[57]
