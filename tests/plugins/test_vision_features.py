"""The vision classification task's label-free ``features`` output: SimCLR, PCA and pixels, the NT-Xent loss, the
augmentations, the frozen map that embeds any image (the encoder, the projection), and the per-run cache of
features and map (reused, keyed, rebuilt when stale or corrupt, written atomically)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from activelab.plugins.vision import features as vf
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import FEATURES, MC, PROBS, Context, Env

torch.set_num_threads(1)

SMALL = {"kind": "digits", "max_pool": 200, "max_test": 40}
TINY_SIMCLR = {"kind": "simclr", "epochs": 2, "batch_size": 64, "dim": 32, "projection_dim": 16, "width": 8}


def make_task(run_dir=None, seed=0, features=None, **params) -> ClassificationTask:
    params.setdefault("data", SMALL)
    params.setdefault("epochs", 1)
    params.setdefault("min_steps", 5)
    params["features"] = dict(TINY_SIMCLR if features is None else features)
    return ClassificationTask(ClassificationTask.Config(**params), Env(seed=seed, run_dir=run_dir, progress=False))


def features_of(task: ClassificationTask, ids=None, mc=None) -> np.ndarray:
    ids = task.pool_ids() if ids is None else ids
    return np.concatenate([out[FEATURES] for out in task.predict(ids, {FEATURES}, mc)])


def labels_of(task: ClassificationTask, n: int) -> dict[str, int]:
    return {i: task.true_label(i) for i in task.pool_ids()[:n]}


def counting(monkeypatch, name: str) -> list:
    """Counts the calls of ``vf.<name>`` (which still runs)."""
    calls = []
    real = getattr(vf, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(vf, name, counted)
    return calls


@pytest.fixture()
def spy(monkeypatch):
    """Counts the calls of the SimCLR trainer (and still trains)."""
    return counting(monkeypatch, "train_simclr")


@pytest.fixture()
def pca_spy(monkeypatch):
    """Counts the PCA fits."""
    return counting(monkeypatch, "fit_pca")


def features_file(folder, kind="simclr"):
    """The features' cache file in ``folder`` (not the map's)."""
    [npy] = [p for p in folder.glob(f"{kind}-*.npy") if p.stem.count("-") == 1]
    return npy


# ----------------------------------------------------------------------------------------------- NT-Xent, views
def test_nt_xent_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    t = 0.5
    z = np.concatenate([z1, z2])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    losses = []
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        others = [math.exp(z[a] @ z[b] / t) for b in range(2 * n) if b != a]
        losses.append(-math.log(math.exp(z[a] @ z[positive] / t) / sum(others)))
    got = vf.nt_xent(torch.tensor(z1), torch.tensor(z2), t)
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-10)
    # identical views of orthogonal images: the positive dominates, the loss tends to 0 as t falls
    eye = torch.eye(4, dtype=torch.float64)
    assert float(vf.nt_xent(eye, eye, 0.05)) < 1e-6


def test_augment_is_seeded_in_range_and_the_identity_when_switched_off():
    images = torch.rand(16, 1, 8, 8)
    cfg = vf.AugmentConfig()
    a = vf.augment(images, cfg, torch.Generator().manual_seed(1))
    b = vf.augment(images, cfg, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, vf.augment(images, cfg, torch.Generator().manual_seed(2)))
    off = vf.AugmentConfig(crop_scale=1, crop_ratio=1, rotation=0, brightness=0, contrast=0, noise=0)
    assert torch.allclose(vf.augment(images, off, torch.Generator().manual_seed(0)), images, atol=1e-5)
    flipped = vf.augment(images, off.model_copy(update={"hflip": True}), torch.Generator().manual_seed(0))
    for view, image in zip(flipped, images):                              # each view: the image or its mirror
        assert torch.allclose(view, image, atol=1e-5) or torch.allclose(view, image.flip(-1), atol=1e-5)


def test_config_is_strict_and_checks_ranges():
    cfg = ClassificationTask.Config()
    assert cfg.features.kind == "simclr" and cfg.features.normalize and not cfg.features.augment.hflip
    assert FEATURES in ClassificationTask.outputs
    for bad in ({"colour": 1}, {"kind": "byol"}, {"dim": 0}, {"temperature": 0},
                {"augment": {"crop_scale": 0}}, {"augment": {"crop_scale": 1.5}}, {"augment": {"crop_ratio": 0.5}},
                {"augment": {"flip": True}}):
        with pytest.raises(Exception):
            ClassificationTask.Config(features=bad)


# ----------------------------------------------------------------------------------------------- the task's output
def test_simclr_features_are_deterministic_for_a_seed_and_normalised():
    a, b, c = make_task(), make_task(), make_task(seed=1)
    fa = features_of(a)
    assert fa.shape == (len(a.pool_ids()), 32) and fa.dtype == np.float32
    assert np.allclose(np.linalg.norm(fa, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(fa, features_of(b))
    fixed = make_task(seed=1, features={**TINY_SIMCLR, "seed": 0})     # the same pool, the encoder seeded by 0
    assert not np.array_equal(features_of(c), features_of(fixed))
    state = torch.random.get_rng_state()
    features_of(make_task(features={**TINY_SIMCLR, "normalize": False}))
    assert torch.equal(state, torch.random.get_rng_state())             # the global generator is left alone


def test_features_exist_before_fit_and_no_fit_changes_them(monkeypatch):
    task = make_task()
    ids = task.pool_ids()
    before = features_of(task)
    chunks = list(task.predict(ids[:70], {FEATURES, PROBS}))
    assert [c[FEATURES].shape for c in chunks] == [(70, 32)]              # one chunk, as the other outputs
    task.cfg.eval_batch_size = 32
    chunks = list(task.predict(ids[:70], {FEATURES, PROBS}))
    assert [c[FEATURES].shape[0] for c in chunks] == [c[PROBS].shape[0] for c in chunks] == [32, 32, 6]
    subset = [ids[5], ids[0], ids[17]]
    assert np.array_equal(features_of(task, subset), before[[5, 0, 17]])

    labels = labels_of(task, 40)
    task.fit(labels, Context(round=0, seed=0, budget=10, labels=labels))
    task.fit(labels, Context(round=1, seed=0, budget=10, labels=labels))
    assert np.array_equal(features_of(task), before)

    # under MC the features come without the sample axis; asked for alone, the classifier is not run
    out = next(task.predict(ids[:20], {FEATURES, PROBS}, MC(3, "dropout", 0)))
    assert out[PROBS].shape == (3, 20, 10) and np.array_equal(out[FEATURES], before[:20])

    def no_model(*args, **kwargs):
        raise AssertionError("the classifier ran")

    monkeypatch.setattr(task.model, "features", no_model)
    assert np.array_equal(features_of(task, mc=MC(2, "batchwise", 0)), before)


def test_pca_features_equal_scikit_learns_pca():
    task = make_task(features={"kind": "pca", "dim": 20, "normalize": False}, seed=3)
    x = task.pool.images.reshape(len(task.pool_ids()), -1).numpy()
    expected = PCA(n_components=20, random_state=3).fit_transform(x)
    got = features_of(task)
    assert got.shape == (len(x), 20)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    unit = features_of(make_task(features={"kind": "pca", "dim": 20}, seed=3))
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    assert features_of(make_task(features={"kind": "pca", "dim": 999})).shape == (len(x), 64)   # capped: 8x8


def test_pixel_features_are_the_flattened_images(tmp_path):
    task = make_task(tmp_path, features={"kind": "pixels", "normalize": False})
    flat = task.pool.images.reshape(len(task.pool_ids()), -1).numpy()
    assert np.array_equal(features_of(task), flat)
    assert not (tmp_path / "features").exists()                          # nothing to cache
    unit = features_of(make_task(features={"kind": "pixels"}))
    np.testing.assert_allclose(unit, flat / np.linalg.norm(flat, axis=1, keepdims=True), atol=1e-6)


# ----------------------------------------------------------------------------------------------- the frozen map
@pytest.mark.parametrize("kind", ["simclr", "pca", "pixels"])
def test_the_map_embeds_other_images_as_it_embeds_the_pool(kind):
    features = {"simclr": TINY_SIMCLR, "pca": {"kind": "pca", "dim": 20}, "pixels": {"kind": "pixels"}}[kind]
    task = make_task(features=features, seed=2)
    pool = features_of(task)
    assert np.array_equal(task.pool_features.embed(task.pool.images), pool)
    test = task.pool_features.embed(task.test.images)
    assert test.shape == (len(task.test), pool.shape[1]) and test.dtype == np.float32
    if kind == "simclr":        # the trained encoder, frozen, on the normalised images
        encoder = task.pool_features.feature_map().encoder
        assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
        with torch.no_grad():
            expected = encoder((task.test.images - task._mean) / task._std)
        expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    elif kind == "pca":         # the pool's principal components, applied to the test images
        x = task.pool.images.reshape(len(task.pool), -1).numpy()
        expected = PCA(n_components=20, random_state=2).fit(x).transform(task.test.images.reshape(len(test), -1))
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    else:
        expected = task.test.images.reshape(len(test), -1).numpy()
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(test, expected, atol=1e-5)


def test_the_pca_projection_is_cached_and_reused(tmp_path, pca_spy):
    features = {"kind": "pca", "dim": 20}
    first = make_task(tmp_path, features=features)
    test = first.pool_features.embed(first.test.images)
    names = [p.name for p in (tmp_path / "features").glob("*.npy")]
    assert len(pca_spy) == 1 and len(names) == 1 and names[0].endswith("-projection.npy")   # not the pool's yet
    pool = features_of(first)
    names = sorted(p.name for p in (tmp_path / "features").glob("*.npy"))
    assert len(pca_spy) == 1 and len(names) == 2 and names[0].endswith("-projection.npy")
    assert np.load(tmp_path / "features" / names[0]).shape == (21, 64)     # the mean, then 20 components
    again = make_task(tmp_path, features=features)
    assert np.array_equal(again.pool_features.embed(again.test.images), test)
    assert np.array_equal(features_of(again), pool) and len(pca_spy) == 1


def test_features_asked_for_inside_no_grad_still_train_the_encoder():
    task = make_task()
    with torch.no_grad():
        inside = features_of(task)
    assert np.array_equal(inside, features_of(make_task()))


# ----------------------------------------------------------------------------------------------- the cache
def test_cache_is_written_once_and_reused_by_a_resumed_task(tmp_path, spy):
    first = features_of(make_task(tmp_path))
    assert len(spy) == 1
    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    stem = files[0].split(".")[0].removesuffix("-encoder")
    assert stem.startswith("simclr-")                                    # the features and the encoder, same key
    assert files == [f"{stem}-encoder.json", f"{stem}-encoder.npy", f"{stem}.json", f"{stem}.npy"]
    record = json.loads((tmp_path / "features" / f"{stem}.json").read_text())
    assert record["shape"] == list(first.shape) and record["seed"] == 0 and record["seconds"] >= 0
    encoder = json.loads((tmp_path / "features" / f"{stem}-encoder.json").read_text())
    assert encoder["key"] == record["key"] and encoder["part"] == "encoder" and len(encoder["shape"]) == 1
    resumed = make_task(tmp_path)
    assert np.array_equal(features_of(resumed), first)
    assert len(spy) == 1                                                 # read back, not trained again
    assert resumed.pool_features.path == tmp_path / "features" / f"{stem}.npy"
    assert np.array_equal(resumed.pool_features.embed(resumed.pool.images), first)    # the cached encoder
    assert len(spy) == 1 and resumed.pool_features.map_path == tmp_path / "features" / f"{stem}-encoder.npy"


def test_another_setting_seed_or_data_makes_another_key(tmp_path, spy):
    cfg = vf.FeaturesConfig(**TINY_SIMCLR)
    key = vf.cache_key(cfg, 0, "data")
    assert vf.cache_key(cfg, 0, "data") == key
    for other in (vf.cache_key(cfg.model_copy(update={"temperature": 0.2}), 0, "data"),
                  vf.cache_key(cfg.model_copy(update={"augment": vf.AugmentConfig(noise=0.1)}), 0, "data"),
                  vf.cache_key(cfg, 1, "data"), vf.cache_key(cfg, 0, "other data")):
        assert other != key
    assert vf.cache_key(cfg.model_copy(update={"cache_dir": tmp_path}), 0, "data") == key   # where, not what

    features_of(make_task(tmp_path))
    features_of(make_task(tmp_path, features={**TINY_SIMCLR, "temperature": 0.2}))
    features_of(make_task(tmp_path, data={**SMALL, "max_pool": 150}))
    assert len(spy) == 3
    assert len(list((tmp_path / "features").glob("simclr-*.npy"))) == 6                # features + encoder each
    assert len(list((tmp_path / "features").glob("simclr-*-encoder.npy"))) == 3


def test_a_shared_cache_dir_serves_other_runs_of_the_same_pool(tmp_path, spy):
    shared = {**TINY_SIMCLR, "seed": 7, "cache_dir": str(tmp_path / "shared")}
    a = features_of(make_task(tmp_path / "run-a", features=shared))
    assert len(spy) == 1 and (tmp_path / "shared").is_dir() and not (tmp_path / "run-a" / "features").exists()
    assert np.array_equal(features_of(make_task(tmp_path / "run-b", features=shared)), a)
    assert len(spy) == 1
    # digits' pool depends on the run seed (the held-out test set is drawn with it): another pool, another key
    features_of(make_task(tmp_path / "run-c", seed=1, features=shared))
    assert len(spy) == 2


def damage_file(npy, damage):
    info = npy.with_suffix(".json")
    if damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "flipped":
        raw = bytearray(npy.read_bytes())
        raw[-7] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "stale key":
        info.write_text(json.dumps({**json.loads(info.read_text()), "key": "0" * 64}))
    elif damage == "wrong shape":
        np.save(npy, np.zeros((3, 32), np.float32))
    elif damage == "no record":
        info.unlink()
    else:
        info.write_text("{not json")


DAMAGES = ["truncated", "flipped", "stale key", "wrong shape", "no record", "garbage"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_or_stale_features_are_recomputed_from_the_cached_encoder(tmp_path, spy, damage):
    good = features_of(make_task(tmp_path))
    npy = features_file(tmp_path / "features")
    damage_file(npy, damage)
    with pytest.warns(UserWarning, match="ignoring the (unreadable )?features cache"):
        rebuilt = features_of(make_task(tmp_path))
    assert len(spy) == 1 and np.array_equal(rebuilt, good)               # the encoder was intact: not retrained
    assert np.array_equal(np.load(npy), good)                            # the cache is whole again
    features_of(make_task(tmp_path))
    assert len(spy) == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped", "stale key", "no record"])
@pytest.mark.parametrize("kind", ["simclr", "pca"])
def test_a_damaged_or_stale_map_is_rebuilt_not_used(tmp_path, spy, pca_spy, damage, kind):
    features = TINY_SIMCLR if kind == "simclr" else {"kind": "pca", "dim": 20}
    first = make_task(tmp_path, features=features)
    good, test = features_of(first), first.pool_features.embed(first.test.images)
    fits = spy if kind == "simclr" else pca_spy
    [npy] = (tmp_path / "features").glob(f"{kind}-*-{'encoder' if kind == 'simclr' else 'projection'}.npy")
    healthy = np.load(npy)
    damage_file(npy, damage)
    task = make_task(tmp_path, features=features)
    assert np.array_equal(features_of(task), good) and len(fits) == 1    # the features alone need no map
    with pytest.warns(UserWarning, match="ignoring the (unreadable )?features cache"):
        again = task.pool_features.embed(task.test.images)
    assert len(fits) == 2 and np.array_equal(again, test)                # fitted again: the same map
    assert np.array_equal(np.load(npy), healthy)                          # the cache is whole again
    make_task(tmp_path, features=features).pool_features.embed(task.test.images)
    assert len(fits) == 2


def test_an_unwritable_cache_folder_warns_and_still_gives_the_features(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="cannot cache the simclr (encoder|features)") as caught:
        got = features_of(make_task(features={**TINY_SIMCLR, "cache_dir": str(blocked)}))
    assert sorted(str(w.message).split()[4] for w in caught) == ["encoder", "features"]
    assert np.array_equal(got, features_of(make_task()))


def test_the_cache_is_written_atomically(tmp_path, monkeypatch):
    folder = tmp_path / "features"
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    vf.save_cache(folder, "x", "k", array, {})
    assert sorted(p.name for p in folder.iterdir()) == ["x.json", "x.npy"]        # no temporary file left
    assert np.array_equal(vf.load_cache(folder, "x", "k", (4, 3)), array)
    for key, shape in (("other", (4, 3)), ("k", (4, 2))):
        with pytest.warns(UserWarning, match="does not match"):
            assert vf.load_cache(folder, "x", key, shape) is None
    assert vf.load_cache(folder, "never", "k", (4, 3)) is None                     # no cache yet: no warning

    def broken(fh, *args, **kwargs):
        fh.write(b"\x93NUMPY half a file")
        raise OSError("disk full")

    monkeypatch.setattr(vf.np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        vf.save_cache(folder, "y", "k", array, {})
    assert sorted(p.name for p in folder.iterdir()) == ["x.json", "x.npy"]        # nothing half-written
