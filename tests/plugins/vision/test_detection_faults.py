"""Detection data faults found at load, not at first use: unreadable images and images whose size disagrees with
the COCO file; the demo data made on first use (atomically) when the recipe asks for it, and the missing-file
message that names the command when it does not; path-typed config fields; the data fingerprint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from activelab import recipe as recipes
from activelab.cli import main
from activelab.errors import RecipeError, UserError
from activelab.plugins.vision.detection import data as dd
from activelab.plugins.vision.detection import synth
from activelab.plugins.vision.detection.data import (
    CocoError,
    DetectionDataConfig,
    GenerateConfig,
    load_coco,
    load_detection_data,
)
from activelab.plugins.vision.detection.task import DetectionTask
from activelab.protocol import Env

ROOT = Path(__file__).resolve().parents[3]
TINY = {"images": 12, "size": 32}


def coco_set(folder: Path, n: int = 4, size: int = 20) -> Path:
    """``n`` valid ``size`` x ``size`` PNGs with one box each, and their COCO file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size), 30 * i, np.uint8)).save(folder / "images" / f"{i}.png")
    path = folder / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f"images/{i}.png", "width": size, "height": size} for i in range(n)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(n)],
        "categories": [{"id": 1, "name": "thing"}]}))
    return path


# ------------------------------------------------------------------------------------------ checks at load
def test_truncated_and_wrongly_sized_images_are_all_reported_at_load(tmp_path):
    path = coco_set(tmp_path)
    whole = (tmp_path / "images" / "1.png").read_bytes()
    (tmp_path / "images" / "1.png").write_bytes(whole[: len(whole) // 2])          # truncated
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "images" / "3.png")   # 24 wide, JSON says 20
    with pytest.raises(CocoError) as info:
        load_coco(path)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}: image 2: file images/1.png cannot be read (")
    assert problems[1] == f"{path}: image 4: file images/3.png is 24x20 pixels but the annotation file says 20x20"
    assert str(info.value) == f"{problems[0]} (and 1 more problem)" and "\n" not in str(info.value)


def test_a_corrupt_jpeg_is_found_at_load_and_a_good_one_passes(tmp_path):
    path = coco_set(tmp_path, n=2, size=64)
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "images" / "0.png.jpg", quality=90)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "images/0.png.jpg"
    path.write_text(json.dumps(data))
    assert len(load_coco(path)[2]) == 2
    whole = (tmp_path / "images" / "0.png.jpg").read_bytes()
    (tmp_path / "images" / "0.png.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(CocoError, match=r"image 1: file images/0\.png\.jpg cannot be read \(OSError: image file is "
                                        r"truncated"):
        load_coco(path)


def test_a_bad_image_stops_the_cli_before_anything_is_labelled(tmp_path, capsys):
    path = coco_set(tmp_path / "data", n=6)
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "data" / "images" / "5.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "bad-detection-image",
        "task": {"plugin": "vision", "name": "detection",
                 "params": {"data": {"annotations": str(path), "test_fraction": 0.34}, "channels": 8,
                            "head_convs": 0, "head_width": 8}},
        "scorer": {"name": "random", "plugin": "core"}, "loop": {"rounds": 1, "initial": 2, "batch": 1}}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1 and "images/5.png is 20x30 pixels but the annotation file says 20x20" in err[0], err
    assert not (tmp_path / "run" / "recipe.yaml").exists()


# ------------------------------------------------------------------------------------------ generate
def gen_config(folder: Path, **generate) -> DetectionDataConfig:
    return DetectionDataConfig(annotations=folder / "train.json", test_annotations=folder / "test.json",
                               generate={**TINY, **generate})


def partials(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if synth.PARTIAL in p.name)


def test_generate_makes_the_data_on_first_use_as_the_command_does(tmp_path, capsys):
    target = tmp_path / "data" / "demo"
    data = load_detection_data(gen_config(target), seed=0)
    assert (len(data.pool), len(data.test)) == (12 - 2, 2) and data.classes == [str(d) for d in range(10)]
    assert "made" in capsys.readouterr().err
    assert partials(tmp_path / "data") == []
    by_command = synth.make_digit_canvases(tmp_path / "by_command", **TINY)
    for name in ("train.json", "test.json", "synth.json", "images/000000.png", "images/000011.png"):
        assert (target / name).read_bytes() == (by_command / name).read_bytes(), name
    stamp = (target / "train.json").stat().st_mtime_ns
    again = load_detection_data(gen_config(target), seed=0)                  # found, not made again
    assert (target / "train.json").stat().st_mtime_ns == stamp and "made" not in capsys.readouterr().err
    assert [i.id for i in again.pool] == [i.id for i in data.pool]


def test_an_interrupted_generation_leaves_no_folder_that_looks_complete(tmp_path, monkeypatch):
    calls = []
    real = synth.draw_canvas

    def draw_then_fail(*args):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synth, "draw_canvas", draw_then_fail)
    with pytest.raises(KeyboardInterrupt):
        load_detection_data(gen_config(tmp_path / "demo"), seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []           # neither the target nor a partial copy


def test_a_kill_mid_generation_leaves_only_a_hidden_partial_folder_cleaned_up_next_time(tmp_path):
    target = tmp_path / "demo"
    code = ("import sys; from activelab.plugins.vision.detection import synth; "
            "synth.make_atomically(sys.argv[1], images=5000, size=64)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = partials(tmp_path)
            if found and len(list((found[0] / "images").glob("*.png"))) >= 5:
                break
            assert proc.poll() is None, "the generator ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the generator wrote no images in 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not target.exists()
    (partial,) = partials(tmp_path)
    assert partial.name.startswith(".demo.partial-") and not (partial / "synth.json").exists()
    load_detection_data(gen_config(target), seed=0)                      # the next run makes it, and cleans up
    assert synth.is_up_to_date(target, synth.settings(**TINY)) and partials(tmp_path) == []


def test_generate_never_overwrites_a_folder_holding_something_else(tmp_path):
    target = synth.make_digit_canvases(tmp_path / "demo", images=10, size=32)
    before = (target / "train.json").read_bytes()
    with pytest.raises(UserError) as info:
        load_detection_data(gen_config(target), seed=0)                  # asks for 12 images
    message = str(info.value)
    assert message.startswith(f"task.params.data.generate: {target} holds data generated with other settings (")
    assert "images 10 there, 12 asked" in message and "delete the folder" in message
    assert (target / "train.json").read_bytes() == before

    (target / "synth.json").unlink()                                     # as the command leaves an interrupted run
    with pytest.raises(UserError, match=r"exists but is not a complete generated set \(it has no synth\.json\)"):
        load_detection_data(gen_config(target, images=10), seed=0)
    own = tmp_path / "own"
    coco_set(own)
    (own / "ann.json").rename(own / "train.json")
    with pytest.raises(UserError, match="not a complete generated set"):
        load_detection_data(DetectionDataConfig(annotations=own / "train.json", generate=TINY), seed=0)
    assert (own / "train.json").is_file() and len(list((own / "images").iterdir())) == 4


def test_when_another_process_finishes_first_its_copy_is_used(tmp_path, monkeypatch):
    target = tmp_path / "demo"
    real = synth.make_digit_canvases

    def race(out_dir, *args):
        real(target, *args)                  # another run renames its identical copy into place meanwhile
        return real(out_dir, *args)

    monkeypatch.setattr(synth, "make_digit_canvases", race)
    data = load_detection_data(gen_config(target), seed=0)
    assert len(data.pool) == 10 and partials(tmp_path) == [] and synth.is_up_to_date(target, synth.settings(**TINY))


def test_an_empty_target_folder_is_filled(tmp_path):
    (tmp_path / "demo").mkdir()
    load_detection_data(gen_config(tmp_path / "demo"), seed=0)
    assert synth.is_up_to_date(tmp_path / "demo", synth.settings(**TINY))


def test_generate_is_validated(tmp_path):
    folder = tmp_path / "d"
    ok = {"annotations": str(folder / "train.json"), "generate": {}}
    assert DetectionDataConfig(**ok).generate == GenerateConfig()
    bad = [
        ({**ok, "annotations": str(folder / "pool.json")}, "annotations must name train.json"),
        ({**ok, "test_annotations": str(tmp_path / "test.json")}, "test_annotations must be that file or unset"),
        ({**ok, "images": str(folder)}, "leave images and test_images unset"),
        ({**ok, "generate": {"images": 1}}, "greater than or equal to 2"),
        ({**ok, "generate": {"size": 8}}, "greater than or equal to 16"),
        ({**ok, "generate": {"images": 10, "test_images": 10}}, "test_images 10 of 10 images leaves no test set"),
        ({**ok, "generate": {"source": "cifar"}}, "digits"),
        ({**ok, "generate": {"imags": 10}}, "Extra inputs"),
    ]
    for params, words in bad:
        with pytest.raises(ValidationError, match=words):
            DetectionDataConfig(**params)
    with pytest.raises(RecipeError) as info:
        recipes.validate({"name": "x", "task": {"plugin": "vision", "name": "detection",
                                                "params": {"data": bad[0][0]}}, "scorer": {"name": "miaod"}})
    assert any(line.startswith("task.params.data: generate writes") for line in info.value.problems), \
        info.value.problems


def test_without_generate_the_missing_demo_file_names_the_command(tmp_path):
    demo = tmp_path / "data" / "digits_detection"
    with pytest.raises(CocoError) as info:
        load_detection_data(DetectionDataConfig(annotations=demo / "train.json"), seed=0)
    message = str(info.value)
    assert message.startswith(f"{demo / 'train.json'}: file not found") and "\n" not in message
    assert f"`python -m activelab.plugins.vision.detection.synth {demo}`" in message and "generate: {}" in message
    with pytest.raises(CocoError) as info:
        load_detection_data(DetectionDataConfig(annotations=tmp_path / "other" / "train.json"), seed=0)
    assert "synth" not in str(info.value)


@pytest.mark.parametrize("name", ["miaod_digits", "entropy_detection_digits", "random_detection_digits"])
def test_demo_recipes_generate_exactly_what_the_documented_command_makes(name):
    resolved = recipes.validate(recipes.read_yaml(ROOT / "recipes" / f"{name}.yaml"), source=name)
    data = resolved.configs["task"].data
    assert data.annotations == Path("data/digits_detection/train.json")
    assert data.test_annotations == Path("data/digits_detection/test.json")
    gen = data.generate
    # `python -m activelab.plugins.vision.detection.synth data/digits_detection` with its defaults
    command = synth.settings()
    assert synth.settings(gen.images, gen.size, gen.source, gen.seed, gen.test_images) == command
    assert (command["images"], command["size"], command["source"], command["seed"]) == (800, 64, "digits", 0)


# ------------------------------------------------------------------------------------------ paths
def test_path_fields_are_paths_with_the_home_folder_expanded(tmp_path):
    cfg = DetectionTask.Config(data={"annotations": "~/d/train.json", "images": "rel/images",
                                     "test_annotations": "t.json", "test_images": "~/t"},
                               weights_path="~/w.pth")
    home = Path.home()
    assert cfg.data.annotations == home / "d/train.json" and cfg.weights_path == home / "w.pth"
    assert cfg.data.images == Path("rel/images") and cfg.data.test_images == home / "t"
    assert all(isinstance(v, Path) for v in (cfg.data.annotations, cfg.data.images, cfg.data.test_annotations))
    assert cfg.model_dump(mode="json")["data"]["annotations"] == str(home / "d/train.json")
    with pytest.raises(ValidationError, match="must be a path, not an empty string"):
        DetectionDataConfig(annotations="")


def test_a_missing_weights_path_is_a_user_error(tmp_path):
    coco_set(tmp_path)
    cfg = DetectionTask.Config(data={"annotations": tmp_path / "ann.json"}, backbone="resnet18",
                               weights_path=tmp_path / "none.pth")
    with pytest.raises(UserError, match=r"task\.params\.weights_path: .*none\.pth not found"):
        DetectionTask(cfg, Env(seed=0, progress=False))


# ------------------------------------------------------------------------------------------ fingerprint
def detection_task(folder: Path) -> DetectionTask:
    cfg = DetectionTask.Config(data={"annotations": folder / "train.json", "test_annotations": folder / "test.json"},
                               channels=8, head_convs=0, head_width=8)
    return DetectionTask(cfg, Env(seed=0, progress=False))


def test_the_detection_fingerprint_is_stable_and_follows_the_data(tmp_path):
    folder = synth.make_digit_canvases(tmp_path / "set", images=10, size=32)
    first = detection_task(folder).data_fingerprint()
    assert len(first) == 64 and detection_task(folder).data_fingerprint() == first

    moved = tmp_path / "moved"
    folder.rename(moved)                                                 # the same data elsewhere: the same print
    assert detection_task(moved).data_fingerprint() == first

    train = json.loads((moved / "train.json").read_text())
    train["annotations"][0]["bbox"][0] += 1                               # one box moved by a pixel
    (moved / "train.json").write_text(json.dumps(train))
    changed_box = detection_task(moved).data_fingerprint()
    assert changed_box != first

    image = moved / train["images"][0]["file_name"]                      # one image redrawn
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)).save(image)
    assert detection_task(moved).data_fingerprint() not in (first, changed_box)


def test_the_fingerprint_covers_the_test_set_too(tmp_path):
    folder = synth.make_digit_canvases(tmp_path / "set", images=10, size=32)
    first = detection_task(folder).data_fingerprint()
    test = json.loads((folder / "test.json").read_text())
    test["annotations"][0]["category_id"] = test["annotations"][0]["category_id"] % 10 + 1
    (folder / "test.json").write_text(json.dumps(test))
    assert detection_task(folder).data_fingerprint() != first
    assert dd.fingerprint(dd.DetectionData(["a"], [1], [], [])) != dd.fingerprint(dd.DetectionData(["b"], [1], [], []))


def test_coco_json_nested_100000_levels_deep_is_a_one_line_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoError, match="nested too deeply") as caught:
        load_coco(path)
    assert "deep.json" in str(caught.value) and "\n" not in str(caught.value)


def test_an_image_too_small_for_the_backbone_is_refused_at_load(tmp_path):
    """A 12 px image pads to one cell of the tiny backbone's last batch-normalised stage: its first fit on a batch
    of one would crash after people labelled. It is refused when the task loads, naming the file; resizing with
    image_size is the way out."""
    coco_set(tmp_path, n=6, size=12)
    cfg = DetectionTask.Config(data={"annotations": tmp_path / "ann.json"}, channels=8, head_convs=0, head_width=8)
    too_small = r"task\.params\.data: image .*images/\d\.png is 12x12 pixels, too small for backbone .tiny."
    with pytest.raises(UserError, match=too_small):
        DetectionTask(cfg, Env(seed=0, progress=False))
    resized = cfg.model_copy(update={"image_size": 32})
    assert len(DetectionTask(resized, Env(seed=0, progress=False)).pool_ids()) > 0
