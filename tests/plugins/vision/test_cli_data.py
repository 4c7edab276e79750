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


IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_folder(tmp_path, body=None):
    folder = tmp_path / "idx"
    folder.mkdir()
    for stem in IDX:
        if body is None:
            with gzip.open(folder / f"{stem}.gz", "wb") as fh:
                fh.write(b"\x00\x00\x09\x09garbage")   # wrong magic number
        else:
            (folder / f"{stem}.gz").write_bytes(body)


    return folder


def hf_dict(tmp_path, test_columns):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "hfdict"
    train = datasets.Dataset.from_dict({"img": [np.zeros((8, 8), np.uint8)] * 8, "y": [0, 1] * 4})
    test = datasets.Dataset.from_dict(test_columns)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


CASES = {
    "missing folder": (lambda t: {"kind": "imagefolder", "path": str(t / "nowhere")},
                       ["task.params.data", "nowhere", "does not exist"]),
    "corrupt image": (lambda t: {"kind": "imagefolder", "path": str(image_folder(t, corrupt="bad.png"))},
                      ["bad.png", "cannot read image"]),
    "missing column": (lambda t: {"kind": "hf_disk", "path": str(hf_dataset(t)), "image_column": "img",
                                  "label_column": "label"},
                       ["task.params.data.label_column", "'label'", "available columns"]),
    "malformed idx": (lambda t: {"kind": "fashion_mnist", "path": str(idx_folder(t))},
                      ["task.params.data.path", "idx", "magic number"]),
    "unknown kind": (lambda t: {"kind": "cifar"}, ["task.params.data.kind", "cifar"]),
    "corrupt gzip body": (lambda t: {"kind": "fashion_mnist",
                                     "path": str(idx_folder(t, body=gzip.compress(b"x" * 64)[:30] + b"\xff" * 20))},
                          ["task.params.data.path", "cannot read"]),
    "test split lacks column": (lambda t: {"kind": "hf_disk",
                                           "path": str(hf_dict(t, {"img": [np.zeros((8, 8), np.uint8)] * 2})),
                                           "split": "train", "image_column": "img", "label_column": "y"},
                                ["task.params.data.label_column", "test split"]),
    "test split is the pool": (lambda t: {"kind": "hf_disk", "split": "train", "test_split": "train",
                                          "image_column": "img", "label_column": "y",
                                          "path": str(hf_dict(t, {"img": [np.zeros((8, 8), np.uint8)] * 2,
                                                                  "y": [0, 1]}))},
                               ["task.params.data.test_split", "also the pool split"]),
    "not an mnist pickle": (lambda t: {"kind": "mnist",
                                       "path": str(garbage_file(t, "mnist.pkl.gz", gzip.compress(b"not a pickle")))},
                            ["task.params.data.path", "mnist.pkl.gz", "not the (train, valid, test) MNIST pickle"]),
    "single class folder": (lambda t: {"kind": "imagefolder", "path": str(one_class(t))},
                            ["task.params.data", "at least 2 classes"]),
}


def garbage_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def one_class(tmp_path):
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / "cat" / f"{i}.png")
    return root


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


def test_run_folder_problems_exit_2(tmp_path, capsys):
    """--out naming a file, and a label store that is not a database, are user errors too."""
    path = recipe(tmp_path, {"kind": "digits", "max_pool": 60, "max_test": 20})
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(path), "--out", str(tmp_path / "afile"), "-q"]) == 2
    assert "cannot make the run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    (run / "labels.sqlite").write_bytes(b"this is not a database" * 100)
    for name in ("labels.sqlite-wal", "labels.sqlite-shm"):
        (run / name).unlink(missing_ok=True)
    assert main(["resume", str(run), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels.sqlite" in err[0] and "not a usable label store" in err[0], err
