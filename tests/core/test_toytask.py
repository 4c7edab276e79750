"""The toy task passes the task conformance kit, and learns."""
import numpy as np
import torch

from activelab.protocol import Env
from activelab.testing import TaskConformance, ToyTask, make_context, true_labels

torch.set_num_threads(1)


class TestToyTaskConformance(TaskConformance):
    covers = ("core", "task", "toy")

    def make_task(self):
        return ToyTask(ToyTask.Config(n_items=120, n_test=60, chunk_size=16), Env(seed=2))

    def garbage_labels(self):
        return super().garbage_labels() + [-1, 4, 2.0, True, "three"]


def test_toy_task_learns_and_fit_depends_on_round_and_seed():
    task = ToyTask()
    before = task.evaluate()["accuracy"]
    labels = true_labels(task, task.pool_ids()[:100])
    task.fit(labels, make_context(round=1, seed=0))
    after = task.evaluate()["accuracy"]
    assert after > 0.8 and after > before
    probs = next(task.predict(task.pool_ids()[:5], {"probs"}))["probs"]
    task.fit(labels, make_context(round=2, seed=0))
    assert not np.array_equal(probs, next(task.predict(task.pool_ids()[:5], {"probs"}))["probs"])


def test_check_label_canonicalises():
    task = ToyTask()
    assert task.check_label("3", "2") == 2 and task.check_label("3", np.int64(1)) == 1
