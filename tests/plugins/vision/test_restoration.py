"""Restoration with on-demand learning (query synthesis): the corruption generators produce the card's ranges,
the feedback rule gives the worst-restored level the most samples, the baselines' fixed allocations, the task's
exact state round trip, data errors, and tiny end-to-end runs through the CLI."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError
from scipy import stats

from activelab import recipe as recipes
from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision import corruptions as C
from activelab.plugins.vision.ondemand import Corruptor, InversePSNR, Schedule, sample_seed, schedule_levels
from activelab.plugins.vision.restoration import (
    LEVEL_PSNR,
    EncoderDecoder,
    RestorationConfig,
    RestorationTask,
    parse_item,
)
from activelab.protocol import Context, Env, Label, collect_scores
from activelab.strategies.selectors import Proportional
from activelab.testing import OracleConformance, ScorerConformance, SelectorConformance, TaskConformance, make_context

torch.set_num_threads(1)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
LEVELS = range(1, 6)
TINY = {"data": {"kind": "skimage", "names": ["camera", "coins", "moon", "astronaut"], "scale": 0.25},
        "crop_size": 16, "width": 8, "n_val": 4, "n_test": 6, "examples": 2, "batch_size": 25, "lr": 1e-3}


def tiny_task(run_dir=None, seed=0, **params) -> RestorationTask:
    cfg = RestorationConfig.model_validate({**TINY, **params})
    return RestorationTask(cfg, Env(seed=seed, run_dir=run_dir, progress=False))


def round_labels(round: int, counts=(20, 20, 20, 20, 20), seed: int = 0) -> dict:
    return {f"level{lv}@{round}": {"level": lv, "count": n, "seed": sample_seed(seed, round, f"level{lv}")}
            for lv, n in zip(LEVELS, counts)}


def ctx(round: int, labels=None, seed: int = 0) -> Context:
    return Context(round=round, seed=seed, budget=100, labels=labels or {}, progress=False)


# ------------------------------------------------------------------------------------ corruption ranges
def _uniformity(values: np.ndarray, low: float, high: float) -> None:
    assert values.min() >= low - 1e-9 and values.max() <= high + 1e-9, (values.min(), values.max(), low, high)
    assert stats.kstest(values, stats.uniform(loc=low, scale=high - low).cdf).pvalue > 1e-3


def test_card_level_ranges_on_64px_crops():
    assert [C.level_range("denoise", lv) for lv in LEVELS] == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]
    assert [C.level_range("inpaint", lv) for lv in LEVELS] == [(1, 6), (7, 12), (13, 18), (19, 24), (25, 30)]
    assert [C.level_range("deblur", lv) for lv in LEVELS] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert np.allclose([C.level_range("interpolate", lv) for lv in LEVELS],
                       [(0, .15), (.15, .30), (.30, .45), (.45, .60), (.60, .75)])
    # pixel sizes scale with the crop; noise and fractions do not
    assert [C.level_range("inpaint", lv, 32) for lv in LEVELS] == [(1, 3), (4, 6), (7, 9), (10, 12), (13, 15)]
    assert C.level_range("deblur", 5, 32) == (2.0, 2.5)
    assert C.level_range("deblur", 5, 32, scale_sizes=False) == (4, 5)
    assert C.level_range("denoise", 3, 32) == C.level_range("denoise", 3)
    with pytest.raises(ValueError):
        C.level_range("denoise", 6)


@pytest.mark.parametrize("level", LEVELS)
def test_denoise_noise_sigma_matches_the_level(level):
    n, size = 400, 32
    clean = torch.full((n, 1, size, size), 0.5)
    noisy, params = C.corrupt("denoise", clean, level, np.random.default_rng(level))
    sigma = np.array([p[0] for p in params])
    _uniformity(sigma, 20 * level - 20, 20 * level)
    # the median absolute deviation is untouched by clipping at 0 and 1 (|z| = 0.674 sigma < 0.5 for sigma <= 100/255)
    estimate = np.median(np.abs((noisy - clean).numpy().reshape(n, -1)), axis=1) / 0.6745 * 255
    big = sigma > 5
    assert np.median(np.abs(estimate[big] / sigma[big] - 1)) < 0.05
    assert abs(estimate.mean() - (20 * level - 10)) < 2.0
    assert noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("crop", [64, 32])
@pytest.mark.parametrize("level", LEVELS)
def test_inpaint_hole_is_a_square_of_the_level_size(level, crop):
    n = 300
    clean = torch.rand((n, 3, crop, crop), generator=torch.Generator().manual_seed(level))
    fill = torch.tensor([0.2, 0.4, 0.6])
    holed, params = C.corrupt("inpaint", clean, level, np.random.default_rng(level), fill=fill)
    low, high = C.level_range("inpaint", level, crop)
    sides = []
    for i in range(n):
        changed = (holed[i] != clean[i]).any(0)
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        side = len(rows)
        assert side == len(cols) == int(params[i][0]) and changed.sum() == side * side       # a full square
        assert rows[-1] - rows[0] + 1 == side
        assert torch.all(holed[i][:, changed] == fill[:, None])                           # the mean colour
        sides.append(side)
    sides = np.array(sides)
    assert sides.min() >= low and sides.max() <= high
    assert set(sides) == set(range(int(low), int(high) + 1))                                # every size occurs
    counts = np.bincount(sides - int(low))
    assert stats.chisquare(counts).pvalue > 1e-3                                            # uniform sizes


@pytest.mark.parametrize("level", LEVELS)
def test_deblur_kernel_widths_match_the_level(level):
    n, size = 200, 64
    clean = torch.zeros((n, 1, size, size))
    clean[:, :, size // 2, size // 2] = 1.0                # an impulse: the blurred image is the kernel
    blurred, params = C.corrupt("deblur", clean, level, np.random.default_rng(level))
    sxy = np.stack(params)
    assert sxy.shape == (n, 2)
    _uniformity(sxy[:, 0], level - 1, level)
    _uniformity(sxy[:, 1], level - 1, level)
    assert abs(np.corrcoef(sxy[:, 0], sxy[:, 1])[0, 1]) < 0.3   # the two axes are drawn independently
    k = blurred[:, 0].numpy().astype(np.float64)
    assert np.allclose(k.sum((1, 2)), 1.0, atol=1e-4)
    x = np.arange(size) - size // 2
    var_x = (k.sum(1) * x ** 2).sum(1)
    var_y = (k.sum(2) * x ** 2).sum(1)
    wide = sxy.min(1) > 0.8                               # small sigmas are dominated by the pixel grid
    if wide.any():
        # truncated at 3 sigma: the kernel's variance is 0.973 sigma^2
        assert np.allclose(np.sqrt(var_x[wide] / 0.973), sxy[wide, 0], rtol=0.03)
        assert np.allclose(np.sqrt(var_y[wide] / 0.973), sxy[wide, 1], rtol=0.03)


def test_deblur_gets_harder_with_the_level():
    img = torch.rand((50, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    err = [float(((C.corrupt("deblur", img, lv, np.random.default_rng(0))[0] - img) ** 2).mean()) for lv in LEVELS]
    assert err == sorted(err) and err[0] < err[-1]


@pytest.mark.parametrize("level", LEVELS)
def test_interpolate_removes_the_level_fraction_of_pixels(level):
    n, size = 300, 32
    clean = torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(level))
    fill = torch.tensor([0.3, 0.5, 0.7])
    out, params = C.corrupt("interpolate", clean, level, np.random.default_rng(level), fill=fill)
    p = np.array([q[0] for q in params])
    _uniformity(p, (15 * level - 15) / 100, 15 * level / 100)
    removed = (out != clean).any(1)                                    # the same pixels in every channel
    assert torch.equal((out != clean).all(1), removed)
    frac = removed.float().mean((1, 2)).numpy()
    # exactly the drawn fraction of the pixels (rounded to whole pixels), not a binomial draw around it
    assert np.array_equal(removed.sum((1, 2)).numpy(), np.round(p * size ** 2).astype(np.int64))
    assert abs(frac.mean() - (15 * level - 7.5) / 100) < 0.01


def test_corrupt_is_deterministic_and_mixes_levels_in_one_batch():
    clean = torch.rand((10, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    levels = [1, 5, 3, 3, 2, 5, 1, 4, 4, 2]
    for task in C.TASKS:
        a, pa = C.corrupt(task, clean, levels, np.random.default_rng(7))
        b, pb = C.corrupt(task, clean, levels, np.random.default_rng(7))
        assert torch.equal(a, b) and all(np.array_equal(x, y) for x, y in zip(pa, pb))
        for lv, p in zip(levels, pa):
            low, high = C.level_range(task, lv, 16)
            assert np.all((p >= low - 1e-9) & (p <= high + 1e-9))
    with pytest.raises(ValueError, match="unknown restoration task"):
        C.corrupt("sharpen", clean, 1, np.random.default_rng(0))


# ------------------------------------------------------------------------------------ the feedback rule
class _FixedPSNR:
    """A stand-in task whose validation PSNR per level is given."""

    outputs = frozenset({LEVEL_PSNR})

    def __init__(self, psnr):
        self.psnr = np.asarray(psnr, dtype=np.float64)

    def predict(self, ids, want, mc=None):
        yield {LEVEL_PSNR: self.psnr[[parse_item(i)[0] - 1 for i in ids]]}


def test_feedback_gives_the_lowest_psnr_level_the_most_samples():
    ids = [f"level{lv}" for lv in LEVELS]
    for psnr in ([30.0, 28.0, 25.0, 22.0, 18.0], [21.0, 35.0, 19.0, 30.0, 27.0]):
        scores = collect_scores(InversePSNR().score(_FixedPSNR(psnr), ids, ctx(3)))
        np.testing.assert_allclose(scores, 1.0 / np.asarray(psnr))
        chosen = Proportional().select(ids, scores, 1000, ctx(3))
        counts = np.array([Counter(chosen)[i] for i in ids])
        assert counts.sum() == 1000
        assert counts.argmax() == int(np.argmin(psnr))                          # the worst level gets the most
        assert list(np.argsort(-counts, kind="stable")) == list(np.argsort(psnr, kind="stable"))
        expected = 1000 * (1 / np.asarray(psnr)) / np.sum(1 / np.asarray(psnr))   # B_i = B (1/PSNR_i) / sum 1/PSNR_j
        assert np.all(np.abs(counts - expected) < 1)
    # round 0 (no model, no scores): equal shares, 20 of every 100
    assert Counter(Proportional().select(ids, None, 100, ctx(0))) == {i: 20 for i in ids}


def test_inverse_psnr_is_finite_for_a_useless_model():
    scores = collect_scores(InversePSNR().score(_FixedPSNR([0.0, 0.5, 3.0, 100.0, 10.0]),
                                                ["level1", "level2", "level3", "level4", "level5"], ctx(1)))
    assert np.all(np.isfinite(scores)) and scores[0] == scores[1] == 1.0


def test_feedback_on_a_real_model_follows_its_validation_psnr():
    task = tiny_task(task="denoise")
    labels = round_labels(0)
    task.fit(labels, ctx(0, labels))
    psnr = collect_scores(iter([c[LEVEL_PSNR] for c in task.predict(task.pool_ids(), {LEVEL_PSNR})]))
    assert np.all(np.diff(psnr) < 0)                   # more noise, worse restoration
    chosen = Proportional().select(task.pool_ids(), InversePSNR().score(task, task.pool_ids(), ctx(1, labels)), 500,
                                   ctx(1))
    counts = [Counter(chosen)[i] for i in task.pool_ids()]
    assert counts == sorted(counts) and counts[-1] > counts[0]


# ------------------------------------------------------------------------------------ baselines
def test_baseline_schedules():
    ids = [f"level{lv}" for lv in LEVELS]

    def alloc(round, k=100, **cfg):
        chosen = Schedule(Schedule.Config(**cfg)).select(ids, None, k, ctx(round))
        return [Counter(chosen)[i] for i in ids]

    for r in (0, 1, 7):
        assert alloc(r, mode="joint") == [20] * 5
        assert alloc(r, mode="fixated", level=4) == [0, 0, 0, 100, 0]
    assert alloc(0, 102, mode="joint") == [21, 21, 20, 20, 20]
    staged = [alloc(r, mode="staged", stage_rounds=2) for r in range(12)]
    assert staged[0] == staged[1] == [100, 0, 0, 0, 0]
    assert staged[2] == [0, 100, 0, 0, 0] and staged[8] == staged[11] == [0, 0, 0, 0, 100]
    cumulative = [alloc(r, mode="cumulative", stage_rounds=2) for r in range(12)]
    assert cumulative[0] == [100, 0, 0, 0, 0] and cumulative[2] == [50, 50, 0, 0, 0]
    assert cumulative[4] == [34, 33, 33, 0, 0] and cumulative[11] == [20] * 5
    assert schedule_levels("cumulative", 5, 100, stage_rounds=3) == [0, 1, 2, 3, 4]
    # the schedules ignore the scores (a baseline never runs the validation pass)
    assert (Schedule(Schedule.Config(mode="joint")).select(ids, iter(()), 10, ctx(1))
            == [i for i in ids for _ in range(2)])
    with pytest.raises(Exception, match="fixated needs level"):
        Schedule.Config(mode="fixated")
    with pytest.raises(ValidationError, match="less than or equal to 5"):
        Schedule.Config(mode="fixated", level=9)   # caught when the recipe is validated, before a run starts


def test_corruptor_answers_one_item_per_generator():
    items = ["level1"] * 3 + ["level4"] * 5 + ["level2"]
    answers = list(Corruptor().label(None, items, ctx(6, seed=3)))
    assert [a.item_id for a in answers] == ["level1@6", "level4@6", "level2@6"]
    assert all(isinstance(a, Label) and a.annotator == "corruptor" for a in answers)
    assert [a.value["count"] for a in answers] == [3, 5, 1] and [a.value["level"] for a in answers] == [1, 4, 2]
    again = list(Corruptor().label(None, items[::-1], ctx(6, seed=3)))
    assert {a.item_id: a.value for a in again} == {a.item_id: a.value for a in answers}  # seeds: (seed, round, level)
    assert answers[0].value["seed"] != list(Corruptor().label(None, ["level1"], ctx(7, seed=3)))[0].value["seed"]
    json.dumps([a.value for a in answers])
    with pytest.raises(UserError):
        list(Corruptor().label(None, ["level1@2"], ctx(2)))


# ------------------------------------------------------------------------------------ the kit's standard checks
class TestInversePSNRConformance(ScorerConformance):
    """On a tiny model fitted on round 0's samples; the candidates are the five generators (never used up)."""
    covers = ("vision", "scorer", "inverse_psnr")

    def make_scorer(self):
        return InversePSNR(InversePSNR.Config(), Env())

    def make_task(self):
        task = tiny_task()
        labels = round_labels(0, counts=(5, 5, 5, 5, 5))
        task.fit(labels, ctx(0, labels))
        return task

    def setting(self, task):
        labels = round_labels(0, counts=(5, 5, 5, 5, 5))
        return list(task.pool_ids()), make_context(labels, round=1, seed=7)


class TestScheduleConformance(SelectorConformance):
    covers = ("vision", "selector", "schedule")

    def make_selector(self):
        return Schedule(Schedule.Config(mode="cumulative", stage_rounds=1), Env())


class TestCorruptorConformance(OracleConformance):
    covers = ("vision", "oracle", "corruptor")

    def make_oracle(self):
        return Corruptor(Corruptor.Config(), Env())

    def make_task(self):
        return tiny_task()

    def some_items(self, task):
        return [g for g, n in zip(task.pool_ids(), (3, 1, 0, 2, 4)) for _ in range(n)]


# ------------------------------------------------------------------------------------ the task
class TestRestorationConformance(TaskConformance):
    covers = ("vision", "task", "restoration")

    def make_task(self):
        return tiny_task()

    def initial_labels(self, task):
        return round_labels(0, counts=(10, 10, 10, 10, 10))

    def wants(self, task):
        return {LEVEL_PSNR}

    def test_labels(self):
        task = self.make_task()
        good = {"level": 3, "count": 7, "seed": 11}
        assert task.check_label("level3@2", good) == good
        for item, value in [("level3@2", {"level": 2, "count": 7, "seed": 1}), ("level3@2", {"level": 3}),
                            ("level3@2", {"level": 3, "count": -1, "seed": 1}),
                            ("level3@2", {"level": 3, "count": True, "seed": 1}),
                            ("level9@2", {"level": 9, "count": 1, "seed": 1}), ("cat.png", good), ("level3@2", 3)]:
            with pytest.raises(ValueError):
                task.check_label(item, value)
        with pytest.raises(KeyError):
            task.true_label("level1")


def test_fit_trains_one_epoch_on_this_rounds_samples_only():
    task = tiny_task()
    labels = {**round_labels(0), **round_labels(1, counts=(0, 5, 0, 0, 30))}
    stats = task.fit(labels, ctx(1, labels))
    assert stats["n_train"] == 35 and stats["n_level2"] == 5 and stats["n_level5"] == 30 and stats["n_level1"] == 0
    assert task.last_round == 1 and task.n_seen == 35
    assert task.fit(labels, ctx(2, labels))["n_train"] == 0      # nothing synthesised in round 2


@pytest.mark.parametrize("layout", ["torchkit", "0.1"])
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_state_round_trip_continues_bit_identically(ema, layout, old_layout):
    a = tiny_task(ema=ema)
    l0, l1 = round_labels(0), round_labels(1, counts=(5, 10, 15, 20, 25))
    a.fit(l0, ctx(0, l0))
    buffer = io.BytesIO()
    torch.save(a.state_dict() if layout == "torchkit" else old_layout(a.state_dict(), drop=("members",)), buffer)
    buffer.seek(0)
    b = tiny_task(ema=ema)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    assert b.optimizer.state_dict()["state"], "the Adam moments must travel with the checkpoint"
    labels = {**l0, **l1}
    assert a.fit(labels, ctx(1, labels)) == b.fit(labels, ctx(1, labels))
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    if ema:
        for x, y, z in zip(a.average.state_dict().values(), b.average.state_dict().values(),
                           a.model.state_dict().values()):
            assert torch.equal(x, y) and not torch.equal(x, z)     # evaluated: the average, not the last weights
    assert a.evaluate() == b.evaluate()
    with pytest.raises(UserError, match="checkpoint does not match"):
        tiny_task(task="inpaint").load_state_dict(a.state_dict())


def test_evaluate_reports_psnr_and_ssim_per_level_and_saves_examples(tmp_path):
    task = tiny_task(run_dir=tmp_path, task="inpaint")
    labels = round_labels(0)
    task.fit(labels, ctx(0, labels))
    metrics = task.evaluate()
    for lv in LEVELS:
        assert 0 < metrics[f"psnr_level{lv}"] <= 100 and -1 <= metrics[f"ssim_level{lv}"] <= 1
        assert f"psnr_input_level{lv}" in metrics
    assert metrics["psnr_mean"] == pytest.approx(np.mean([metrics[f"psnr_level{lv}"] for lv in LEVELS]))
    assert metrics["ssim_mean"] == pytest.approx(np.mean([metrics[f"ssim_level{lv}"] for lv in LEVELS]))
    grid = tmp_path / "examples" / "round_0.png"
    with Image.open(grid) as img:
        assert img.width > img.height > 100


def test_skimage_metrics_agree_with_the_definition():
    from activelab.plugins.vision.restoration import psnr_ssim
    rng = np.random.default_rng(0)
    clean = rng.random((4, 1, 16, 16))
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
    psnr, ssim = psnr_ssim(noisy, clean)
    mse = ((noisy - clean) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr, 10 * np.log10(1 / mse))
    assert np.all(ssim < 1) and psnr_ssim(clean, clean)[0].tolist() == [100.0] * 4


def test_encoder_decoder_shapes():
    for skips, residual in ((True, True), (False, False)):
        net = EncoderDecoder(3, width=8, depth=3, skips=skips, residual=residual)
        x = torch.rand(2, 3, 32, 32)
        assert net(x).shape == (2, 3, 32, 32)
        if residual:
            assert torch.equal(net(x), x)         # untrained: the identity, so it never starts worse than its input


# ------------------------------------------------------------------------------------ data
def _folder(tmp_path, n=4, bad=None):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root if i % 2 else root / "sub" / "deeper"
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(
            folder / f"img{i}.{'png' if i % 3 else 'jpg'}")
    (root / "notes.txt").write_text("not an image, not looked at")
    if bad:
        (root / "sub" / bad).write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_folder_of_images_is_read_recursively(tmp_path):
    root = _folder(tmp_path, n=5)
    task = tiny_task(data={"kind": "folder", "path": str(root), "scale": 1.0, "channels": 1})
    assert sorted(task.image_names) == sorted(["img1.png", "img3.jpg", "sub/deeper/img0.jpg", "sub/deeper/img2.png",
                                               "sub/deeper/img4.png"])
    assert task.test.clean.shape == (5 * 6, 1, 16, 16)
    assert sum(len(v) for v in task.splits.values()) == 5 and all(len(v) for v in task.splits.values())


def test_folder_data_errors_name_the_field_or_file(tmp_path):
    with pytest.raises(UserError, match=r"cannot read image .*broken\.jpg"):
        tiny_task(data={"kind": "folder", "path": str(_folder(tmp_path, bad="broken.jpg")), "scale": 1.0})
    with pytest.raises(UserError, match=r"task.params.data.path: folder .* does not exist"):
        tiny_task(data={"kind": "folder", "path": str(tmp_path / "nowhere")})
    with pytest.raises(UserError, match="task.params.data: 2 image"):
        tiny_task(data={"kind": "skimage", "names": ["camera", "moon"]})
    with pytest.raises(UserError, match="task.params.data.names: scikit-image has no image 'mona_lisa'"):
        tiny_task(data={"kind": "skimage", "names": ["camera", "moon", "mona_lisa"]})
    with pytest.raises(UserError, match="smaller than crop_size"):
        tiny_task(data={"kind": "skimage", "names": ["camera", "moon", "coins"], "scale": 0.02})
    with pytest.raises(UserError, match="task.params.crop_size"):
        tiny_task(crop_size=20, depth=3)


# ------------------------------------------------------------------------------------ end to end
def _tiny_recipe(tmp_path, **over):
    data = yaml.safe_load((ROOT / "recipes" / "ondemand_denoise.yaml").read_text())
    data["task"]["params"].update(TINY)
    data["loop"] = {"initial": 60, "batch": 60, "rounds": 2}
    data = recipes.apply_overrides(data, over)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tiny_ondemand_run_through_the_cli(tmp_path, capsys):
    path = _tiny_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["n_labeled"] for r in rows] == [60, 120, 180]
    assert [rows[0][f"n_level{lv}"] for lv in LEVELS] == [12] * 5                       # round 0: equal shares
    later = [rows[1][f"n_level{lv}"] for lv in LEVELS]
    assert sum(later) == 60 and later[-1] > later[0]                                     # noisier level, more samples
    assert all(np.isfinite(rows[-1][f"psnr_level{lv}"]) for lv in LEVELS)
    assert (out / "examples" / "round_2.png").exists() and (out / "learning_curve.png").exists()
    import sqlite3
    db = sqlite3.connect(out / "labels.sqlite")
    items = sorted(r[0] for r in db.execute("SELECT item_id FROM labels"))
    db.close()
    assert items == sorted(f"level{lv}@{r}" for lv in LEVELS for r in range(3))


def test_tiny_compare_of_ondemand_rigid_and_fixated(tmp_path, capsys):
    path = _tiny_recipe(tmp_path, **{"loop.rounds": 1})
    out = tmp_path / "cmp"
    code = main(["compare", str(path), "--strategies", "ondemand,rigid,fixated_5,staged,cumulative", "--seeds", "1",
                 "--out", str(out), "--metrics", "psnr_mean,psnr_level5", "-q"])
    assert code == 0, capsys.readouterr().err
    table = json.loads((out / "compare.json").read_text())
    (setting,) = table["settings"].values()
    assert set(setting["strategies"]) == {"ondemand", "rigid", "fixated_5", "staged", "cumulative"}
    fixated = [json.loads(line) for line in (out / "fixated_5" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["n_level5"] == r["n_train"] == 60 for r in fixated)
    staged = [json.loads(line) for line in (out / "staged" / "seed_0" / "metrics.jsonl").read_text().splitlines()]
    assert staged[0]["n_level1"] == 60


def test_restoration_recipes_and_their_strategies_validate():
    found = sorted((ROOT / "recipes").glob("*_denoise.yaml")) + sorted((ROOT / "recipes").glob("ondemand_*.yaml"))
    names = {p.name for p in found}
    assert {"ondemand_denoise.yaml", "ondemand_inpaint.yaml", "ondemand_deblur.yaml", "ondemand_interpolate.yaml",
            "rigid_denoise.yaml", "fixated_denoise.yaml", "staged_denoise.yaml", "cumulative_denoise.yaml"} <= names
    for path in found:
        resolved = recipes.load(path)
        assert resolved.recipe.task.name == "restoration"
        for strategy in resolved.recipe.strategies:
            data = recipes.apply_overrides(resolved.raw, recipes.strategy_overrides(resolved, strategy))
            data.pop("strategies")
            recipes.validate(data, source=f"{path} ({strategy})")
