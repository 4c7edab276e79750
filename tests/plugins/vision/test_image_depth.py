"""16-bit and float images: the one decoding helper (plugins/vision/images.py) scales them instead of clipping them
to 8 bits, for every reader of the three vision tasks, and refuses the values it has no scale for, naming the file.
Also the classification and restoration data as the core pins it: path-typed config fields and data fingerprints
(detection's are in test_detection_faults.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError

from activelab.cli import main
from activelab.errors import UserError
from activelab.plugins.vision import datasets as vd
from activelab.plugins.vision import images as vi
from activelab.plugins.vision.classification import ClassificationTask
from activelab.plugins.vision.detection.data import CocoError, load_coco, load_image
from activelab.plugins.vision.restoration import RestorationConfig, RestorationData, RestorationTask, load_folder
from activelab.protocol import Env

ONE_STEP = 1 / 255 + 1e-6      # 8-bit rounding of a resize


def ramp8(size: int = 32) -> np.ndarray:
    """An 8-bit image spanning 0..255 (a diagonal ramp with some texture)."""
    y, x = np.mgrid[0:size, 0:size]
    return ((x * 255 // (size - 1) + 37 * ((x + 3 * y) % 5)) % 256).astype(np.uint8)


def save_pair(folder, name: str = "img", size: int = 32):
    """``name``8.png (8-bit) and ``name``16.png (the same pixels x 257: 16-bit spanning 0..65535)."""
    folder.mkdir(parents=True, exist_ok=True)
    a8 = ramp8(size)
    a16 = a8.astype(np.uint16) * 257
    assert a16.min() == 0 and a16.max() == 65535
    Image.fromarray(a8).save(folder / f"{name}8.png")
    Image.fromarray(a16).save(folder / f"{name}16.png")
    with Image.open(folder / f"{name}16.png") as img:
        assert img.mode == "I;16"
    return folder / f"{name}8.png", folder / f"{name}16.png"


def save_float_tiff(path, low: float, high: float, size: int = 16):
    values = np.linspace(low, high, size * size, dtype=np.float32).reshape(size, size)
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == "F"
    return values


# ------------------------------------------------------------------------------------------ the helper
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [None, (20, 20), (32, 32)])
def test_16_bit_reads_as_its_8_bit_counterpart(tmp_path, channels, size):
    p8, p16 = save_pair(tmp_path)
    x8 = vi.read_image(p8, channels, "here", size=size)
    x16 = vi.read_image(p16, channels, "here", size=size)
    assert x16.shape == x8.shape == (channels, *(size or (32, 32))[::-1])
    assert x16.dtype == np.float32 and 0 <= x16.min() and x16.max() <= 1
    np.testing.assert_allclose(x16, x8, atol=ONE_STEP)
    if size is None:
        np.testing.assert_allclose(x16, x8, atol=1e-6)                  # no resize: equal up to float rounding
        assert x16.max() == pytest.approx(1.0) and x16.min() == 0.0     # the full range, not clipped at 255/65535


def test_big_endian_and_32_bit_integer_16_bit_data(tmp_path):
    a8 = ramp8()
    a16 = a8.astype(np.uint16) * 257
    expected = a8.astype(np.float32)[None] / 255
    big = Image.frombytes("I;16B", (32, 32), a16.astype(">u2").tobytes())
    np.testing.assert_allclose(vi.to_array(big, 1), expected, atol=1e-6)
    as_int = Image.fromarray(a16.astype(np.int32))                      # mode I: how some writers store 16 bits
    assert as_int.mode == "I"
    np.testing.assert_allclose(vi.to_array(as_int, 1), expected, atol=1e-6)
    pgm = tmp_path / "ten_bit.pgm"                                      # maxval 1023: PIL scales it to 0..65535
    ten = (a8.astype(np.uint16) * 4).clip(0, 1023)
    pgm.write_bytes(b"P5 32 32 1023\n" + ten.astype(">u2").tobytes())
    np.testing.assert_allclose(vi.read_image(pgm, 1, "here"), ten[None] / 1023, atol=1e-4)


def test_float_images_in_0_1_are_used_as_they_are_and_others_are_refused(tmp_path):
    inside = save_float_tiff(tmp_path / "inside.tif", 0.0, 1.0)
    np.testing.assert_array_equal(vi.read_image(tmp_path / "inside.tif", 1, "here")[0], inside)
    np.testing.assert_array_equal(vi.read_image(tmp_path / "inside.tif", 3, "here"), np.stack([inside] * 3))
    save_float_tiff(tmp_path / "outside.tif", -1.0, 3.0)
    with pytest.raises(UserError) as info:
        vi.read_image(tmp_path / "outside.tif", 1, "task.params.data.path")
    message = str(info.value)
    assert message.startswith("task.params.data.path: image ") and str(tmp_path / "outside.tif") in message
    assert "[-1, 3]" in message and "float" in message and "\n" not in message
    nan = np.zeros((4, 4), np.float32)
    nan[1, 2] = np.nan
    with pytest.raises(vi.ImageDepthError, match="NaN"):
        vi.to_array(Image.fromarray(nan), 1)
    with pytest.raises(vi.ImageDepthError, match=r"\[-5, 70000\]"):
        vi.to_array(Image.fromarray(np.array([[-5, 70000]], np.int32)), 1)


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGB", "RGBA", "CMYK"])
def test_8_bit_modes_read_exactly_as_before(mode):
    """Palette, alpha and CMYK images go through PIL's L / RGB conversion as they always did (bit for bit)."""
    rgb = np.stack([ramp8(), ramp8()[::-1], ramp8().T], axis=-1)
    img = Image.fromarray(rgb).convert(mode)
    for channels, target in ((1, "L"), (3, "RGB")):
        for size in (None, (20, 20)):
            before = img.convert(target)
            if size is not None:
                before = before.resize(size, Image.BILINEAR)
            before = np.asarray(before, dtype=np.float32) / 255.0
            before = before[None] if channels == 1 else before.transpose(2, 0, 1)
            np.testing.assert_array_equal(vi.to_array(img, channels, size=size), before)


# ------------------------------------------------------------------------------------------ classification
def test_classification_imagefolder_reads_16_bit_like_8_bit(tmp_path):
    for kind, shift in (("8", 0), ("16", 1)):
        for cls in ("cat", "dog"):
            folder = tmp_path / kind / cls
            folder.mkdir(parents=True)
            for i in range(3):
                a8 = np.roll(ramp8(), 5 * i + (cls == "dog") * 11, axis=1)
                Image.fromarray(a8.astype(np.uint16) * 257 if shift else a8).save(folder / f"{i}.png")
    sets = {kind: vd.load_imagefolder(vd.DataConfig(kind="imagefolder", path=tmp_path / kind, image_size=20))[0]
            for kind in ("8", "16")}
    assert sets["8"].ids == sets["16"].ids
    np.testing.assert_allclose(sets["16"].images.numpy(), sets["8"].images.numpy(), atol=ONE_STEP)


def test_classification_hf_images_16_bit_pil_and_arrays(tmp_path):
    a8 = ramp8()
    expected = vd.pil_to_array(Image.fromarray(a8), 16, 1)
    for image in (Image.fromarray(a8.astype(np.uint16) * 257), a8.astype(np.uint16) * 257):
        np.testing.assert_allclose(vd.pil_to_array(image, 16, 1), expected, atol=ONE_STEP)
    np.testing.assert_allclose(vd.pil_to_array(a8.astype(np.float32) / 255, 16, 1), expected, atol=ONE_STEP)
    with pytest.raises(vi.ImageDepthError, match=r"\[0, 1000\]"):
        vd.pil_to_array(np.linspace(0, 1000, 64, dtype=np.float32).reshape(8, 8), 16, 1)


def test_classification_hf_disk_16_bit_images_and_a_refused_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    a8 = [np.roll(ramp8(12), i, axis=1) for i in range(8)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])})
    loaded = {}
    for kind, images in (("8", [Image.fromarray(a) for a in a8]),
                         ("16", [Image.fromarray(a.astype(np.uint16) * 257) for a in a8])):
        datasets.Dataset.from_dict({"img": images, "y": [i % 2 for i in range(8)]},
                                   features=features).save_to_disk(str(tmp_path / kind))
        loaded[kind] = vd.load_hf_disk(vd.DataConfig(kind="hf_disk", path=tmp_path / kind, image_column="img",
                                                     label_column="y", image_size=8))[0]
    np.testing.assert_allclose(loaded["16"].images.numpy(), loaded["8"].images.numpy(), atol=ONE_STEP)

    arrays = [a.astype(np.float32) for a in a8]
    arrays[5] = arrays[5] * 4.0                                          # 0..1020: no scale
    datasets.Dataset.from_dict({"img": arrays, "y": [i % 2 for i in range(8)]}).save_to_disk(str(tmp_path / "f"))
    with pytest.raises(UserError) as info:
        vd.load_hf_disk(vd.DataConfig(kind="hf_disk", path=tmp_path / "f", image_column="img", label_column="y"))
    message = str(info.value)
    assert message.startswith(f"task.params.data.image_column: {tmp_path / 'f'}: 'img' of row 5 of the dataset: ")
    assert "[0, 1020]" in message


def test_classification_float_tiff_outside_0_1_is_one_line_naming_the_file(tmp_path, capsys):
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(4):
            save_float_tiff(tmp_path / "images" / cls / f"{i}.tif", 0.0, 1.0)
    bad = tmp_path / "images" / "dog" / "2.tif"
    save_float_tiff(bad, 0.0, 255.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "float-tiff",
        "task": {"plugin": "vision", "name": "classification",
                 "params": {"data": {"kind": "imagefolder", "path": str(tmp_path / "images"), "image_size": 8},
                            "epochs": 1}},
        "scorer": {"name": "entropy"}, "loop": {"rounds": 1, "initial": 2, "batch": 2}}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1, err
    assert "task.params.data.path" in err[0] and str(bad) in err[0] and "[0, 255]" in err[0]


# ------------------------------------------------------------------------------------------ restoration
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_restoration_folder_reads_16_bit_like_8_bit(tmp_path, scale):
    for i in range(3):
        save_pair(tmp_path / "eight", f"a{i}")
    pairs = {}
    for kind in ("8", "16"):
        folder = tmp_path / f"only{kind}"
        folder.mkdir()
        for i in range(3):
            (folder / f"a{i}.png").write_bytes((tmp_path / "eight" / f"a{i}{kind}.png").read_bytes())
        pairs[kind] = load_folder(RestorationData(kind="folder", path=folder, channels=3, scale=scale))
    assert pairs["8"].names == pairs["16"].names
    for x8, x16 in zip(pairs["8"].arrays, pairs["16"].arrays):
        assert x16.shape == x8.shape == (3, int(32 * scale), int(32 * scale))
        np.testing.assert_allclose(x16, x8, atol=ONE_STEP)


def test_restoration_float_tiff_outside_0_1_is_refused_naming_the_file(tmp_path):
    for i in range(3):
        save_float_tiff(tmp_path / f"{i}.tif", 0.0, 1.0)
    save_float_tiff(tmp_path / "1.tif", -0.5, 2.0)
    with pytest.raises(UserError) as info:
        load_folder(RestorationData(kind="folder", path=tmp_path, channels=1))
    assert str(tmp_path / "1.tif") in str(info.value) and "[-0.5, 2]" in str(info.value)
    assert str(info.value).startswith("task.params.data.path: ")


# ------------------------------------------------------------------------------------------ detection
def coco(folder, names: list[str], size: int = 32):
    path = folder / "ann.json"
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": size, "height": size} for i, n in enumerate(names)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}],
        "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_detection_reads_16_bit_like_8_bit(tmp_path):
    save_pair(tmp_path)
    _, _, (img8, img16) = load_coco(coco(tmp_path, ["img8.png", "img16.png"]))
    x8, x16 = load_image(img8), load_image(img16)
    assert x16.shape == x8.shape == (3, 32, 32)
    np.testing.assert_allclose(x16.numpy(), x8.numpy(), atol=1e-6)


def test_detection_float_tiff_outside_0_1_is_refused_at_load_naming_the_file(tmp_path):
    save_pair(tmp_path)
    save_float_tiff(tmp_path / "far.tif", 0.0, 4095.0, size=32)
    with pytest.raises(CocoError) as info:
        load_coco(coco(tmp_path, ["img8.png", "far.tif"]))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'ann.json'}: image 2: file far.tif: ") and "[0, 4095]" in message


# ------------------------------------------------------------------------------------------ paths
def test_classification_and_restoration_path_fields_are_paths(tmp_path):
    cfg = vd.DataConfig(kind="imagefolder", path="~/train", test_path=str(tmp_path))
    assert cfg.path == Path.home() / "train" and cfg.test_path == tmp_path and isinstance(cfg.test_path, Path)
    assert vd.DataConfig(kind="hf_disk", path="rel/ds", split="train").split == "train"      # names stay strings
    assert RestorationData(kind="folder", path="~/photos").path == Path.home() / "photos"
    for model in (vd.DataConfig, RestorationData):
        with pytest.raises(ValidationError, match="must be a path, not an empty string"):
            model(path="")
    fashion = vd.DataConfig(kind="fashion_mnist", path=tmp_path / "nowhere")
    with pytest.raises(UserError, match="nowhere does not exist"):
        vd.load_fashion_mnist(fashion)


# ------------------------------------------------------------------------------------------ fingerprints
def write_classes(root, shift: int = 0):
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            Image.fromarray(np.roll(ramp8(12), 3 * i + 7 * c + shift, axis=0)).save(root / cls / f"{i}.png")


def classification(root) -> ClassificationTask:
    cfg = ClassificationTask.Config(data={"kind": "imagefolder", "path": root, "image_size": 8, "test_fraction": 0.3})
    return ClassificationTask(cfg, Env(seed=0, progress=False))


def test_the_classification_fingerprint_is_stable_and_follows_images_and_labels(tmp_path):
    write_classes(tmp_path / "a")
    first = classification(tmp_path / "a").data_fingerprint()
    assert len(first) == 64 and classification(tmp_path / "a").data_fingerprint() == first

    write_classes(tmp_path / "b")                                        # the same files elsewhere: the same print
    assert classification(tmp_path / "b").data_fingerprint() == first
    pixels = np.asarray(Image.open(tmp_path / "b" / "dog" / "3.png")).copy()
    pixels[4, 4] = 255 - pixels[4, 4]                                    # one pixel of one image
    Image.fromarray(pixels).save(tmp_path / "b" / "dog" / "3.png")
    one_pixel = classification(tmp_path / "b").data_fingerprint()
    assert one_pixel != first

    task = classification(tmp_path / "a")                                # one label, all else equal
    task.pool.labels[0] = 1 - task.pool.labels[0]
    assert task.data_fingerprint() not in (first, one_pixel)
    task = classification(tmp_path / "a")
    task.test.labels[0] = 1 - task.test.labels[0]                        # the test set counts too
    assert task.data_fingerprint() != first


def test_the_classification_fingerprint_of_digits_is_stable():
    make = lambda: ClassificationTask(ClassificationTask.Config(data={"kind": "digits", "max_pool": 200}),  # noqa: E731
                                      Env(seed=0, progress=False))
    assert make().data_fingerprint() == make().data_fingerprint()


def restoration(root) -> RestorationTask:
    cfg = RestorationConfig.model_validate({"data": {"kind": "folder", "path": str(root), "channels": 1, "scale": 1.0},
                                            "crop_size": 16, "width": 4, "depth": 1, "n_val": 2, "n_test": 2,
                                            "examples": 0})
    return RestorationTask(cfg, Env(seed=0, progress=False))


def test_the_restoration_fingerprint_is_stable_and_follows_the_source_images(tmp_path):
    tmp_path.joinpath("photos").mkdir()
    for i in range(4):
        Image.fromarray(np.roll(ramp8(24), 5 * i, axis=1)).save(tmp_path / "photos" / f"{i}.png")
    first = restoration(tmp_path / "photos").data_fingerprint()
    assert len(first) == 64 and restoration(tmp_path / "photos").data_fingerprint() == first
    Image.fromarray(np.roll(ramp8(24), 1, axis=0)).save(tmp_path / "photos" / "2.png")
    assert restoration(tmp_path / "photos").data_fingerprint() != first
