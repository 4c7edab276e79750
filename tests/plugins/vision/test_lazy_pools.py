"""Lazy pools (``task.params.data.lazy``): an image folder or a saved Hugging Face dataset read on access gives
exactly what the in-memory path gives (pixels, statistics, predictions, picks, metrics), stays lazy through the
test split and the caps, keeps memory far below the decoded pool, reports broken images as one line, and resumes
after kill -9 like any run."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision import datasets as vd
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Context, Env
from activelab.testing.runs import snapshot

datasets = pytest.importorskip("datasets")
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------------------------- data
def write_folder(root: Path, per_class: int = 10, mode: str = "RGB", size: int = 12) -> Path:
    rng = np.random.default_rng(1)
    for c in ("cat", "dog", "eel"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size + i % 3, size, 3)      # some need resizing
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def write_hf(path: Path, n: int = 60, mode: str = "RGB", as_dict: bool = False, tweak: int | None = None) -> Path:
    """``n`` random images of 10 x 10 in three classes; ``tweak``: that row's first pixel changed."""
    rng = np.random.default_rng(2)
    shape = (10, 10, 3) if mode == "RGB" else (10, 10)
    arrays = [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(n)]
    if tweak is not None:
        arrays[tweak][0, 0] ^= 1
    images = [Image.fromarray(a, mode) for a in arrays]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    ds = datasets.Dataset.from_dict({"img": images, "y": [i % 3 for i in range(n)]}, features=features)
    if as_dict:
        ds = datasets.DatasetDict({"train": ds, "test": ds.select(range(n // 4))})
    ds.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, dict]:
    """Data sections of the sources that read lazily: an RGB folder with a test folder, a grey folder, an RGB
    dataset and a grey DatasetDict (its own test split)."""
    base = tmp_path_factory.mktemp("lazy-data")
    write_folder(base / "rgb" / "train")
    write_folder(base / "rgb" / "test", per_class=3)
    write_folder(base / "grey", mode="L")
    return {
        "folder-rgb": {"kind": "imagefolder", "path": str(base / "rgb" / "train"),
                       "test_path": str(base / "rgb" / "test"), "image_size": 8, "channels": 3},
        "folder-grey": {"kind": "imagefolder", "path": str(base / "grey"), "image_size": 8, "max_pool": 17},
        "hf-rgb": {"kind": "hf_disk", "path": str(write_hf(base / "hf-rgb")), "image_column": "img",
                   "label_column": "y", "image_size": 8, "channels": 3, "max_pool": 31, "max_test": 9},
        "hf-grey": {"kind": "hf_disk", "path": str(write_hf(base / "hf-grey", mode="L", as_dict=True)),
                    "image_column": "img", "label_column": "y", "image_size": 6},
    }


def load(data: dict, lazy: bool) -> vd.VisionData:
    return vd.load_data(vd.DataConfig(**data, lazy=lazy), 0, allow_lazy=True)


def make_task(data: dict, lazy: bool, **params) -> ClassificationTask:
    params = {"epochs": 2, "min_steps": 6, "eval_batch_size": 7, **params}
    return ClassificationTask(ClassificationTask.Config(data={**data, "lazy": lazy}, **params),
                              Env(seed=0, progress=False))


# ----------------------------------------------------------------------------------------------- the source
@pytest.mark.parametrize("name", ["folder-rgb", "folder-grey", "hf-rgb", "hf-grey"])
def test_lazy_sets_hold_exactly_the_in_memory_pixels_and_stay_lazy(sources, name):
    eager, lazy = load(sources[name], False), load(sources[name], True)
    for e, z in ((eager.pool, lazy.pool), (eager.test, lazy.test)):
        assert isinstance(e.images, torch.Tensor) and vd.is_lazy(z.images)     # split and caps drew no pixels
        assert e.ids == z.ids and np.array_equal(e.labels, z.labels) and e.paths == z.paths
        assert z.images.shape == e.images.shape and z.images.dtype == e.images.dtype
        assert torch.equal(z.images[:], e.images)
        assert z.images[:].stride() == e.images.stride()          # RGB is channels-last in both
        picked = np.array([3, 0, 3, len(e) - 1])
        assert torch.equal(z.images[torch.from_numpy(picked)], e.images[torch.from_numpy(picked)])
        assert torch.equal(z.images[picked], e.images[torch.from_numpy(picked)])
        assert torch.equal(z.images[2], e.images[2]) and torch.equal(z.images[-1], e.images[-1])
        assert torch.equal(z.images[1:7:2], e.images[1:7:2])
        mask = np.arange(len(e)) % 2 == 0
        assert torch.equal(z.images[mask], e.images[torch.from_numpy(mask)])
        assert z.images[np.zeros(0, np.int64)].shape == (0, *e.images.shape[1:])
        sub = z.take(np.array([4, 1]))
        assert vd.is_lazy(sub.images) and torch.equal(sub.images[:], e.images[torch.tensor([4, 1])])
    mean_e, std_e = vd.channel_stats(eager.pool.images)
    mean_z, std_z = vd.channel_stats(lazy.pool.images)
    assert torch.equal(mean_e, mean_z) and torch.equal(std_e, std_z)      # a small pool is its whole sample


def test_the_statistics_of_a_large_lazy_pool_come_from_a_seeded_sample(sources, monkeypatch):
    data = load(sources["hf-rgb"], True)
    monkeypatch.setattr(vd, "SAMPLE_ITEMS", 10)
    sample = vd.sample_images(data.pool.images, "stats")
    assert sample.shape == (10, 3, 8, 8)
    assert torch.equal(sample, vd.sample_images(data.pool.images, "stats"))        # seeded by the data only
    rows = [int(np.flatnonzero((data.pool.images[:] == image).flatten(1).all(1))[0]) for image in sample]
    assert rows == sorted(rows) and len(set(rows)) == 10
    mean, std = vd.channel_stats(data.pool.images)
    assert torch.equal(mean, sample.mean(dim=(0, 2, 3), keepdim=True))
    full = data.pool.images[:]
    assert torch.allclose(mean, full.mean(dim=(0, 2, 3), keepdim=True), atol=0.1)
    assert std.shape == (1, 3, 1, 1) and float(std.min()) > 0
    monkeypatch.setattr(vd, "SAMPLE_BYTES", 3 * 4 * 8 * 8 * 4)         # the byte cap: four images' worth
    assert vd.sample_images(data.pool.images, "stats").shape[0] == 4


def test_auto_reads_large_sources_lazily_and_only_the_classification_task_may(sources, monkeypatch):
    hf = sources["hf-rgb"]
    assert not vd.is_lazy(vd.load_data(vd.DataConfig(**hf), 0, allow_lazy=True).pool.images)   # 60 images
    monkeypatch.setattr(vd, "LAZY_AUTO_ITEMS", 59)
    assert vd.is_lazy(vd.load_data(vd.DataConfig(**hf), 0, allow_lazy=True).pool.images)
    assert not vd.is_lazy(vd.load_data(vd.DataConfig(**hf), 0).pool.images)     # other tasks: in memory
    with pytest.raises(UserError, match=r"^task.params.data.lazy: only the classification task"):
        vd.load_data(vd.DataConfig(**hf, lazy=True), 0)
    with pytest.raises(UserError, match=r"^task.params.data.lazy: kind digits is read into memory"):
        vd.load_data(vd.DataConfig(kind="digits", lazy=True), 0, allow_lazy=True)
    assert not vd.is_lazy(vd.load_data(vd.DataConfig(kind="digits", lazy="auto"), 0, allow_lazy=True).pool.images)


# ----------------------------------------------------------------------------------------------- the task
@pytest.mark.parametrize("name", ["folder-rgb", "hf-grey"])
@pytest.mark.parametrize("params", [{}, {"model": "linear_probe", "features": {"kind": "pca", "dim": 6}},
                                    {"features": {"kind": "simclr", "max_steps": 2, "batch_size": 8, "dim": 8}},
                                    {"features": {"kind": "pixels"}}],
                         ids=["cnn", "probe-pca", "simclr", "pixels"])
def test_lazy_and_in_memory_tasks_train_predict_and_evaluate_identically(sources, name, params):
    eager, lazy = make_task(sources[name], False, **params), make_task(sources[name], True, **params)
    assert vd.is_lazy(lazy.pool.images) and not vd.is_lazy(eager.pool.images)
    assert torch.equal(eager._mean, lazy._mean) and torch.equal(eager._std, lazy._std)
    ids = eager.pool_ids()
    labels = {i: eager.true_label(i) for i in ids[::3]}
    for task in (eager, lazy):
        task.fit(labels, Context(round=0, seed=0, budget=5, labels=labels))
    for a, b in zip(eager.model.state_dict().values(), lazy.model.state_dict().values()):
        assert torch.equal(a, b)
    want = {PROBS, EMBEDDINGS, FEATURES}
    for a, b in zip(eager.predict(ids, want), lazy.predict(ids, want), strict=True):
        for key in want:
            assert np.array_equal(a[key], b[key]), key
    assert eager.evaluate() == lazy.evaluate()
    assert np.array_equal(eager.test_features(), lazy.test_features())
    assert lazy.data_fingerprint() == lazy.data_fingerprint() != eager.data_fingerprint()


def test_ceal_pseudo_labels_and_previews_of_a_lazy_pool(sources, tmp_path):
    params = {"pseudo_label": {"enabled": True, "delta0": 2.0, "dr": 0.0, "max_fraction": 0.5}}
    eager, lazy = make_task(sources["hf-rgb"], False, **params), make_task(sources["hf-rgb"], True, **params)
    ids = eager.pool_ids()
    labels = {i: eager.true_label(i) for i in ids[:6]}
    stats = [t.fit(labels, Context(round=r, seed=0, budget=5, labels=labels)) for t in (eager, lazy) for r in (0, 1)]
    assert stats[0:2] == stats[2:4] and stats[1]["n_pseudo"] > 0
    lazy.env = Env(seed=0, run_dir=tmp_path, progress=False)
    preview = Path(lazy.describe(ids[5])["image"])
    assert preview.parent == tmp_path / "previews" and preview.is_file()
    with pytest.raises(UserError, match=r"^task.params.data.lazy: .*set task.params.data.lazy: false"):
        lazy.pool_images()
    assert torch.equal(eager.pool_images(), lazy.pool.images[:])


def test_the_pixels_of_a_huge_lazy_pool_are_refused_whole_but_served_by_rows(sources, monkeypatch):
    from activelab.plugins.vision import features as vf
    task = make_task(sources["hf-rgb"], True, features={"kind": "pixels"})
    monkeypatch.setattr(vf, "PIXELS_MAX_BYTES", 1000)
    assert task.pool_features.rows(np.array([2, 0])).shape == (2, 3 * 8 * 8)
    with pytest.raises(UserError, match=r"^task.params.features.kind: pixels of the whole lazy pool"):
        task.pool_features.array()


def test_the_lazy_fingerprint_follows_the_stored_bytes(tmp_path):
    folder = write_folder(tmp_path / "f", per_class=4, mode="L")
    data = {"kind": "imagefolder", "path": str(folder), "image_size": 8, "test_fraction": 0.25}
    first = make_task(data, True).data_fingerprint()
    assert make_task(data, True).data_fingerprint() == first
    assert make_task({**data, "image_size": 7}, True).data_fingerprint() != first
    pixels = np.array(Image.open(folder / "dog" / "2.png"))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(folder / "dog" / "2.png")
    assert make_task(data, True).data_fingerprint() != first

    hf = {"kind": "hf_disk", "path": str(write_hf(tmp_path / "hf", n=24)), "image_column": "img",
          "label_column": "y", "image_size": 8}
    before = make_task(hf, True).data_fingerprint()
    assert make_task(hf, True).data_fingerprint() == before
    assert make_task({**hf, "path": str(write_hf(tmp_path / "same", n=24))}, True).data_fingerprint() == before
    changed = write_hf(tmp_path / "tweaked", n=24, tweak=3)
    assert make_task({**hf, "path": str(changed)}, True).data_fingerprint() != before


# ----------------------------------------------------------------------------------------------- runs
def run_recipe(tmp_path: Path, data: dict, name: str, **loop) -> Path:
    recipe = {"name": "lazy-run", "seed": 3,
              "task": {"plugin": "vision", "name": "classification",
                       "params": {"data": data, "epochs": 2, "min_steps": 8, "eval_batch_size": 16,
                                  "pseudo_label": {"enabled": True, "delta0": 1.0, "dr": 0.0}}},
              "scorer": {"name": "entropy"}, "oracle": {"name": "simulated"},
              "loop": {"rounds": 2, "initial": 9, "batch": 6, **loop}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    return out


@pytest.mark.parametrize("name", ["folder-grey", "hf-rgb"])
def test_a_lazy_run_queries_and_scores_what_an_in_memory_run_does(sources, tmp_path, name):
    eager = snapshot(run_recipe(tmp_path, {**sources[name], "lazy": False}, "eager"))
    lazy = snapshot(run_recipe(tmp_path, {**sources[name], "lazy": True}, "lazy"))
    assert lazy == eager and len(eager[1]) == 3          # labels, batches of rounds 0..2, metrics (no timings)


def test_a_broken_image_of_a_lazy_folder_stops_the_run_with_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "f", per_class=8, mode="L")
    (folder / "dog" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    data = {"kind": "imagefolder", "path": str(folder), "image_size": 8, "lazy": True}
    loaded = vd.load_data(vd.DataConfig(**data), 0, allow_lazy=True)      # only the first image is read at load
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "broken", "task": {"plugin": "vision", "name": "classification",
                                                                 "params": {"data": data, "epochs": 1}},
                                      "scorer": {"name": "entropy"}, "loop": {"rounds": 1, "initial": 4, "batch": 2}}))
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1 and "task.params.data.path" in err[0] and "5.png" in err[0], err
    assert "cannot read image" in err[0] and len(loaded.pool) + len(loaded.test) == 24
    (folder / "cat" / "0.png").write_bytes(b"nothing")                     # the first image: refused at load
    with pytest.raises(UserError, match=r"^task.params.data.path: cannot read image .*cat/0.png"):
        vd.load_data(vd.DataConfig(**data), 0, allow_lazy=True)


def test_a_lazy_hf_column_of_no_images_is_refused_at_load(tmp_path):
    path = tmp_path / "hf"
    datasets.Dataset.from_dict({"img": ["not an image"] * 6, "y": [0, 1] * 3}).save_to_disk(str(path))
    with pytest.raises(UserError, match=r"^task.params.data.image_column: .*'img' of row 0 of the dataset"):
        vd.load_data(vd.DataConfig(kind="hf_disk", path=str(path), image_column="img", label_column="y", lazy=True),
                     0, allow_lazy=True)


# ----------------------------------------------------------------------------------------------- memory
MEMORY_PROBE = textwrap.dedent("""
    import json, sys, numpy as np, torch
    torch.set_num_threads(1)
    def rss_mb():
        pages = int(open("/proc/self/statm").read().split()[1])
        return pages * 4096 / 2**20
    def hwm_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    from activelab.plugins.vision.classification import ClassificationTask
    from activelab.protocol import Env, PROBS
    data = {"kind": "hf_disk", "path": sys.argv[1], "image_size": 28, "lazy": True}
    def build(**caps):
        config = ClassificationTask.Config(data={**data, **caps}, eval_batch_size=64)
        return ClassificationTask(config, Env(seed=0, progress=False))
    warm = build(max_pool=100, max_test=20)        # the libraries' own memory (torch, Arrow, PIL) in the baseline
    list(warm.predict(warm.pool_ids(), {PROBS}))
    del warm
    before, hwm_before = rss_mb(), hwm_mb()
    task = build()
    built, hwm_built = rss_mb(), hwm_mb()
    ids = task.pool_ids()[:20000]
    n = sum(len(out[PROBS]) for out in task.predict(ids, {PROBS}))
    print(json.dumps({"lazy": type(task.pool.images).__name__, "pool": len(task.pool), "predicted": n,
                      "before": before, "built": built, "hwm_before": hwm_before, "hwm_built": hwm_built,
                      "after": rss_mb(), "hwm_after": hwm_mb()}))
""")


@pytest.mark.slow
def test_building_a_task_on_50000_images_keeps_memory_far_below_the_decoded_pool(tmp_path):
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(200):      # 200 distinct digit-like PNGs (a blot on black), repeated: quick to write
        pixels = np.zeros((28, 28), np.uint8)
        y, x = rng.integers(4, 16, size=2)
        pixels[y:y + 9, x:x + 9] = rng.integers(0, 255, (9, 9), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    n = 50_000
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": pngs[i % 200], "path": None} for i in range(n)],
                                     "label": [i % 10 for i in range(n)]}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"), num_proc=None)
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "hf")], capture_output=True,
                           text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert probe.returncode == 0, probe.stderr
    m = json.loads(probe.stdout.strip().splitlines()[-1])
    decoded_mb = n * 28 * 28 * 4 / 2**20        # 150 MB as a float32 tensor
    assert m["lazy"] == "LazyImages" and m["pool"] == 37_500 and m["predicted"] == 20_000, m
    # building keeps the pool in its files: afterwards ids, labels and mapped pages (measured: 12% of the decoded
    # pool); at the peak also the statistics' sample of 10,000 images (30 MB, 20%; measured: 31% in all); scoring
    # 20,000 items decodes one chunk of 64 at a time (measured: 34%). In memory it would be 100% and more.
    assert m["built"] - m["before"] < 0.2 * decoded_mb, m
    assert m["hwm_built"] - m["before"] < 0.5 * decoded_mb, m
    assert m["hwm_after"] - m["before"] < 0.5 * decoded_mb, m


# ----------------------------------------------------------------------------------------------- kill -9
@pytest.mark.slow
def test_a_lazy_run_resumes_after_sigkill_like_the_others(tmp_path):
    """The CEAL kill -9 test of tests/core/test_kill_resume.py, on a saved Hugging Face dataset read lazily."""
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "tests" / "core" / "test_kill_resume.py")
    kill_resume = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_resume)
    rng = np.random.default_rng(4)
    n = 600
    images = [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("abc"))})
    datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]},
                               features=features).save_to_disk(str(tmp_path / "hf"))
    recipe = json.loads(json.dumps(kill_resume.CEAL))
    recipe["name"] = "ceal-lazy-kill"
    recipe["task"]["params"]["data"] = {"kind": "hf_disk", "path": str(tmp_path / "hf"), "image_size": 8,
                                        "max_pool": 500, "max_test": 100, "lazy": True}
    kill_resume.test_sigkill_at_random_moments_then_resume(tmp_path, recipe)


@pytest.mark.slow
def test_a_lazy_run_on_two_processes_picks_what_one_process_picks(sources, tmp_path):
    """--nproc 2 on a lazy pool: each worker decodes only its share of the query's chunks, rank 0 gathers the
    scores; the labels, batches and metrics are those of the one-process run."""
    data = {**sources["hf-rgb"], "lazy": True}
    one = run_recipe(tmp_path, data, "one")
    two = tmp_path / "two"
    done = subprocess.run([str(Path(sys.executable).parent / "activelab"), "run", str(tmp_path / "one.yaml"),
                           "--out", str(two), "-q", "--nproc", "2"],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert snapshot(two) == snapshot(one) and len(snapshot(one)[1]) == 3
    assert json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 2
