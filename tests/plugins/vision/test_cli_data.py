"""Malformed data given through a recipe: exit code 2, one line naming the field or file, no run folder left."""
import gzip

import numpy as np
import pytest
import yaml
from PIL import Image

from activelab.cli import main


def recipe(tmp_path, data):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad-data",
        "task": {"plugin": "vision", "name": "classification", "params": {"data": data, "epochs": 1}},
        "scorer": {"name": "entropy"},
        "loop": {"rounds": 1, "initial": 4, "batch": 2},
    }))
    return path


def image_folder(tmp_path, corrupt=None):
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "dog" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "hf"
    datasets.Dataset.from_dict({"img": [np.zeros((8, 8), np.uint8)] * 8, "y": [0, 1] * 4}).save_to_disk(str(path))
    return path


def idx_folder(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(folder / f"{stem}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x09\x09garbage")   # wrong magic number
    return folder


CASES = {
    "missing folder": (lambda t: {"kind": "imagefolder", "path": str(t / "nowhere")}, ["task.params.data", "nowhere", "does not exist"]),
    "corrupt image": (lambda t: {"kind": "imagefolder", "path": str(image_folder(t, corrupt="bad.png"))}, ["bad.png", "cannot read image"]),
    "missing column": (lambda t: {"kind": "hf_disk", "path": str(hf_dataset(t)), "image_column": "img", "label_column": "label"},
                       ["task.params.data.label_column", "'label'", "available columns"]),
    "malformed idx": (lambda t: {"kind": "fashion_mnist", "path": str(idx_folder(t))}, ["task.params.data.path", "idx", "magic number"]),
    "unknown kind": (lambda t: {"kind": "cifar"}, ["task.params.data.kind", "cifar"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, case):
    make, words = CASES[case]
    out = tmp_path / "run"
    assert main(["run", str(recipe(tmp_path, make(tmp_path))), "--out", str(out), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]
    assert not (out / "recipe.yaml").exists()   # no half-made run to trip over on the next try
