"""Property tests (hypothesis): whatever a recipe file or an import file holds, activelab ends in success or in a
user error (exit 2, one line per problem, never a traceback), and an import never leaves a partial write: a file
that cannot be parsed stores nothing, and what is stored is a valid label of the current batch."""
from __future__ import annotations

import json
import shutil
import sqlite3
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activelab.cli import main
from activelab.testing import ToyTask

SETTINGS = settings(max_examples=int(__import__("os").environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    derandomize=not __import__("os").environ.get("HYPOTHESIS_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
keys = st.one_of(st.sampled_from(["name", "task", "scorer", "selector", "oracle", "loop", "params", "rounds",
                                  "initial", "batch", "seed", "strategies", "plugin", "keep_checkpoints",
                                  "n_items", "epochs", "toy", "entropy", "random", "topk"]),
                 st.text(string.ascii_letters + "._", min_size=1, max_size=8))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=25)

GOOD = {"name": "toy", "task": {"name": "toy", "params": {"n_items": 30, "n_test": 20, "epochs": 2}},
        "scorer": {"name": "entropy"}, "loop": {"rounds": 1, "initial": 3, "batch": 2}}


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _mutated_recipe(draw_data: dict, path: list[str], value) -> dict:
    out = json.loads(json.dumps(draw_data))
    node = out
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return out


@SETTINGS
@given(text=st.one_of(st.text(max_size=300),
                      trees.map(lambda t: yaml.safe_dump(t, allow_unicode=True)),
                      st.tuples(st.lists(st.sampled_from(["name", "task", "params", "loop", "rounds", "scorer",
                                                          "initial", "batch", "strategies", "data"]),
                                         min_size=1, max_size=3), trees)
                      .map(lambda kv: yaml.safe_dump(_mutated_recipe(GOOD, kv[0], kv[1]), allow_unicode=True))))
def test_any_recipe_text_validates_or_is_a_user_error(tmp_path, capsys, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["validate", str(path)])          # an exception here (a traceback for the user) fails the test
    captured = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        lines = _lines(captured.err)
        assert lines and all("Traceback" not in line for line in lines)
        assert all(str(path) in line for line in lines), lines   # every line names the file


# ------------------------------------------------------------------------------------------- imports
PARAMS = {"n_items": 40, "n_test": 40, "epochs": 3}
TRUTH = ToyTask(ToyTask.Config(**PARAMS))


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory) -> Path:
    """A toy run paused in round 0, awaiting its labels through the exchange oracle (copied per example)."""
    base = tmp_path_factory.mktemp("paused")
    recipe = {"name": "toy_exchange", "task": {"name": "toy", "params": PARAMS}, "scorer": {"name": "entropy"},
              "oracle": {"name": "exchange"}, "loop": {"rounds": 1, "initial": 5, "batch": 3}}
    (base / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(base / "r.yaml"), "--out", str(base / "run"), "-q"]) == 0
    return base / "run"


def _state(run: Path) -> tuple[dict, list[str]]:
    db = sqlite3.connect(run / "labels.sqlite")
    try:
        labels = {k: json.loads(v) for k, v in db.execute("SELECT item_id, value FROM labels")}
        batch = json.loads(db.execute("SELECT items FROM batches WHERE round = 0").fetchone()[0])
    finally:
        db.close()
    return labels, batch


items = st.one_of(st.sampled_from([str(i) for i in range(45)]), st.text(max_size=6), st.integers(-3, 50),
                  st.none(), trees)
values = st.one_of(st.integers(-2, 6), st.sampled_from(["0", "1", "3", "class_0", " 2 ", ""]), scalars, trees)
jsonl_records = st.fixed_dictionaries({"item_id": items}, optional={"label": values, "skip": st.one_of(
    st.booleans(), scalars), "annotator": st.one_of(st.text(max_size=5), trees)})
ls_tasks = st.fixed_dictionaries(
    {"data": st.one_of(st.fixed_dictionaries({"item_id": items}, optional={"round": st.one_of(st.integers(-1, 3),
                                                                                                 scalars)}), trees)},
    optional={"id": st.integers(0, 99),
              "annotations": st.lists(st.fixed_dictionaries(
                  {}, optional={"result": st.lists(st.fixed_dictionaries(
                      {}, optional={"type": st.sampled_from(["choices", "rectanglelabels", "textarea", "x"]),
                                    "value": st.one_of(st.fixed_dictionaries({"choices": st.lists(values, max_size=2)}),
                                                       trees),
                                    "from_name": st.sampled_from(["label", "other"])}), max_size=2),
                                "was_cancelled": st.booleans(), "completed_by": st.one_of(st.integers(), trees)}),
                  max_size=2)})


def _csv(rows) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item_id", "label", "skip"])
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


files = st.one_of(
    st.tuples(st.just("a.jsonl"), st.lists(jsonl_records, max_size=6).map(
        lambda rs: "".join(json.dumps(r) + "\n" for r in rs))),
    st.tuples(st.just("a.jsonl"), st.text(max_size=200)),
    st.tuples(st.just("a.json"), st.lists(ls_tasks, max_size=4).map(json.dumps)),
    st.tuples(st.just("a.json"), st.one_of(st.text(max_size=200), trees.map(json.dumps))),
    st.tuples(st.just("a.csv"), st.lists(st.tuples(st.one_of(st.sampled_from([str(i) for i in range(45)]),
                                                              st.text(max_size=4)),
                                                    st.one_of(st.sampled_from(["0", "1", "2", "3", "9", ""]),
                                                              st.text(max_size=4)),
                                                    st.sampled_from(["", "yes", "no"])), max_size=6).map(_csv)),
    st.tuples(st.just("a.csv"), st.text(max_size=200)),
)


@SETTINGS
@given(case=files)
def test_any_import_file_stores_only_valid_labels_of_the_batch_or_nothing(paused_run, tmp_path, capsys, case):
    name, text = case
    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(paused_run, run)
    before, batch = _state(run)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    code = main(["import", str(run), str(path)])
    captured = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in captured.err
    after, _ = _state(run)
    if "nothing stored" in captured.err:
        assert after == before                       # a file that cannot be parsed stores nothing
    for item, value in after.items():
        assert item in batch                         # only the current batch can be answered
        assert TRUTH.check_label(item, value) == value
