"""A run is pinned to its data: relative paths are stored absolute, so `resume` from another directory next to a
dataset of the same shape continues on the run's own data, and data changed in place are refused."""
import json

import numpy as np
import yaml
from PIL import Image

from activelab.cli import main


def image_folder(root, shade):
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((8, 8), (shade + 30 * i) % 256, np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_resume_from_another_directory_reads_the_runs_own_data(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    image_folder(first / "images", 0)
    image_folder(second / "images", 99)            # same shape, same names, other pixels
    recipe = {"name": "pinned", "task": {"plugin": "vision", "name": "classification",
                                         "params": {"data": {"kind": "imagefolder", "path": "images",
                                                             "test_fraction": 0.25}, "epochs": 1}},
              "scorer": {"name": "entropy"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 4, "batch": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "-q"]) == 0   # awaits round 0's labels
    stored = yaml.safe_load((run / "recipe.yaml").read_text())
    assert stored["task"]["params"]["data"]["path"] == str(first / "images")

    monkeypatch.chdir(second)                       # resume elsewhere: still the first folder's data
    batch = json.loads(__import__("sqlite3").connect(run / "labels.sqlite")
                       .execute("SELECT items FROM batches WHERE round = 0").fetchone()[0])
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"item_id": i, "label": 0}) + "\n" for i in batch))
    assert main(["import", str(run), str(answers)]) == 0
    assert main(["resume", str(run), "-q"]) == 0    # trains on the first folder (the fingerprint matches)

    # the run's own data changed in place: one pixel of one image
    pixels = np.array(Image.open(first / "images" / "cat" / "3.png"))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(first / "images" / "cat" / "3.png")
    capsys.readouterr()
    assert main(["resume", str(run), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "data differ" in err[0], err
