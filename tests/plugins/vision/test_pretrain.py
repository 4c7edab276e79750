"""``activelab pretrain`` (transfer without a download): a backbone trained on a labelled source set that ships here,
saved as an ordinary torchvision state dict that the classification task loads with ``{kind: torchvision, arch,
weights: FILE}``; the same seed gives the same file; every bad argument is one line and exit 2. Tiny runs: a few
dozen digits (8 x 8) and one epoch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision.backbones import IMAGENET_MEAN, IMAGENET_STD, Prepare
from activelab.plugins.vision.datasets import DataConfig, load_data
from activelab.plugins.vision.pretrain import pretrain

TINY = {"kind": "digits"}
FAST = {"epochs": 1, "batch_size": 16, "max_train": 48, "max_test": 40}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbones") / "sub" / "resnet18_digits.pth"     # the folder is made
    return pretrain(out, data=TINY, arch="resnet18", seed=3, **FAST)


def test_the_file_is_a_plain_torchvision_state_dict_with_the_trained_weights(made):
    assert made.path.is_file() and not list(made.path.parent.glob(".*.tmp"))       # no temporary file left
    assert made.n_train == 48 and made.n_test == 40 and made.num_classes == 10 and made.image_size == (8, 8)
    state = torch.load(made.path, weights_only=True)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert list(state) == list(reference)                                   # every tensor, torchvision's own names
    assert all(state[k].shape == reference[k].shape for k in state)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    net.load_state_dict(state)                                              # strict: an ordinary weights file
    assert int(state["bn1.num_batches_tracked"]) == 3                       # 48 images / 16: trained, 3 steps
    # the file's own head, with the task's input preparation (grey -> 3 channels, ImageNet's mean and std),
    # reproduces the accuracy pretrain printed: the file holds what was trained, in the convention the task uses
    test = load_data(DataConfig(kind="digits", max_test=40, max_pool=48), 3).test
    prep = Prepare(3, (8, 8), IMAGENET_MEAN, IMAGENET_STD)
    with torch.inference_mode():
        predicted = net.eval()(prep(test.images)).argmax(1).numpy()
    assert float(np.mean(predicted == test.labels)) == pytest.approx(made.accuracy)


def test_the_classification_task_loads_it_and_runs_a_round_through_the_cli(made, tmp_path):
    params = {"data": {"kind": "digits", "max_pool": 60, "max_test": 20}, "epochs": 1, "min_steps": 3,
              "batch_size": 16, "model": {"kind": "torchvision", "arch": "resnet18", "weights": str(made.path)}}
    recipe = {"name": "transfer", "seed": 0, "task": {"plugin": "vision", "name": "classification", "params": params},
              "scorer": {"name": "margin"}, "loop": {"initial": 10, "batch": 10, "rounds": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 20] and all(0 <= r["accuracy"] <= 1 for r in rows)
    from activelab.plugins.vision.classification import ClassificationTask
    from activelab.protocol import Env

    task = ClassificationTask(ClassificationTask.Config(**params), Env(seed=0, progress=False))
    saved = torch.load(made.path, weights_only=True)
    body = task.model.body.state_dict()
    assert all(torch.equal(body[k], saved[k]) for k in body)       # the pretrained body, every tensor of it


def test_the_same_seed_gives_the_same_weights_and_another_seed_others(made, tmp_path):
    again = pretrain(tmp_path / "again.pth", data=TINY, arch="resnet18", seed=3, **FAST)
    other = pretrain(tmp_path / "other.pth", data=TINY, arch="resnet18", seed=4, **FAST)
    first, second, third = (torch.load(p, weights_only=True) for p in (made.path, again.path, other.path))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.accuracy == made.accuracy
    assert not torch.equal(first["conv1.weight"], third["conv1.weight"])


def test_pool_normalisation_and_an_architecture_with_its_own_dropout(tmp_path):
    made = pretrain(tmp_path / "m.pth", data=TINY, arch="mobilenet_v3_small", normalize="pool", image_size=16,
                    seed=0, **FAST)
    assert made.image_size == (16, 16) and "normalize: pool" in made.recipe_line()
    assert "image_size: 16" in made.recipe_line()
    state = torch.load(made.path, weights_only=True)
    assert state["classifier.3.weight"].shape == (10, 1024)          # its own output layer, sized for the source
    torchvision.models.mobilenet_v3_small(num_classes=10).load_state_dict(state)


def error_line(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["pretrain", *argv]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("activelab: error: ")
    return lines[0]


def test_bad_arguments_are_one_line_errors_with_exit_2_before_any_training(tmp_path, capsys):
    out = str(tmp_path / "w.pth")
    assert "--arch: unknown torchvision classification architecture 'resnet5'; close: resnet50" in \
        error_line(capsys, "--out", out, "--arch", "resnet5")
    assert "--arch: squeezenet1_0 is not supported" in error_line(capsys, "--out", out, "--arch", "squeezenet1_0")
    line = error_line(capsys, "--out", out, "--data", "cifar10")
    assert line.startswith("activelab: error: --data: must be one of 'digits'") and "(got 'cifar10')" in line
    assert "--data.path: " in error_line(capsys, "--out", out, "--data", "{kind: fashion_mnist, path: /nowhere}")
    assert "--data: give a source name" in error_line(capsys, "--out", out, "--data", "[1, 2]")
    assert "--epochs: must be an integer >= 1 (got 0)" in error_line(capsys, "--out", out, "--epochs", "0")
    assert "--epochs: must be an integer (got 'two')" in error_line(capsys, "--out", out, "--epochs", "two")
    assert "--lr: must be a number > 0" in error_line(capsys, "--out", out, "--lr", "0")
    assert "--max-train: must be >= 2" in error_line(capsys, "--out", out, "--max-train", "1")
    assert "--normalize: must be one of 'imagenet' or 'pool'" in error_line(capsys, "--out", out, "--normalize", "x")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert f"--out: cannot write {blocker}/w.pth: {blocker} is a file, not a folder" in \
        error_line(capsys, "--out", str(blocker / "w.pth"))
    assert f"--out: {tmp_path} is a folder" in error_line(capsys, "--out", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]           # nothing written


def test_the_library_call_checks_its_arguments_too(tmp_path):
    with pytest.raises(UserError, match=r"^--batch-size: must be an integer >= 1"):
        pretrain(tmp_path / "w.pth", data=TINY, batch_size=0)
    with pytest.raises(UserError, match=r"^--max-test: must be >= 1 \(got 0\)"):
        pretrain(tmp_path / "w.pth", data=TINY, max_test=0)


def test_a_missing_weights_file_names_the_pretrain_command(tmp_path, capsys):
    recipe = yaml.safe_load((Path(__file__).resolve().parents[3] / "recipes" / "transfer_mnist.yaml").read_text())
    recipe["task"]["params"]["data"] = {"kind": "digits", "max_pool": 60, "max_test": 20}
    recipe["task"]["params"]["model"]["weights"] = str(tmp_path / "backbones" / "r18.pth")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task.params.model.weights: " in err[0] and "r18.pth not found" in err[0]
    assert f"make one with `activelab pretrain --arch resnet18 --out {tmp_path / 'backbones' / 'r18.pth'}`" in err[0]
    assert not (tmp_path / "run").exists()


def test_the_verb_is_listed_by_the_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--help"])
    assert exc.value.code == 0 and "--max-train" in capsys.readouterr().out
