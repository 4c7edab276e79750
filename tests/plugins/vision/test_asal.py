"""ASAL (Mayer & Timofte, WACV 2020): the vision plugin's ``asal`` scorer, its DCGAN, its faiss matching."""
from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision import asal as asal_module
from activelab.plugins.vision.asal import (
    ASAL,
    ASALConfig,
    GANConfig,
    build_index,
    canvas,
    flat_state,
    match_nearest,
    train_dcgan,
)
from activelab.plugins.vision.classification import IMAGES, ClassificationConfig, ClassificationTask
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Candidates, Context, Env
from activelab.recipe import RecipeError, load
from activelab.testing import ScorerConformance
from activelab.testing.conformance import fitted_toy_task

ROOT = Path(__file__).resolve().parents[3]
DIGITS = {"data": {"kind": "digits", "test_fraction": 0.25}, "epochs": 3, "min_steps": 30,
          "features": {"kind": "pca", "dim": 16}}
TINY_GAN = {"steps": 30, "width": 8, "latent_dim": 16, "batch_size": 32}


# ----------------------------------------------------------------------------------------------- helpers
def new_task(run_dir: Path | None = None, **params) -> ClassificationTask:
    cfg = ClassificationConfig.model_validate({**DIGITS, **params})
    return ClassificationTask(cfg, Env(seed=0, run_dir=run_dir, progress=False))


@lru_cache(maxsize=4)
def _state(model: str) -> dict:
    task = new_task(model=model)
    ids = task.pool_ids()
    task.fit({i: task.true_label(i) for i in ids[:20]}, Context(round=0, seed=0, budget=10, labels={},
                                                                 progress=False))
    return task.state_dict()


def fitted(run_dir: Path | None = None, model: str = "small_cnn") -> ClassificationTask:
    """A digits task trained on its first 20 pool items (trained once per process)."""
    task = new_task(run_dir, model=model)
    task.load_state_dict(_state(model))
    return task


def scorer(run_dir: Path | None = None, seed: int = 0, **params) -> ASAL:
    params = {"gan": TINY_GAN, "n_samples": 200, **params}
    return ASAL(ASALConfig.model_validate(params), Env(seed=seed, run_dir=run_dir, progress=False))


def setting(task, round: int = 1, budget: int = 8, run_dir: Path | None = None, n_labels: int = 20):
    ids = task.pool_ids()
    labels = {i: task.true_label(i) for i in ids[:n_labels]}
    return Candidates(ids, np.arange(n_labels, len(ids))), Context(round=round, seed=0, budget=budget,
                                                                   labels=labels, run_dir=run_dir, progress=False)


def greedy_nearest(points: np.ndarray, queries: np.ndarray, allowed: np.ndarray) -> list[int]:
    """The unique greedy assignment by brute force in float64: each query in turn takes its nearest free row."""
    free = allowed.copy()
    out = []
    for q in queries.astype(np.float64):
        d = ((points.astype(np.float64) - q) ** 2).sum(axis=1)
        d[~free] = np.inf
        best = int(np.argmin(d))
        out.append(best if np.isfinite(d[best]) else -1)
        if out[-1] >= 0:
            free[best] = False
    return out


# ----------------------------------------------------------------------------------------------- conformance
class TestASALConformance(ScorerConformance):
    covers = ("vision", "scorer", "asal")

    def make_scorer(self):
        return scorer()

    def make_task(self):
        return fitted()


# ----------------------------------------------------------------------------------------------- matching
@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_matches_are_the_true_nearest_neighbours_on_a_planted_set(kind):
    """Queries planted next to known rows match those rows; a labelled row or one an earlier query took passes the
    match on to the next nearest, exactly as a brute-force greedy does (IVF searching every list is exact)."""
    rng = np.random.default_rng(0)
    points = rng.standard_normal((2000, 16)).astype(np.float32)
    planted = rng.choice(2000, size=60, replace=False)
    queries = points[planted] + 0.01 * rng.standard_normal((60, 16)).astype(np.float32)
    index = build_index(points, kind, nlist=20, nprobe=20, seed=0)
    allowed = np.ones(2000, dtype=bool)
    np.testing.assert_array_equal(match_nearest(index, queries, allowed), planted)
    allowed[planted[::3]] = False                         # labelled: their queries go to the next nearest
    queries[10] = queries[11]                             # two queries after one row: the second takes the next
    matched = match_nearest(index, queries, allowed, start=2)     # few hits per search: the widening is exercised
    assert matched.tolist() == greedy_nearest(points, queries, allowed)
    assert len(set(matched.tolist())) == 60 and allowed[matched].all()
    assert matched[11] != planted[11] and matched[1] == planted[1]


def test_matching_stops_when_nothing_is_left():
    points = np.eye(4, dtype=np.float32)
    allowed = np.array([True, False, True, False])
    matched = match_nearest(build_index(points), points, allowed)
    assert sorted(matched[matched >= 0].tolist()) == [0, 2] and (matched == -1).sum() == 2


def test_the_scorer_labels_the_true_nearest_real_items():
    """End to end: each chosen item is the nearest unlabelled candidate (brute force over the task's features) of
    its generated sample, taken in order of decreasing entropy; the top-k of the scores is that batch."""
    task = fitted()
    candidates, ctx = setting(task, budget=12)
    asal = scorer()
    scores = asal.score(task, candidates, ctx)
    last = asal.last
    assert np.all(np.diff(last["entropy"]) <= 0)
    features = np.concatenate([out[FEATURES] for out in task.predict(candidates, {FEATURES})])
    expected = greedy_nearest(features, last["queries"], np.ones(len(candidates), dtype=bool))
    assert last["picks"].tolist() == expected
    top = np.argsort(-scores, kind="stable")[:12]
    assert top.tolist() == expected and len(set(expected)) == 12
    rows = candidates.rows[top]
    assert not set(np.asarray(task.pool_ids())[rows]) & set(ctx.labels)


def test_a_labelled_item_is_never_matched_even_among_the_candidates():
    task = fitted()
    ids = task.pool_ids()
    candidates = Candidates(ids)                          # every item, labelled ones included
    labels = {i: task.true_label(i) for i in ids[:600]}   # most of the nearest items are labelled
    ctx = Context(round=1, seed=0, budget=10, labels=labels, progress=False)
    scores = scorer().score(task, candidates, ctx)
    chosen = {ids[i] for i in np.argsort(-scores, kind="stable")[:10]}
    assert len(chosen) == 10 and not chosen & set(labels)


def test_subsampled_candidates_and_embeddings_are_matched_among_the_candidates():
    task = fitted()
    ids = task.pool_ids()
    candidates = Candidates(ids, np.arange(100, 160))     # fewer than half the pool: an index of them alone
    ctx = Context(round=1, seed=0, budget=5, labels={}, progress=False)
    for space in ("features", "embeddings"):
        asal = scorer(space=space)
        scores = asal.score(task, candidates, ctx)
        name = FEATURES if space == "features" else EMBEDDINGS
        points = np.concatenate([out[name] for out in task.predict(candidates, {name})])
        assert asal.last["picks"].tolist() == greedy_nearest(points, asal.last["queries"], np.ones(60, bool))
        assert np.count_nonzero(scores) == 5


# ----------------------------------------------------------------------------------------------- the generator
def test_the_generator_is_trained_once_and_reused_across_rounds_and_runs(tmp_path, monkeypatch):
    task = fitted(tmp_path)
    asal = scorer(tmp_path)
    first = asal.score(task, *setting(task, round=1, run_dir=tmp_path))
    assert asal.last["cost"]["gan_seconds"] > 0
    cached = sorted(p.name for p in (tmp_path / "asal").glob("generator-*"))
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".npy")
    asal.score(task, *setting(task, round=2, run_dir=tmp_path, n_labels=28))
    assert asal.last["cost"]["gan_seconds"] == 0 and asal.last["generation"] == 0

    def refuse(*args, **kwargs):
        raise AssertionError("the cached generator was trained again")

    monkeypatch.setattr(asal_module, "train_dcgan", refuse)
    again = scorer(tmp_path)                          # a resumed run: a new scorer reads the cached generator
    np.testing.assert_array_equal(again.score(fitted(tmp_path), *setting(task, round=1, run_dir=tmp_path)), first)
    assert again.last["cost"]["gan_seconds"] == 0
    lines = [json.loads(x) for x in (tmp_path / "asal" / "cost.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2, 1]
    assert {"gan_seconds", "sample_seconds", "optimise_seconds", "index_seconds", "search_seconds"} <= set(lines[0])
    assert (tmp_path / "asal" / "round_1.png").stat().st_size > 0 and (tmp_path / "asal" / "round_2.png").exists()


def test_retrain_every_trains_a_new_generator_when_asked(tmp_path):
    task = fitted()
    asal = scorer(retrain_every=2)
    assert [asal.generation(r) for r in (1, 2, 3, 4, 5)] == [0, 0, 1, 1, 2]
    trained = []
    for r in (1, 2, 3):
        asal.score(task, *setting(task, round=r))
        trained.append(asal.last["cost"]["gan_seconds"] > 0)
    assert trained == [True, False, True]
    assert asal.cache_key(task, 0) != asal.cache_key(task, 1)
    assert scorer().generation(7) == 0


def test_a_damaged_cached_generator_is_trained_again(tmp_path):
    task = fitted()
    asal = scorer(tmp_path)
    first = asal.score(task, *setting(task, run_dir=tmp_path))
    npy = next((tmp_path / "asal").glob("generator-*.npy"))
    npy.write_bytes(npy.read_bytes()[:-40])
    again = scorer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(again.score(task, *setting(task, run_dir=tmp_path)), first)
    assert again.last["cost"]["gan_seconds"] > 0


def test_gan_training_is_deterministic_and_seeded():
    images = fitted().pool_images()[:200]
    cfg = GANConfig(**TINY_GAN)
    a, b = (flat_state(train_dcgan(images, cfg, 3, torch.device("cpu"))) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, flat_state(train_dcgan(images, cfg, 4, torch.device("cpu"))))
    state = torch.random.get_rng_state()
    train_dcgan(images, cfg, 3, torch.device("cpu"))
    assert torch.equal(state, torch.random.get_rng_state())     # the global generator is left alone


def test_the_gan_handles_other_image_sizes():
    assert canvas(8, 8, 64) == (8, 8) and canvas(28, 28, 64) == (28, 28) and canvas(30, 18, 64) == (32, 20)
    assert canvas(224, 112, 64) == (64, 32)
    images = torch.rand(40, 3, 30, 18)
    gen = train_dcgan(images, GANConfig(**{**TINY_GAN, "steps": 2}), 0, torch.device("cpu"))
    gan = asal_module.DCGAN(gen, (30, 18), torch.device("cpu"))
    out = gan.sample(torch.zeros(5, 16))
    assert out.shape == (5, 3, 30, 18) and out.min() >= 0 and out.max() <= 1


def test_generation_optimise_raises_the_entropy():
    task = fitted()
    candidates, ctx = setting(task, budget=8)
    sampled, optimised = scorer(), scorer(generation="optimise", optimise_steps=5)
    sampled.score(task, candidates, ctx)
    optimised.score(task, candidates, ctx)
    assert optimised.last["entropy"].mean() > sampled.last["entropy"].mean()
    assert optimised.last["cost"]["optimise_seconds"] > 0
    probe = fitted(model="linear_probe")
    with pytest.raises(UserError, match="linear_probe"):
        scorer(generation="optimise").score(probe, *setting(probe))
    scorer().score(probe, *setting(probe))     # sampling works on the probe


# ----------------------------------------------------------------------------------------------- the task side
def test_predict_images_agrees_with_predict_on_pool_images():
    for model in ("small_cnn", "linear_probe"):
        task = fitted(model=model)
        ids = task.pool_ids()[:50]
        want = {PROBS, EMBEDDINGS, FEATURES}
        pooled = {k: np.concatenate([out[k] for out in task.predict(ids, want)]) for k in want}
        direct = task.predict_images(task.pool_images()[:50], want)
        for name in want:
            np.testing.assert_allclose(direct[name], pooled[name], rtol=1e-5, atol=1e-6)
    assert IMAGES in ClassificationTask.outputs


# ----------------------------------------------------------------------------------------------- errors
def test_bad_parameters_are_one_line_errors(tmp_path):
    for bad in ({"n_samples": 0}, {"gan": {"steps": 0}}, {"space": "pixels"}, {"retrain_every": 0},
                {"gan": {"stepz": 10}}, {"nprobe": 0}):
        with pytest.raises(ValidationError):
            ASALConfig.model_validate(bad)
    recipe = yaml.safe_load((ROOT / "recipes" / "asal_mnist.yaml").read_text())
    recipe["scorer"]["params"] = {"n_samples": 0, "gan": {"steps": -1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as err:
        load(path)
    assert any("scorer.params.n_samples" in line for line in err.value.lines())
    assert any("scorer.params.gan.steps" in line for line in err.value.lines())
    assert all("\n" not in line for line in err.value.lines())


def test_a_task_without_what_asal_needs_is_refused(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "asal_mnist.yaml").read_text())
    recipe["task"] = {"plugin": "vision", "name": "rotation", "params": {"data": {"kind": "digits"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="scorer 'asal' needs .*images"):
        load(path)
    toy = fitted_toy_task()
    ids = list(toy.pool_ids())
    with pytest.raises(UserError, match="^scorer asal needs a task that classifies generated images.*ToyTask"):
        scorer().score(toy, ids[20:40], Context(round=1, seed=0, budget=3, labels={}, progress=False))


# ----------------------------------------------------------------------------------------------- the recipe
def test_the_recipe_runs_end_to_end(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "asal_mnist.yaml").read_text())
    assert recipe["scorer"]["name"] == "asal" and set(recipe["strategies"]) == {"asal", "entropy", "random"}
    recipe["task"]["params"].update(data={"kind": "digits"}, epochs=2, min_steps=10,
                                    features={"kind": "pca", "dim": 16})
    recipe["scorer"]["params"]["gan"].update(TINY_GAN, cache_dir=str(tmp_path / "cache"))
    recipe["loop"] = {"initial": 20, "batch": 10, "rounds": 2}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [20, 30, 40]
    assert sorted(p.name for p in (tmp_path / "run" / "asal").glob("round_*.png")) == ["round_1.png", "round_2.png"]
    assert len(list((tmp_path / "cache").glob("generator-*.npy"))) == 1
