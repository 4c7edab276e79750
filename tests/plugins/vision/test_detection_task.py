"""The detection task (MI-AOD) and its scorers: the task protocol on a tiny generated set, determinism, the
schedule, label checks, a malformed COCO file through the CLI, the selection pictures of a run, and a person
typing boxes at the terminal."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

from activelab.cli import main
from activelab.errors import UserError
from activelab.labelling.terminal import TerminalOracle
from activelab.plugins.vision.detection.scorers import AnchorEntropy, MIAODUncertainty
from activelab.plugins.vision.detection.synth import make_digit_canvases
from activelab.plugins.vision.detection.task import (
    ANCHOR_ENTROPY_MAX,
    ANCHOR_ENTROPY_MEAN,
    MIAOD_UNCERTAINTY,
    MIAOD_UNCERTAINTY_MIL,
    DetectionTask,
)
from activelab.protocol import Env
from activelab.store import LabelStore
from activelab.testing import ScorerConformance, TaskConformance, make_context, predictions, true_labels

torch.set_num_threads(1)

SCHEDULE = {"label_epochs": 1, "cycles": 1, "min_epochs": 1, "max_epochs": 1, "min_steps": 2}


@pytest.fixture(scope="module")
def canvases(tmp_path_factory) -> Path:
    return make_digit_canvases(tmp_path_factory.mktemp("canvases"), images=40, size=32, seed=0)


def params(folder: Path, **extra) -> dict:
    out = {"data": {"annotations": str(folder / "train.json"), "test_annotations": str(folder / "test.json")},
           "channels": 16, "head_convs": 1, "head_width": 16, "schedule": dict(SCHEDULE), "optimizer": "adam",
           "lr": 1e-3, "batch_size": 4, "unlabelled_batch_size": 4, "top_k": 50, "eval_batch_size": 16}
    out.update(extra)
    return out


def make_task(folder: Path, run_dir: Path | None = None, **extra) -> DetectionTask:
    return DetectionTask(DetectionTask.Config(**params(folder, **extra)), Env(seed=0, run_dir=run_dir, progress=False))


# ----------------------------------------------------------------------------------------------- protocol
class TestDetectionConformance(TaskConformance):
    covers = ("vision", "task", "detection")

    @pytest.fixture(autouse=True)
    def _folder(self, canvases):
        self.folder = canvases

    def make_task(self):
        return make_task(self.folder)

    def initial_labels(self, task):
        return true_labels(task, list(task.pool_ids())[:8])

    def wants(self, task):
        return set(task.outputs)


def test_fit_is_deterministic_and_the_schedule_follows_miaod(canvases):
    runs = []
    for _ in range(2):
        task = make_task(canvases)
        labels = true_labels(task, list(task.pool_ids())[:8])
        stats = task.fit(labels, make_context(labels, round=1, seed=3))
        runs.append((task, stats))
    ids = list(runs[0][0].pool_ids())
    a, b = (predictions(t, ids, DetectionTask.outputs) for t, _ in runs)
    for name in DetectionTask.outputs:
        assert a[name].shape == (len(ids),) and np.all(np.isfinite(a[name]))
        np.testing.assert_array_equal(a[name], b[name])
    stats = runs[0][1]
    assert stats["n_train"] == 8 and stats["n_unlabelled"] == len(ids) - 8
    assert {"label_loss", "min_loss", "min_dis", "max_loss", "max_dis", "train_seconds"} <= set(stats)
    assert runs[0][0].stages() == [("label", 1), ("min", 1), ("max", 1), ("label", 1)]


def test_a_checkpoint_resumes_in_the_torchkit_and_the_0_1_layout(canvases, old_layout):
    task = make_task(canvases)
    labels = true_labels(task, list(task.pool_ids())[:8])
    task.fit(labels, make_context(labels, round=0))
    ids = list(task.pool_ids())
    want = predictions(task, ids, DetectionTask.outputs)
    state = task.state_dict()
    for saved in (state, old_layout(state, drop=("members",))):
        again = make_task(canvases)
        again.load_state_dict(saved)
        got = predictions(again, ids, DetectionTask.outputs)
        assert all(np.array_equal(want[k], got[k]) for k in want)
        assert again.fitted and again.trained_on == task.trained_on
        assert again.optimizer.state_dict()["state"], "the optimiser state must travel with the checkpoint"
    small = make_task(canvases)
    small.pool = small.pool[:30]
    with pytest.raises(UserError, match=rf"^checkpoint does not match the task's data: pool_size {len(task.pool)} in "
                                        rf"the checkpoint, 30 now$"):
        small.load_state_dict(state)


def test_without_miaod_only_label_set_training_runs(canvases):
    task = make_task(canvases, miaod=False)
    assert task.stages() == [("label", 2)]            # as many label-set epochs as the MI-AOD schedule has
    labels = true_labels(task, list(task.pool_ids())[:8])
    stats = task.fit(labels, make_context(labels, round=0))
    assert "label_loss" in stats
    assert not [k for k in stats if k.startswith(("min_", "max_"))]


def test_the_last_label_set_epoch_may_run_at_a_lower_lr(canvases):
    schedule = dict(SCHEDULE, label_epochs=2, cycles=0, last_epoch_lr=0.1)
    task = make_task(canvases, schedule=schedule)
    labels = true_labels(task, list(task.pool_ids())[:8])
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        task.fit(labels, make_context(labels, round=1))
    finally:
        handle.remove()
    assert seen == pytest.approx([1e-3] * 2 + [1e-4] * 2)   # 2 epochs of 2 steps (8 labels, batches of 4)
    assert task.optimizer.param_groups[0]["lr"] == 1e-3


def test_predict_refuses_mc_and_unknown_outputs(canvases):
    from activelab.protocol import MC

    task = make_task(canvases)
    ids = list(task.pool_ids())[:3]
    with pytest.raises(ValueError, match="no MC"):
        task.predict(ids, {MIAOD_UNCERTAINTY}, mc=MC(samples=2))
    with pytest.raises(ValueError, match="unknown outputs"):
        task.predict(ids, {"probs"})


# ----------------------------------------------------------------------------------------------- labels
def test_check_label_accepts_clips_and_rejects(canvases):
    task = make_task(canvases)
    item = task.pool_ids()[0]
    info = task.describe(item)
    w, h = info["width"], info["height"]
    assert info["image"].endswith(".png") and Path(info["image"]).is_file()
    assert task.label_schema() == {"type": "rectangles", "classes": task.classes}
    assert task.check_label(item, []) == []                                   # no objects
    ok = task.check_label(item, [{"label": "3", "box": [1.234, 2, 10.0, 12.5]}, {"label": 7, "box": [0, 0, 5, 5]}])
    assert ok == [{"label": "3", "box": [1.23, 2.0, 10.0, 12.5]}, {"label": "7", "box": [0.0, 0.0, 5.0, 5.0]}]
    clipped = task.check_label(item, [{"label": "1", "box": [-0.6, 0, w + 0.9, h]}])
    assert clipped == [{"label": "1", "box": [0.0, 0.0, float(w), float(h)]}]
    truth = task.true_label(item)
    assert truth and task.check_label(item, truth) == truth
    bad = {
        "not a list": ({"label": "1", "box": [0, 0, 1, 1]}, "list of boxes"),
        "unknown class": ([{"label": "cat", "box": [0, 0, 4, 4]}], "unknown class"),
        "class index out of range": ([{"label": 10, "box": [0, 0, 4, 4]}], "unknown class"),
        "three numbers": ([{"label": "1", "box": [0, 0, 4]}], "4 numbers"),
        "a string coordinate": ([{"label": "1", "box": [0, 0, "4", 4]}], "4 numbers"),
        "not finite": ([{"label": "1", "box": [0, 0, float("nan"), 4]}], "non-finite"),
        "zero width": ([{"label": "1", "box": [3, 0, 3, 4]}], "x1 > x0"),
        "upside down": ([{"label": "1", "box": [0, 5, 4, 2]}], "y1 > y0"),
        "outside": ([{"label": "1", "box": [0, 0, w + 1.5, 4]}], "outside"),
        "missing key": ([{"box": [0, 0, 4, 4]}], "expected"),
        "extra key": ([{"label": "1", "box": [0, 0, 4, 4], "colour": "red"}], "expected"),
    }
    for case, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            task.check_label(item, value)
        print(case, "refused")
    with pytest.raises(ValueError, match="unknown item"):
        task.check_label("nope.png", [])
    corrupted = task.corrupt_label(truth, np.random.default_rng(0))
    assert task.check_label(item, corrupted) == corrupted and corrupted != truth


# ----------------------------------------------------------------------------------------------- the CLI
def write_recipe(path: Path, task_params: dict, **loop) -> Path:
    recipe = {"name": "det", "task": {"plugin": "vision", "name": "detection", "params": task_params},
              "scorer": {"name": "miaod"}, "loop": {"rounds": 1, "initial": 6, "batch": 4, **loop}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_zero_width_box_is_a_user_error_naming_file_and_annotation(canvases, tmp_path, capsys):
    coco = json.loads((canvases / "train.json").read_text())
    coco["annotations"][2]["bbox"][2] = 0
    bad_id = coco["annotations"][2]["id"]
    bad = canvases / "bad_train.json"           # next to the images, which file_name is relative to
    bad.write_text(json.dumps(coco))
    try:
        p = params(canvases)
        p["data"]["annotations"] = str(bad)
        recipe = write_recipe(tmp_path / "r.yaml", p)
        code = main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"])
    finally:
        bad.unlink()
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("activelab: error:")]
    assert len(lines) == 1 and "bad_train.json" in lines[0] and f"annotation {bad_id}" in lines[0], err
    assert "zero width" in lines[0] and "Traceback" not in err


def test_a_run_saves_pictures_of_each_rounds_selection(canvases, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", params(canvases))
    run = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run), "-q"]) == 0
    pictures = sorted(p.name for p in (run / "selections").iterdir())
    assert pictures == ["round_01.png"]                       # round 0's random batch had no model to show
    from PIL import Image

    with Image.open(run / "selections" / "round_01.png") as img:
        assert img.width > 100 and img.height > 100
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [6, 10]
    assert all(0 <= r["mAP50"] <= 1 and "mAP" in r and "mAP75" in r for r in rows)


# ----------------------------------------------------------------------------------------------- scorers
class _FittedDetection:
    """A small fitted detection task for the scorer kit (fitted once per module, restored per test)."""

    _state: dict = {}

    @pytest.fixture(autouse=True)
    def _folder(self, canvases):
        self.folder = canvases

    def make_task(self):
        task = make_task(self.folder)
        key = str(self.folder)
        if key not in _FittedDetection._state:
            labels = true_labels(task, list(task.pool_ids())[:8])
            task.fit(labels, make_context(labels, round=0))
            _FittedDetection._state[key] = task.state_dict()
        task.load_state_dict(_FittedDetection._state[key])
        return task

    def setting(self, task):
        ids = list(task.pool_ids())
        labels = true_labels(task, ids[:8])
        return ids[8:], make_context(labels, round=1, seed=7)


class TestMIAODScorerConformance(_FittedDetection, ScorerConformance):
    covers = ("vision", "scorer", "miaod")

    def make_scorer(self):
        return MIAODUncertainty(MIAODUncertainty.Config(mil=True), Env())


class TestAnchorEntropyConformance(_FittedDetection, ScorerConformance):
    covers = ("vision", "scorer", "anchor_entropy")

    def make_scorer(self):
        return AnchorEntropy(AnchorEntropy.Config(reduce="max"), Env())


def test_scorer_configs_select_the_task_output(canvases):
    assert MIAODUncertainty().needs == {MIAOD_UNCERTAINTY}
    assert MIAODUncertainty(MIAODUncertainty.Config(mil=True)).needs == {MIAOD_UNCERTAINTY_MIL}
    assert AnchorEntropy().needs == {ANCHOR_ENTROPY_MEAN}
    assert AnchorEntropy(AnchorEntropy.Config(reduce="max")).needs == {ANCHOR_ENTROPY_MAX}
    task = _FittedDetection()
    task.folder = canvases
    task = task.make_task()
    ids = list(task.pool_ids())[8:20]
    ctx = make_context(round=1)
    out = predictions(task, ids, DetectionTask.outputs)
    for scorer, name in ((MIAODUncertainty(), MIAOD_UNCERTAINTY),
                         (MIAODUncertainty(MIAODUncertainty.Config(mil=True)), MIAOD_UNCERTAINTY_MIL),
                         (AnchorEntropy(), ANCHOR_ENTROPY_MEAN),
                         (AnchorEntropy(AnchorEntropy.Config(reduce="max")), ANCHOR_ENTROPY_MAX)):
        scores = np.concatenate(list(scorer.score(task, ids, ctx)))
        np.testing.assert_array_equal(scores, out[name])
    assert not np.array_equal(out[MIAOD_UNCERTAINTY], out[MIAOD_UNCERTAINTY_MIL])


# ----------------------------------------------------------------------------------------------- people
def test_a_person_types_boxes_at_the_terminal_and_the_store_keeps_the_canonical_label(canvases, tmp_path):
    from activelab import recipe as recipes
    from activelab.loop import Runner
    from activelab.run import create_run

    p = params(canvases)
    recipe = write_recipe(tmp_path / "r.yaml", p, initial=2)
    run = create_run(recipes.load(recipe), tmp_path / "run")
    first_box = '[{"label": 3, "box": [1.234, 2, 33.0, 12.5]}, {"label": "7", "box": [0, 0, 5, 5]}]'
    script = "\n".join(['[{"label": "cat", "box": [0, 0, 4, 4]}]',      # refused: no such class
                        first_box, "quit"]) + "\n"
    out = io.StringIO()
    oracle = TerminalOracle(TerminalOracle.Config(annotator="tester"), stdin=io.StringIO(script), stdout=out)
    runner = Runner(run, progress=False, oracle_override=oracle)
    try:
        assert runner.run() == "paused"
        item = runner.store.batch(0)[0][0]
    finally:
        runner.close()
    text = out.getvalue()
    assert "refused:" in text and "unknown class" in text
    assert re.search(r"JSON list of boxes", text)
    store = LabelStore(run / "labels.sqlite")
    try:
        assert store.labels() == {item: [{"label": "3", "box": [1.23, 2.0, 32.0, 12.5]},
                                         {"label": "7", "box": [0.0, 0.0, 5.0, 5.0]}]}
    finally:
        store.close()


def test_the_mmdet_adapter_without_mmdet_is_a_one_line_user_error(canvases):
    """`adapter: mmdet` is an optional extra; where mmdet is missing the task says so instead of a traceback (with
    mmdet installed, tests/plugins/vision/test_detection_mmdet.py checks the adapter itself)."""
    try:
        import mmdet  # noqa: F401
        pytest.skip("mmdet is installed here; the adapter's own tests cover it")
    except ImportError:
        pass
    with pytest.raises(UserError, match="mmdet adapter needs mmdet"):
        make_task(canvases, adapter="mmdet", backbone="resnet18")


def test_boxes_round_trip_through_label_studio(canvases, tmp_path, capsys):
    """A detection run waiting for people: the Label Studio export names each image with its size and a
    RectangleLabels config; a Label Studio export with boxes drawn in percent of the image imports as boxes in
    pixels; after the next fit the export carries the model's boxes as pre-annotations."""
    import xml.etree.ElementTree as ET

    recipe = {"name": "boxes-by-hand", "task": {"plugin": "vision", "name": "detection", "params": params(canvases)},
              "scorer": {"name": "miaod"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 4, "batch": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "-q"]) == 0           # awaiting labels
    assert main(["export", str(run), "--format", "label-studio", "--out", str(tmp_path / "b.json")]) == 0
    tasks = json.loads((tmp_path / "b.json").read_text())
    config = ET.fromstring((tmp_path / "b.xml").read_text())
    assert config.find("Image").get("value") == "$image"
    assert [c.get("value") for c in config.find("RectangleLabels")] == [str(d) for d in range(10)]
    truth = make_task(canvases)
    exported = []
    for n, t in enumerate(tasks, start=1):
        item = t["data"]["item_id"]
        size = truth.describe(item)
        regions = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                    "original_width": size["width"], "original_height": size["height"],
                    "value": {"x": 100 * x0 / size["width"], "y": 100 * y0 / size["height"],
                              "width": 100 * (x1 - x0) / size["width"], "height": 100 * (y1 - y0) / size["height"],
                              "rotation": 0, "rectanglelabels": [box["label"]]}}
                   for box in truth.true_label(item) for x0, y0, x1, y1 in [box["box"]]]
        exported.append({"id": n, "data": t["data"], "predictions": [], "annotations": [{
            "id": n, "completed_by": {"id": 1, "email": "ann@example.com"}, "was_cancelled": False,
            "result": regions, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}]})
    (tmp_path / "a.json").write_text(json.dumps(exported))
    assert main(["import", str(run), str(tmp_path / "a.json")]) == 0
    store = LabelStore(run / "labels.sqlite")
    stored = store.labels()
    store.close()
    assert len(stored) == 4
    for item, value in stored.items():
        want = truth.true_label(item)
        assert [b["label"] for b in value] == [b["label"] for b in want]
        assert np.allclose([b["box"] for b in value], [b["box"] for b in want], atol=0.01)
    assert main(["resume", str(run), "-q"]) == 0                    # fits round 0, asks for round 1's batch
    assert main(["export", str(run), "--format", "label-studio", "--out", str(tmp_path / "r1.json")]) == 0
    for t in json.loads((tmp_path / "r1.json").read_text()):
        [prediction] = t["predictions"]
        assert all(r["type"] == "rectanglelabels" for r in prediction["result"])


def test_label_cost_counts_boxes_and_expects_the_last_fits_mean(canvases):
    task = make_task(canvases)
    ids = list(task.pool_ids())[:8]
    assert task.label_cost(ids).tolist() == [1.0] * 8            # nothing fitted: no expectation but 1
    labels = true_labels(task, ids)
    boxes = [max(1, len(labels[i])) for i in ids]
    assert task.label_cost(ids, [labels[i] for i in ids]).tolist() == boxes
    task.fit(labels, make_context(labels, round=1, seed=3))
    assert task.label_cost(ids[:3]).tolist() == [pytest.approx(np.mean(boxes))] * 3
    again = make_task(canvases)
    again.load_state_dict(task.state_dict())
    assert again.mean_boxes == task.mean_boxes and task.cost_unit == "boxes"
