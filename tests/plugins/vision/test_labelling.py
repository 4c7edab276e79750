"""People labelling image classification: the task's suggestions and label schema, and a Label Studio export
whose images are PNG previews served as URLs."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import yaml

from activelab.cli import main
from activelab.plugins.vision.classification import ClassificationTask
from activelab.protocol import PROBS, Context, Env

PARAMS = {"data": {"kind": "digits", "max_pool": 60, "max_test": 30}, "epochs": 1, "min_steps": 2}


def test_suggestions_are_the_most_probable_class_and_the_schema_names_the_classes():
    task = ClassificationTask(ClassificationTask.Config(**PARAMS), Env(progress=False))
    ids = list(task.pool_ids())
    task.fit({i: task.true_label(i) for i in ids[:20]}, Context(round=0, seed=0, budget=1, labels={}, progress=False))
    probs = np.concatenate([out[PROBS] for out in task.predict(ids[20:30], {PROBS})])
    assert task.suggest(ids[20:30]) == [int(c) for c in probs.argmax(1)]
    assert task.label_schema() == {"type": "choices", "choices": list(task.classes)}
    for value in task.suggest(ids[20:30]):
        assert task.check_label(ids[0], value) == value


def test_label_studio_export_of_a_classification_batch(tmp_path):
    recipe = {"name": "digits_people", "task": {"name": "classification", "params": PARAMS},
              "scorer": {"name": "entropy"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 5, "batch": 5}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "-q"]) == 0
    out = tmp_path / "batch.json"
    assert main(["export", str(run), "--format", "label-studio", "--out", str(out),
                 "--media-url", "/data/local-files/?d=", "--media-root", str(tmp_path)]) == 0
    tasks = json.loads(out.read_text())
    assert len(tasks) == 5
    for t in tasks:
        url = t["data"]["image"]
        assert url.startswith("/data/local-files/?d=run/previews/") and url.endswith(".png")
        assert (tmp_path / url.split("?d=", 1)[1]).is_file()
        assert "classes" not in t["data"]                       # the label set is in the config, once
    config = ET.fromstring(out.with_suffix(".xml").read_text())
    assert config.find("Image").get("value") == "$image"
    assert len(config.find("Choices")) == 10


def test_a_class_named_like_a_number_is_read_as_that_name():
    from activelab.labelling import label_schema

    kind = {"type": "choices", "choices": ["1", "10", "2"]}
    assert label_schema.parse(object(), "1", kind) == "1"       # the class "1" (index 0), not index 1 ("10")
    assert label_schema.parse(object(), "2", kind) == "2"
    assert label_schema.parse(object(), "0", kind) == 0         # not a name: read as an index
