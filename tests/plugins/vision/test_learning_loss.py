"""Learning loss (Yoo & Kweon, CVPR 2019) on the vision classification task: the loss-prediction module on the
networks' stages, the joint training and its stop-gradient, planted high-loss images ranked first, checkpoints, the
core's predicted_loss scorer on the task, and a recipe with the subsample selector through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import EMBEDDINGS, MC, PREDICTED_LOSS, PROBS, Context, Env
from activelab.recipe import RecipeError, load
from activelab.strategies.lossprediction import PredictedLoss
from activelab.testing import ScorerConformance, TaskConformance

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
SMALL = {"kind": "digits", "max_pool": 240, "max_test": 80}
ON = {"enabled": True}


def make_task(seed: int = 0, **params) -> ClassificationTask:
    params.setdefault("data", SMALL)
    params.setdefault("epochs", 3)
    params.setdefault("min_steps", 10)
    return ClassificationTask(ClassificationTask.Config(**params), Env(seed=seed, progress=False))


def ctx(round: int, labels, seed: int = 0) -> Context:
    return Context(round=round, seed=seed, budget=10, labels=labels, progress=False)


def first(task: ClassificationTask, n: int) -> dict[str, int]:
    return {i: task.true_label(i) for i in task.pool_ids()[:n]}


def predicted_loss(task: ClassificationTask, ids) -> np.ndarray:
    return np.concatenate([o[PREDICTED_LOSS] for o in task.predict(ids, {PREDICTED_LOSS})])


def network(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("loss_module.")}


# ----------------------------------------------------------------------------------------------- the module
def test_off_by_default_and_the_module_changes_no_network_weight():
    off, on = make_task(), make_task(loss_prediction=ON)
    assert PREDICTED_LOSS not in off.outputs and PREDICTED_LOSS in on.outputs
    assert not hasattr(off.model, "loss_module")
    with pytest.raises(UserError, match="loss_prediction"):
        off.predict(off.pool_ids()[:3], {PREDICTED_LOSS})
    # the module is drawn after the network: the network's initial weights are the same with it as without
    a, b = network(off.model), network(on.model)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert on.model.loss_taps == ("body.4", "body.7", "body.11")               # conv blocks and the hidden layer
    assert [fc.in_features for fc in on.model.loss_module.fcs] == [32, 64, 128]
    assert on.cfg.loss_prediction.model_dump() == {"enabled": True, "hidden": 128, "weight": 1.0, "margin": 1.0,
                                                   "detach_after": 0.6}


def test_resnets_are_tapped_at_their_four_stages_and_other_models_are_refused():
    resnet = make_task(model="resnet18", loss_prediction=ON)
    assert resnet.model.loss_taps == ("net.layer1", "net.layer2", "net.layer3", "net.layer4")
    assert [fc.in_features for fc in resnet.model.loss_module.fcs] == [64, 128, 256, 512]
    mine = make_task(model={"kind": "torchvision", "arch": "resnet18", "weights": None}, loss_prediction=ON)
    assert mine.model.loss_taps == tuple(f"body.layer{i}" for i in range(1, 5))
    assert predicted_loss(mine, mine.pool_ids()[:5]).shape == (5,)
    for model in ("linear_probe", {"kind": "torchvision", "arch": "mobilenet_v3_small", "weights": None}):
        with pytest.raises(UserError, match="task.params.loss_prediction: .*stages"):
            make_task(model=model, loss_prediction=ON, features={"kind": "pca"})


# ----------------------------------------------------------------------------------------------- training
def test_the_joint_loss_reaches_the_network_only_before_the_stop_gradient():
    task = make_task(loss_prediction=ON)
    model = task.model
    model.train()
    x, y = task._inputs(np.arange(16)), torch.from_numpy(task.pool.labels[:16]).long()
    body = [p for n, p in model.named_parameters() if not n.startswith(("loss_module.", "fc."))]
    for detach in (False, True):
        model.zero_grad(set_to_none=True)
        _, rank = task._learning_loss(model, x, y, detach)
        rank.backward()                                        # the ranking term alone
        reached = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in body]
        assert all(reached) is not detach and any(reached) is not detach, detach
        assert all(p.grad is not None for p in model.loss_module.parameters())   # the module always learns


def test_the_stop_gradient_starts_at_the_fraction_of_the_epochs(monkeypatch):
    task = make_task(epochs=5, min_steps=0, loss_prediction={"enabled": True, "detach_after": 0.6})
    calls = []
    original = task._learning_loss

    def spy(model, x, y, detach):
        calls.append(detach)
        return original(model, x, y, detach)

    monkeypatch.setattr(task, "_learning_loss", spy)
    labels = first(task, 64)
    stats = task.fit(labels, ctx(0, labels))
    per_epoch = len(calls) // 5
    assert calls == [False] * 3 * per_epoch + [True] * 2 * per_epoch         # epochs 3 and 4 of 0..4 (>= 0.6 * 5)
    assert stats["train_rank"] >= 0 and np.isfinite(stats["train_loss"])


def test_stopped_from_the_start_the_network_trains_exactly_as_without_the_module():
    """detach_after: 0: the ranking loss never reaches the network, which then learns what it learns without the
    module (same initialisation, same batches, same dropout masks); with the gradient on it learns otherwise."""
    def fitted(**lp):
        task = make_task(**({"loss_prediction": {"enabled": True, **lp}} if lp else {}))
        labels = first(task, 64)
        task.fit(labels, ctx(0, labels))
        return network(task.model)

    alone, stopped, joint = fitted(), fitted(detach_after=0.0, weight=5.0), fitted(detach_after=None, weight=5.0)
    assert all(torch.equal(alone[k], stopped[k]) for k in alone)
    assert not all(torch.equal(alone[k], joint[k]) for k in alone)


def test_planted_high_loss_images_are_ranked_first():
    """Noise images with random labels cannot be learnt: their loss stays far above the digits'. Trained on 150
    digits and 30 such images, the module ranks 10 unseen noise images above 100 unseen digits."""
    task = make_task(epochs=30, loss_prediction=ON)
    rng = np.random.default_rng(0)
    ids = task.pool_ids()
    noisy = list(range(150, 190))                            # 30 for training, the last 10 held out
    task.pool.images[noisy] = torch.from_numpy(rng.random((len(noisy), 1, 8, 8), dtype=np.float32))
    labels = {ids[i]: task.true_label(ids[i]) for i in range(150)}
    labels.update({ids[i]: int(rng.integers(10)) for i in noisy[:30]})
    task.fit(labels, ctx(0, labels))
    unseen = [ids[i] for i in noisy[30:]] + [ids[i] for i in range(190, 240)]
    order = np.argsort(-predicted_loss(task, unseen))
    assert set(order[:10].tolist()) == set(range(10))
    assert task.evaluate()["loss_spearman"] > 0.2               # it ranks the test digits' losses too


# ----------------------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_resumes_the_module_bit_identically(tmp_path):
    model, small = "small_cnn", {"epochs": 4}
    a = make_task(model=model, loss_prediction={"enabled": True, "detach_after": 0.5}, **small)
    labels = first(a, 16)
    a.fit(labels, ctx(0, labels))
    assert any(k.startswith("loss_module.") for k in a.state_dict()["model"])
    torch.save({"task": a.state_dict()}, tmp_path / "ckpt.pt")
    b = make_task(model=model, loss_prediction={"enabled": True, "detach_after": 0.5}, **small)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False)["task"])
    ids = a.pool_ids()[40:60]
    np.testing.assert_array_equal(predicted_loss(a, ids), predicted_loss(b, ids))
    more = dict(labels, **{i: a.true_label(i) for i in a.pool_ids()[16:24]})
    assert a.fit(more, ctx(1, more)) == b.fit(more, ctx(1, more))         # killed after round 0, resumed: the same
    np.testing.assert_array_equal(predicted_loss(a, ids), predicted_loss(b, ids))
    assert a.evaluate() == b.evaluate()
    with pytest.raises(UserError, match="loss_module"):                    # a checkpoint without the module
        make_task(model=model, **small).load_state_dict(a.state_dict())


def test_predicted_loss_has_no_monte_carlo_form():
    task = make_task(loss_prediction=ON)
    with pytest.raises(ValueError, match="Monte-Carlo"):
        task.predict(task.pool_ids()[:4], {PREDICTED_LOSS}, MC(samples=2))
    out = next(task.predict(task.pool_ids()[:4], {PREDICTED_LOSS, PROBS, EMBEDDINGS}))
    assert out[PREDICTED_LOSS].shape == (4,) and out[PROBS].shape == (4, 10)
    alone = next(task.predict(task.pool_ids()[:4], {PROBS}))
    np.testing.assert_array_equal(alone[PROBS], out[PROBS])     # reading the stages changes no prediction


# ----------------------------------------------------------------------------------------------- conformance
class TestLearningLossConformance(TaskConformance):
    """The core's standard task checks with the loss-prediction module on."""
    covers = ("vision", "task", "classification")

    def make_task(self):
        return make_task(epochs=2, data={"kind": "digits", "max_pool": 120, "max_test": 60}, loss_prediction=ON)


@pytest.fixture(scope="module")
def fitted() -> ClassificationTask:
    task = make_task(loss_prediction=ON)
    labels = first(task, 20)
    task.fit(labels, ctx(0, labels))
    return task


class TestPredictedLossOnImages(ScorerConformance):
    """The core's predicted_loss scorer on the vision task (the speech tests check it on speech)."""
    covers = ("core", "scorer", "predicted_loss")

    @pytest.fixture(autouse=True)
    def _task(self, fitted):
        self.task = fitted

    def make_scorer(self):
        return PredictedLoss()

    def make_task(self):
        return self.task


# ----------------------------------------------------------------------------------------------- recipes
def test_the_recipe_runs_a_round_with_the_subsample_selector(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "learning_loss_digits.yaml").read_text())
    assert recipe["scorer"]["name"] == "predicted_loss" and recipe["selector"]["name"] == "subsample"
    assert set(recipe["strategies"]) == {"learning_loss", "entropy", "random"}
    recipe["task"]["params"].update(data=SMALL, epochs=2)
    recipe["loop"] = {"initial": 20, "batch": 10, "rounds": 1}
    recipe["selector"]["params"] = {"size": 50}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [20, 30] and all("train_rank" in r for r in rows)
    # normalise: true asks for a length-normalised estimate, which images do not have: refused before any run
    recipe["scorer"]["params"] = {"normalise": True}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="predicted_loss_per_second"):
        load(path)
