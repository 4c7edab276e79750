"""Your own model for image classification (``model: {kind: torchvision | huggingface, ...}``): randomly initialised
torchvision state dicts and a tiny transformers ViT saved into temporary folders; what each ``freeze`` mode trains,
the head replacement and the dropout in front of it, the input size, the checkpoint round trip, a run through the
CLI (and one killed with SIGKILL and resumed), and a one-line error for every problem with the files -- the same
checks for the detection task's ``weights_path``."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from pydantic import ValidationError

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision.backbones import Backbone, TorchvisionModelConfig, WeightsError
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import MC, Context, Env
from activelab.testing.runs import metrics_rows, snapshot

SMALL = {"kind": "digits", "max_pool": 60, "max_test": 20}


def make_task(model, tmp_path=None, seed=0, **params) -> ClassificationTask:
    params.setdefault("data", SMALL)
    params.setdefault("epochs", 1)
    params.setdefault("min_steps", 3)
    params.setdefault("batch_size", 16)
    return ClassificationTask(ClassificationTask.Config(model=model, **params),
                              Env(seed=seed, run_dir=tmp_path, progress=False))


def ctx(round: int, labels, seed: int = 0) -> Context:
    return Context(round=round, seed=seed, budget=10, labels=labels)


def some_labels(task: ClassificationTask, n: int = 20, seed: int = 0) -> dict[str, int]:
    ids = task.pool_ids()
    chosen = np.random.default_rng(seed).choice(len(ids), n, replace=False)
    return {ids[i]: task.true_label(ids[i]) for i in chosen}


def digest(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:
    """A randomly initialised torchvision resnet18 state dict (1000-class head), as a user would save one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def tv(weights, arch="resnet18", **more):
    return {"kind": "torchvision", "arch": arch, "weights": str(weights), **more}


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    """A tiny transformers ViT image classifier (16 x 16 inputs, 2 layers, 5 classes) and its image processor."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                    image_size=16, patch_size=4, num_labels=5)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5, 0.4, 0.3],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    after = model.state_dict()
    return {k for k in after if not torch.equal(before[k], after[k])}


# ----------------------------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("freeze", ["linear_probe", "last_block", "none"])
def test_each_freeze_mode_trains_what_it_says(r18, freeze):
    task = make_task(tv(r18, freeze=freeze))
    saved = torch.load(r18, weights_only=True)
    body = task.model.body.state_dict()
    assert all(torch.equal(body[k], saved[k]) for k in body)            # the file's weights, all of them
    assert "fc.weight" not in body and task.model.fc.weight.shape == (10, 512)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    labels = some_labels(task)
    stats = task.fit(labels, ctx(0, labels))
    assert stats["n_train"] == 20 and np.isfinite(stats["train_loss"])
    moved = changed(before, task.model)
    assert {"fc.weight", "fc.bias"} <= moved
    if freeze == "linear_probe":          # the head only: the body, its batch-norm statistics included, is as loaded
        assert moved == {"fc.weight", "fc.bias"}
    elif freeze == "last_block":          # resnet: layer4 and the head; conv1..layer3 and their statistics as loaded
        assert {k.split(".")[1] for k in moved if k.startswith("body.")} == {"layer4"}
        assert "body.layer4.1.conv2.weight" in moved and "body.layer4.0.bn1.running_mean" in moved
    else:
        assert {"body.conv1.weight", "body.layer1.0.conv1.weight", "body.layer3.1.bn2.weight"} <= moved
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in moved if n in dict(task.model.named_parameters())}
    ids = task.pool_ids()[:7]
    out = list(task.predict(ids, {"probs", "embeddings"}))
    assert out[0]["probs"].shape == (7, 10) and out[0]["embeddings"].shape == (7, 512)
    assert np.allclose(out[0]["probs"].sum(1), 1, atol=1e-5)
    for mode in ("dropout", "batchwise"):                # resnet has no dropout: the task's is added before the head
        mc = list(task.predict(ids, {"probs", "embeddings"}, MC(3, mode, 1)))[0]
        assert mc["probs"].shape == (3, 7, 10) and not np.array_equal(mc["probs"][0], mc["probs"][1])
        assert np.allclose(mc["embeddings"][0], out[0]["embeddings"], atol=1e-5)
    assert task.model.dropout.p == 0.5 and not task.model.dropout.training
    assert set(task.evaluate()) == {"accuracy", "macro_f1"}


def test_grey_images_are_repeated_to_three_channels_and_normalised_the_imagenet_way(r18):
    task = make_task(tv(r18, freeze="linear_probe"))
    prep = task.model.prep
    assert task.pool.images.shape[1] == 1 and prep.size == (8, 8)
    x = task.pool.images[:2]
    want = (x.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(prep(x), want)
    bigger = make_task(tv(r18, freeze="linear_probe", image_size=32, normalize="pool"))
    assert bigger.model.prep(x).shape == (2, 3, 32, 32)
    assert torch.allclose(bigger.model.prep.mean.flatten(), bigger._mean.flatten())


def test_efficientnet_and_mobilenet_heads_are_replaced_and_their_own_dropout_moved_before_the_new_head(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mnv3.pth"
    net = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(net.state_dict(), path)
    task = make_task(tv(path, arch="mobilenet_v3_small", freeze="last_block"))
    model = task.model
    assert isinstance(model.body.classifier[3], torch.nn.Identity)           # the 1000-class output layer
    assert isinstance(model.body.classifier[2], torch.nn.Identity)           # its dropout, now in front of fc
    assert model.dropout.p == 0.2 and model.embedding_dim == 1024 and model.fc.out_features == 10
    trainable = {".".join(n.split(".")[1:3]) for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith("body.")}
    assert trainable == {"features.11", "features.12", "classifier.0"}      # the last block and what follows it
    labels = some_labels(task)
    task.fit(labels, ctx(0, labels))
    out = list(task.predict(task.pool_ids()[:4], {"probs", "embeddings"}, MC(2, "dropout", 0)))[0]
    assert out["probs"].shape == (2, 4, 10) and out["embeddings"].shape == (2, 4, 1024)
    assert make_task(tv(path, arch="mobilenet_v3_small", dropout=0.3)).model.dropout.p == 0.3
    scratch = make_task({"kind": "torchvision", "arch": "efficientnet_b0"})              # no weights: from scratch
    assert scratch.model.dropout.p == 0.2 and scratch.model.embedding_dim == 1280
    assert isinstance(scratch.model.body.classifier[1], torch.nn.Identity)


def test_a_state_dicts_metadata_reaches_the_modules_that_read_it(tmp_path):
    path = tmp_path / "mnasnet.pth"           # mnasnet refuses a state dict without its version metadata
    torch.save(torchvision.models.mnasnet0_5(weights=None).state_dict(), path)
    cfg = TorchvisionModelConfig(kind="torchvision", arch="mnasnet0_5", weights=path, freeze="last_block")
    backbone = Backbone(cfg, 1, (8, 8), 10, 0.5, [0.5], [0.2])
    assert backbone.block == "layers.13" and backbone.rate == 0.2 and backbone.dim == 1280


def test_vit_images_are_resized_to_224():
    cfg = TorchvisionModelConfig(kind="torchvision", arch="vit_b_32")
    backbone = Backbone(cfg, 1, (8, 8), 10, 0.5, [0.5], [0.2])
    assert backbone.prep.size == (224, 224) and backbone.dim == 768 and backbone.rate == 0.5
    model = backbone.new_model()
    assert isinstance(model.body.heads.head, torch.nn.Identity)
    with pytest.raises(UserError, match=r"task\.params\.model\.image_size: vit_b_32 takes 224 x 224 images only"):
        Backbone(cfg.model_copy(update={"image_size": 32}), 1, (8, 8), 10, 0.5, [0.5], [0.2])


def test_state_dict_round_trip_continues_bit_identically_and_the_users_file_is_only_read(r18, tmp_path):
    before = digest(r18)
    for freeze in ("linear_probe", "none"):
        a = make_task(tv(r18, freeze=freeze))
        labels = some_labels(a)
        a.fit(labels, ctx(0, labels))
        a.fit_bootstrap(labels, 2, seed=3)
        path = tmp_path / f"{freeze}.pt"
        torch.save({"task": a.state_dict()}, path)
        state = torch.load(path, weights_only=False)["task"]
        assert state["matches"]["model"] == "torchvision:resnet18" and len(state["matches"]["weights"]) == 64
        if freeze == "linear_probe":          # the frozen network is the file's: the checkpoint holds the head
            assert set(state["model"]) == {"fc.weight", "fc.bias"} == set(state["members"][1])
        else:
            assert set(state["model"]) == set(a.model.state_dict())
        b = make_task(tv(r18, freeze=freeze))
        b.load_state_dict(state)
        ids = a.pool_ids()
        for mc in (None, MC(3, "dropout", 1), MC(2, "bootstrap", 0)):
            pa = np.concatenate([o["probs"] for o in a.predict(ids, {"probs"}, mc)], axis=-2)
            pb = np.concatenate([o["probs"] for o in b.predict(ids, {"probs"}, mc)], axis=-2)
            assert np.array_equal(pa, pb)
        more = dict(labels, **some_labels(a, 30, seed=4))
        assert a.fit(more, ctx(1, more)) == b.fit(more, ctx(1, more))
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
        assert a.evaluate() == b.evaluate()
    assert digest(r18) == before
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(UserError, match="checkpoint does not match.*weights"):
        make_task(tv(other, freeze="none")).load_state_dict(state)


def test_old_string_forms_and_their_checkpoints_are_unchanged():
    task = make_task("small_cnn")
    assert task.backbone is None and set(task._matches()) == {"classes", "pool_size"}
    assert ClassificationTask.Config(model="resnet18").model == "resnet18"


# ----------------------------------------------------------------------------------------------- transformers
def test_a_transformers_image_classifier_fits_and_predicts_with_its_processor(vit):
    task = make_task({"kind": "huggingface", "path": str(vit), "freeze": "last_block"})
    model = task.model
    assert model.prep.size == (16, 16) and model.embedding_dim == 16 and model.fc.out_features == 10
    assert torch.allclose(model.prep.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    assert torch.allclose(model.prep.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labels = some_labels(task)
    task.fit(labels, ctx(0, labels))
    moved = {".".join(k.split(".")[:5]) for k in changed(before, task.model)}
    assert moved == {"body.net.vit.layers.1", "body.net.vit.layernorm.weight", "body.net.vit.layernorm.bias",
                     "fc.weight", "fc.bias"}
    out = list(task.predict(task.pool_ids()[:5], {"probs", "embeddings"}, MC(2, "dropout", 0)))[0]
    assert out["probs"].shape == (2, 5, 10) and out["embeddings"].shape == (2, 5, 16)
    assert not np.array_equal(out["probs"][0], out["probs"][1])
    probe = make_task({"kind": "huggingface", "path": str(vit), "freeze": "linear_probe"})
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    probe.fit(labels, ctx(0, labels))
    assert changed(before, probe.model) == {"fc.weight", "fc.bias"}
    b = make_task({"kind": "huggingface", "path": str(vit), "freeze": "linear_probe"})
    b.load_state_dict(probe.state_dict())
    ids = probe.pool_ids()
    assert np.array_equal(np.concatenate([o["probs"] for o in probe.predict(ids, {"probs"})]),
                          np.concatenate([o["probs"] for o in b.predict(ids, {"probs"})]))


# ----------------------------------------------------------------------------------------------- errors
def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def test_weights_file_problems_are_one_line_errors_naming_the_field(r18, tmp_path):
    field = r"task\.params\.model\.weights: "
    with pytest.raises(UserError, match=field + r".*none\.pth not found \(activelab downloads no weights") as e:
        make_task(tv(tmp_path / "none.pth"))
    one_line(e)
    with pytest.raises(UserError, match=field + ".* is a folder, not a weights file"):
        make_task(tv(tmp_path))
    whole = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(weights=None), whole)
    with pytest.raises(UserError, match=field + r".*whole\.pth is not a state dict: it holds pickled Python objects "
                                              r"\(a whole model saved with torch\.save\(model\)\?\)") as e:
        make_task(tv(whole))
    one_line(e)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(UserError, match=field + r".*garbage\.pth cannot be read as a torch file") as e:
        make_task(tv(garbage))
    one_line(e)
    saved = torch.load(r18, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": saved}, wrapped)
    with pytest.raises(UserError, match=r"is not a state dict: a dict with keys 'epoch', 'state_dict' .*"
                                        r"torch\.save\(checkpoint\['state_dict'\], path\)"):
        make_task(tv(wrapped))
    listed = tmp_path / "list.pth"
    torch.save([1, 2], listed)
    with pytest.raises(UserError, match=r"holds a list, not a state dict"):
        make_task(tv(listed))


def test_a_state_dict_of_another_architecture_says_what_does_not_fit(r18, tmp_path):
    saved = torch.load(r18, weights_only=True)
    odd = dict(saved)
    del odd["layer1.0.conv1.weight"]
    odd["extra.weight"] = torch.zeros(3)
    odd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    odd["fc.weight"], odd["fc.bias"] = torch.zeros(7, 512), torch.zeros(7)   # another head: fine, it is replaced
    path = tmp_path / "odd.pth"
    torch.save(odd, path)
    with pytest.raises(UserError) as e:
        make_task(tv(path))
    assert one_line(e) == (f"task.params.model.weights: {path} is not a torchvision resnet18 state dict: 1 of its "
                           f"tensors missing (e.g. 'layer1.0.conv1.weight'); 1 unexpected (e.g. 'extra.weight'); 1 of "
                           f"another shape (e.g. 'conv1.weight': [64, 1, 7, 7] in the file, [64, 3, 7, 7] expected)")
    assert isinstance(e.value, ValueError)
    with pytest.raises(UserError, match=r"not a torchvision resnet50 state dict: \d+ of its tensors missing .*"
                                        r"\d+ of another shape"):
        make_task(tv(r18, arch="resnet50"))
    parallel = tmp_path / "parallel.pth"
    torch.save({f"module.{k}": v for k, v in saved.items()}, parallel)
    with pytest.raises(UserError, match=r"keys start with 'module\.': saved from DataParallel"):
        make_task(tv(parallel))
    other_head = tmp_path / "ten.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), other_head)
    assert make_task(tv(other_head)).model.fc.out_features == 10


def test_recipe_mistakes_are_named_at_validation(r18):
    with pytest.raises(ValidationError, match=r"unknown torchvision classification architecture 'resnet5'; close: "
                                              r"resnet50, .*resnet18 \(all: torchvision\.models\.list_models"):
        ClassificationTask.Config(model={"kind": "torchvision", "arch": "resnet5"})
    with pytest.raises(ValidationError, match="squeezenet1_0 is not supported: its output layer is a convolution"):
        ClassificationTask.Config(model={"kind": "torchvision", "arch": "squeezenet1_0"})
    with pytest.raises(ValidationError, match="freeze: linear_probe freezes random weights"):
        ClassificationTask.Config(model={"kind": "torchvision", "arch": "resnet18", "freeze": "linear_probe"})
    with pytest.raises(ValidationError, match="kind: must be one of torchvision, huggingface"):
        ClassificationTask.Config(model={"kind": "timm", "arch": "resnet18"})
    with pytest.raises(ValidationError, match="freeze"):
        ClassificationTask.Config(model=tv(r18, freeze="half"))


def run_error(tmp_path: Path, model, capsys) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(model)))
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_transformers_folder_problems_are_one_line_errors(vit, tmp_path, capsys):
    import transformers

    hf = {"kind": "huggingface"}
    line = run_error(tmp_path, {**hf, "path": str(tmp_path / "none")}, capsys)
    assert "task.params.model.path: " in line and "none not found" in line
    seq2seq = tmp_path / "marian"
    transformers.MarianConfig(vocab_size=20, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                              decoder_attention_heads=1, encoder_ffn_dim=8, decoder_ffn_dim=8,
                              architectures=["MarianMTModel"]).save_pretrained(seq2seq)
    line = run_error(tmp_path, {**hf, "path": str(seq2seq)}, capsys)
    assert f"task.params.model.path: {seq2seq} holds a MarianMTModel (marian), not an image classifier" in line
    no_processor = tmp_path / "no-processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_processor / name).write_bytes((vit / name).read_bytes())
    assert "has no preprocessor_config.json" in run_error(tmp_path, {**hf, "path": str(no_processor)}, capsys)
    (no_processor / "model.safetensors").unlink()
    assert "has no model weights" in run_error(tmp_path, {**hf, "path": str(no_processor)}, capsys)
    line = run_error(tmp_path, {"kind": "torchvision", "arch": "resnet5"}, capsys)
    assert "task.params.model.arch" in line and "close: resnet50" in line


def test_the_missing_transformers_package_is_named(vit, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"task\.params\.model\.kind: huggingface needs the transformers package: "
                                        r"pip install 'activelab\[vision\]'"):
        make_task({"kind": "huggingface", "path": str(vit)})


# ----------------------------------------------------------------------------------------------- detection
def test_the_detection_backbone_weights_get_the_same_checks(r18, tmp_path):
    from activelab.plugins.vision.detection.adapter import TorchvisionAdapter

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"junk")
    with pytest.raises(WeightsError, match=r"^task\.params\.weights_path: .*garbage\.pth cannot be read as a torch "
                                           r"file"):
        TorchvisionAdapter(3, backbone="resnet18", weights_path=str(garbage))
    whole = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(weights=None), whole)
    with pytest.raises(WeightsError, match=r"^task\.params\.weights_path: .* is not a state dict: it holds pickled"):
        TorchvisionAdapter(3, backbone="resnet18", weights_path=str(whole))
    with pytest.raises(WeightsError, match=r"^task\.params\.weights_path: .* is not a torchvision resnet50 state "
                                           r"dict: \d+ of its tensors missing"):
        TorchvisionAdapter(3, backbone="resnet50", weights_path=str(r18))
    with pytest.raises(WeightsError, match=r"^task\.params\.weights_path: .*none\.pth not found"):
        TorchvisionAdapter(3, backbone="resnet18", weights_path=str(tmp_path / "none.pth"))
    adapter = TorchvisionAdapter(3, backbone="resnet18", weights_path=str(r18))     # fc and counters ignored
    assert torch.equal(adapter.backbone.body.conv1.weight, torch.load(r18, weights_only=True)["conv1.weight"])


# ----------------------------------------------------------------------------------------------- the CLI
def recipe(model, rounds: int = 1) -> dict:
    params = {"data": SMALL, "model": model, "epochs": 1, "min_steps": 3, "batch_size": 16}
    return {"name": "own-model", "seed": 0, "task": {"plugin": "vision", "name": "classification", "params": params},
            "scorer": {"name": "entropy"}, "loop": {"initial": 10, "batch": 10, "rounds": rounds}}


def test_a_recipe_with_a_torchvision_model_runs_one_round_through_the_cli(r18, tmp_path):
    before = digest(r18)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tv(r18, freeze="linear_probe"))))
    assert main(["validate", str(path)]) == 0
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 20] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert digest(r18) == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchvision", "huggingface"])
def test_a_run_killed_with_sigkill_resumes_where_the_uninterrupted_run_ended(r18, vit, tmp_path, kind):
    """Round 0's metrics row written, the run is killed (SIGKILL) while round 1 or 2 is queried or fitted, and
    resumed: it restores the fine-tuned model from the run's checkpoint and ends where the uninterrupted run
    ended; the user's weights are untouched."""
    source = r18 if kind == "torchvision" else vit
    model = tv(r18, freeze="last_block") if kind == "torchvision" else {"kind": "huggingface", "path": str(vit)}
    data = recipe(model, rounds=3)
    data["task"]["params"]["epochs"] = 3
    before = digest(source)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--out", str(tmp_path / "ref"), "-q"]) == 0
    want = snapshot(tmp_path / "ref")
    assert [m["round"] for m in want[2]] == [0, 1, 2, 3]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "activelab.cli", "run", str(path), "--out", str(killed), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and metrics_rows(killed) < 1:
        time.sleep(0.02)
    time.sleep(random.Random(7).uniform(0.0, 0.3))
    assert proc.poll() is None, f"the run ended before the kill; make it slower: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metrics_rows(killed) < 4
    assert main(["resume", str(killed), "-q"]) == 0
    assert snapshot(killed) == want
    assert digest(source) == before
