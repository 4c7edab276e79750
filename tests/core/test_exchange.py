"""The file exchange: export the outstanding batch (Label Studio, CSV, JSON lines), import the answers; the run
waits in "awaiting labels" in between and the next round runs after the import."""
from __future__ import annotations

import csv
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from activelab.cli import main
from activelab.labelling import label_studio
from activelab.labelling.files import ExchangeOracle
from activelab.run import status
from activelab.testing import OracleConformance, ToyTask

PARAMS = {"n_items": 40, "n_test": 40, "epochs": 5}
RECIPE = {
    "name": "toy_exchange",
    "task": {"name": "toy", "params": PARAMS},
    "scorer": {"name": "entropy"},
    "oracle": {"name": "exchange"},
    "loop": {"rounds": 1, "initial": 4, "batch": 3},
}
TRUTH = ToyTask(ToyTask.Config(**PARAMS))


class TestExchangeConformance(OracleConformance):
    covers = ("core", "oracle", "exchange")

    def make_oracle(self):
        return ExchangeOracle()


@pytest.fixture
def run(tmp_path) -> Path:
    """A toy run paused in round 0, awaiting its 4 labels."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 0
    return tmp_path / "run"


def labels(run_dir: Path) -> dict[str, tuple]:
    db = sqlite3.connect(run_dir / "labels.sqlite")
    try:
        return {i: (json.loads(v), r, a, t) for i, v, r, a, t in db.execute("SELECT * FROM labels")}
    finally:
        db.close()


def export(run_dir: Path, fmt: str, out: Path) -> None:
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0


def ls_export(tasks: list[dict], answer=lambda item: str(TRUTH.true_label(item))) -> list[dict]:
    """What Label Studio's JSON export of these tasks looks like after a person labelled them."""
    out = []
    for n, t in enumerate(tasks, start=1):
        item = t["data"]["item_id"]
        value = answer(item)
        annotations = [] if value is None else [{
            "id": n, "completed_by": {"id": 1, "email": "ann@example.com"}, "was_cancelled": value == "SKIP",
            "result": [] if value == "SKIP" else [{"from_name": "label", "to_name": "text", "type": "choices",
                                                  "value": {"choices": [value]}}],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}]
        out.append({"id": n, "data": t["data"], "annotations": annotations, "predictions": []})
    return out


# ----------------------------------------------------------------------------------------------- round trips
def test_label_studio_round_trip_then_the_next_round_runs(run, tmp_path, capsys):
    assert status(run)["status"] == "awaiting labels"
    export(run, "label-studio", tmp_path / "batch.json")
    tasks = json.loads((tmp_path / "batch.json").read_text())
    assert len(tasks) == 4 and all("predictions" not in t for t in tasks)   # round 0: no model, no scores
    config = ET.fromstring((tmp_path / "batch.xml").read_text())
    assert config.find("Text").get("value") == "$text"
    assert [c.get("value") for c in config.find("Choices")] == ["0", "1", "2", "3"]

    (tmp_path / "export.json").write_text(json.dumps(ls_export(tasks)))
    assert main(["import", str(run), str(tmp_path / "export.json")]) == 0
    stored = labels(run)
    assert {i: v[0] for i, v in stored.items()} == {t["data"]["item_id"]: TRUTH.true_label(t["data"]["item_id"])
                                                    for t in tasks}
    assert {v[2] for v in stored.values()} == {"label-studio:ann@example.com"}
    assert status(run)["status"] == "labels imported"
    assert main(["import", str(run), str(tmp_path / "export.json")]) == 0      # twice: nothing changes
    assert labels(run) == stored
    assert "4 unchanged" in capsys.readouterr().out

    assert main(["resume", str(run), "-q"]) == 0
    info = status(run)
    assert (info["status"], info["round"], info["labels"], info["outstanding"]) == ("awaiting labels", 1, 4, 3)
    assert main(["status", str(run)]) == 0
    assert "awaiting labels, round 1, 4 labels, 3 of 3 outstanding" in capsys.readouterr().out

    # round 1: the model's suggestions are pre-annotations scored by the acquisition score
    export(run, "label-studio", tmp_path / "r1.json")
    tasks = json.loads((tmp_path / "r1.json").read_text())
    db = sqlite3.connect(run / "labels.sqlite")
    items, scores = (json.loads(x) for x in db.execute("SELECT items, scores FROM batches WHERE round = 1").fetchone())
    db.close()
    assert [t["data"]["item_id"] for t in tasks] == items
    for t, score in zip(tasks, scores):
        [prediction] = t["predictions"]
        assert prediction["score"] == t["data"]["score"] == score
        assert prediction["model_version"] == "run round 0"
        [region] = prediction["result"]
        assert region["type"] == "choices" and region["value"]["choices"] == [t["data"]["suggestion"]]
    # the person accepts every suggestion
    (tmp_path / "e1.json").write_text(json.dumps(ls_export(
        tasks, answer=lambda item: next(t["data"]["suggestion"] for t in tasks if t["data"]["item_id"] == item))))
    assert main(["import", str(run), str(tmp_path / "e1.json")]) == 0
    assert main(["resume", str(run), "-q"]) == 0
    assert status(run)["status"] == "done"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_plain_round_trip_with_a_skip(run, tmp_path, fmt):
    path = tmp_path / f"batch.{fmt}"
    export(run, fmt, path)
    if fmt == "csv":
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh))
        assert list(records[0]) == ["item_id", "text", "features", "suggestion", "score", "label", "skip"]
        for r in records:
            r["label"] = str(TRUTH.true_label(r["item_id"]))
        records[-1]["label"], records[-1]["skip"] = "", "yes"
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert {"item_id", "text", "suggestion", "score", "label", "skip"} <= set(records[0])
        for r in records:
            r["label"] = TRUTH.true_label(r["item_id"])
        records[-1]["label"], records[-1]["skip"] = None, True
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["import", str(run), str(path)]) == 0
    assert {i: v[0] for i, v in labels(run).items()} == {r["item_id"]: TRUTH.true_label(r["item_id"])
                                                         for r in records[:-1]}
    info = status(run)
    assert info["outstanding"] == 0 and info["status"] == "labels imported"
    assert main(["import", str(run), str(path)]) == 0
    assert main(["resume", str(run), "-q"]) == 0
    assert status(run)["round"] == 1


# ----------------------------------------------------------------------------------------------- problems
def test_problems_are_reported_per_item_and_valid_answers_stored(run, tmp_path, capsys):
    export(run, "jsonl", tmp_path / "b.jsonl")
    batch = [json.loads(line)["item_id"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    outside = next(i for i in TRUTH.pool_ids() if i not in batch)
    lines = [{"item_id": batch[0], "label": TRUTH.true_label(batch[0])},
             {"item_id": batch[1], "label": 9},                                  # not a class
             {"item_id": "no-such-item", "label": 1},
             {"item_id": outside, "label": 1},                                   # not in the batch
             {"label": 2},                                                        # no item id
             {"item_id": batch[2], "label": 1}, {"item_id": batch[2], "label": 2},  # contradicts itself
             {"item_id": batch[3], "label": None}]                               # not answered yet
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    capsys.readouterr()
    assert main(["import", str(run), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5, err
    assert f"line 2, item '{batch[1]}': label refused" in err[0]
    assert "line 3, item 'no-such-item': unknown item" in err[1]
    assert f"line 4, item '{outside}': not in round 0's batch" in err[2]
    assert "line 5: no item_id" in err[3]
    assert f"item '{batch[2]}': labelled differently more than once" in err[4]
    assert {i: v[0] for i, v in labels(run).items()} == {batch[0]: TRUTH.true_label(batch[0])}
    assert status(run)["outstanding"] == 3


def test_label_studio_problems_unknown_class_and_skips(run, tmp_path, capsys):
    export(run, "label-studio", tmp_path / "b.json")
    tasks = json.loads((tmp_path / "b.json").read_text())
    ids = [t["data"]["item_id"] for t in tasks]
    answers = {ids[0]: "zebra", ids[1]: "SKIP", ids[2]: None, ids[3]: "2"}
    exported = ls_export(tasks, answer=answers.get)
    exported.append({"id": 99, "data": {"item_id": "ghost", "text": "?"}, "annotations": exported[3]["annotations"]})
    (tmp_path / "e.json").write_text(json.dumps(exported))
    capsys.readouterr()
    assert main(["import", str(run), str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert f"task 1, item '{ids[0]}': label refused" in err[0] and "zebra" in err[0]
    assert "task 99, item 'ghost': unknown item" in err[1]
    assert {i: v[0] for i, v in labels(run).items()} == {ids[3]: 2}
    info = status(run)
    assert info["outstanding"] == 2 and info["status"] == "awaiting labels"     # ids[0] refused, ids[2] open


def test_a_corrected_label_replaces_this_rounds_answer_but_never_an_earlier_rounds(run, tmp_path, capsys):
    export(run, "jsonl", tmp_path / "b.jsonl")
    batch = [json.loads(line)["item_id"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"item_id": i, "label": 0}) + "\n" for i in batch))
    assert main(["import", str(run), str(first)]) == 0
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(json.dumps({"item_id": batch[0], "label": 3}) + "\n")
    assert main(["import", str(run), str(fixed)]) == 0
    assert "1 replacing earlier answers" in capsys.readouterr().out
    assert labels(run)[batch[0]][0] == 3
    assert main(["resume", str(run), "-q"]) == 0                                 # round 0 trained on them
    fixed.write_text(json.dumps({"item_id": batch[1], "label": 2}) + "\n")
    capsys.readouterr()
    assert main(["import", str(run), str(fixed)]) == 2
    assert "already labelled 0 in round 0 (trained on); not changed" in capsys.readouterr().err
    assert labels(run)[batch[1]][0] == 0


BROKEN = {
    "truncated.json": lambda good: good[: len(good) // 2],
    "notalist.json": lambda good: json.dumps({"tasks": json.loads(good)}),
    "nodata.json": lambda good: json.dumps(json.loads(good) + [{"id": 5}]),
    "nolabel.csv": lambda good: "item_id,answer\n3,1\n",
    "ragged.csv": lambda good: "item_id,label\n3,1,extra\n",
    "badline.jsonl": lambda good: '{"item_id": "3", "label": 1}\n{"item_id": "4", "label": \n',
    "notutf8.csv": None,
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_file_that_cannot_be_parsed_stores_nothing(run, tmp_path, capsys, name):
    export(run, "label-studio", tmp_path / "b.json")
    good = json.dumps(ls_export(json.loads((tmp_path / "b.json").read_text())))
    path = tmp_path / name
    if BROKEN[name] is None:
        path.write_bytes(b"item_id,label\n3,\xff\xfe\n")
    else:
        path.write_text(BROKEN[name](good))
    capsys.readouterr()
    assert main(["import", str(run), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "nothing stored" in err[0], err
    assert labels(run) == {}


def test_export_and_import_refuse_what_they_cannot_do(run, tmp_path, capsys):
    assert main(["import", str(run), str(tmp_path / "answers.txt")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["import", str(run), str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    export(run, "jsonl", tmp_path / "b.jsonl")
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"item_id": json.loads(line)["item_id"], "label": 1}) + "\n"
                            for line in (tmp_path / "b.jsonl").read_text().splitlines()))
    assert main(["import", str(run), str(path)]) == 0
    assert main(["export", str(run), "--format", "csv"]) == 2
    assert "nothing to label" in capsys.readouterr().err


def test_media_paths_become_urls(tmp_path):
    from activelab.labelling.files import _url

    assert _url("/data/x/a b.png", "/data/local-files/?d=", "/data") == "/data/local-files/?d=x/a%20b.png"
    assert _url("http://host/a.png", "/p/", None) == "http://host/a.png"
    assert _url("a.png", None, None) == "a.png"


# ----------------------------------------------------------------------------------------------- conversions
def test_label_studio_rectangles_convert_both_ways():
    kind = {"type": "rectangles", "classes": ["car", "person"]}
    boxes = [{"label": "car", "box": [10, 20, 50, 60]}, {"label": 1, "box": [0, 0, 200, 100], "score": 0.5}]
    regions = label_studio.to_result(boxes, kind, "image", (200, 100))
    assert regions[0]["value"] == {"x": 5.0, "y": 20.0, "width": 20.0, "height": 40.0, "rotation": 0,
                                   "rectanglelabels": ["car"]}
    assert regions[1]["value"]["rectanglelabels"] == ["person"] and regions[1]["score"] == 0.5
    assert label_studio.from_result(regions, kind, None) == [{"label": "car", "box": [10, 20, 50, 60]},
                                                            {"label": "person", "box": [0, 0, 200, 100]}]
    assert label_studio.from_result([], kind, None) == []                        # nothing in the image
    with pytest.raises(ValueError, match="malformed box"):
        label_studio.from_result([{"type": "rectanglelabels", "value": {"x": 1}}], kind, (10, 10))
    xml = ET.fromstring(label_studio.config_xml(kind, {"image": "a.png"}))
    assert xml.find("Image").get("name") == "image"
    assert [x.get("value") for x in xml.find("RectangleLabels")] == ["car", "person"]


def test_label_studio_text_and_audio():
    kind = {"type": "text"}
    xml = ET.fromstring(label_studio.config_xml(kind, {"audio": "a.wav", "text": "reference"}))
    assert xml.find("Audio") is not None and xml.find("TextArea").get("toName") == "audio"
    region = label_studio.to_result("hello world", kind, "audio", None)
    assert label_studio.from_result(region, kind, None) == "hello world"
    with pytest.raises(ValueError, match="empty text"):
        label_studio.from_result([{"type": "textarea", "value": {"text": ["  "]}}], kind, None)
    with pytest.raises(ValueError, match="no text"):
        label_studio.from_result([], kind, None)


def test_a_label_wins_over_a_skip_and_stale_skips_change_nothing(run, tmp_path, capsys):
    export(run, "jsonl", tmp_path / "b.jsonl")
    batch = [json.loads(line)["item_id"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    outside = next(i for i in TRUTH.pool_ids() if i not in batch)
    lines = [{"item_id": batch[0], "skip": True}, {"item_id": batch[0], "label": 1},   # e.g. two rounds' tasks
             {"item_id": outside, "skip": True},                                      # a skip of another batch
             {"item_id": batch[1], "skip": True}]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["import", str(run), str(path)]) == 0
    assert {i: v[0] for i, v in labels(run).items()} == {batch[0]: 1}
    db = sqlite3.connect(run / "labels.sqlite")
    assert db.execute("SELECT round, item_id FROM skips").fetchall() == [(0, batch[1])]
    db.close()
    assert main(["import", str(run), str(path)]) == 0
    assert "stored 0 label(s) and 0 skip(s); 4 unchanged" in capsys.readouterr().out


def test_a_skip_from_an_earlier_rounds_task_leaves_this_rounds_label_alone(run, tmp_path, capsys):
    """One Label Studio project can hold every round: a round-0 skip of an item asked again in round 1 must
    neither skip it nor undo its round-1 label."""
    export(run, "label-studio", tmp_path / "t.json")
    tasks = json.loads((tmp_path / "t.json").read_text())
    item = tasks[0]["data"]["item_id"]
    # the same item as a task of an earlier round (round -1 stands for "not this batch's round"), skipped there
    stale = {**tasks[0], "data": {**tasks[0]["data"], "round": -1}}
    answered = ls_export(tasks)
    skipped = ls_export([stale], answer=lambda i: "SKIP")
    skipped[0]["id"] = 99
    (tmp_path / "answered.json").write_text(json.dumps(answered))
    assert main(["import", str(run), str(tmp_path / "answered.json")]) == 0
    (tmp_path / "stale.json").write_text(json.dumps(skipped))     # a later export holding only the old task
    assert main(["import", str(run), str(tmp_path / "stale.json")]) == 0
    assert labels(run)[item][0] == TRUTH.true_label(item)
    db = sqlite3.connect(run / "labels.sqlite")
    assert db.execute("SELECT item_id FROM skips").fetchall() == []
    db.close()


def test_label_studio_export_refuses_an_xml_tasks_file(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "label-studio", "--out", str(tmp_path / "tasks.xml")]) == 2
    assert "must not end in .xml" in capsys.readouterr().err
