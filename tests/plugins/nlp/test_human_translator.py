"""People translate: the terminal shows the source sentence and takes the typed translation (Enter accepts the
model's), and a JSON-lines export/import carries the translations; labels land in the store either way."""
import io
import json

import yaml

from activelab.cli import main
from activelab.labelling.terminal import TerminalOracle
from activelab.protocol import Label, Quit
from activelab.testing import make_context

from .test_translation import TINY, fitted_task


def test_terminal_shows_the_source_and_takes_typed_translations():
    task = fitted_task()
    items = list(task.pool_ids()[30:33])
    typed = io.StringIO("\n".join(["une traduction", "", "quit"]) + "\n")
    out = io.StringIO()
    oracle = TerminalOracle(TerminalOracle.Config(annotator="ann", preview="off"), stdin=typed, stdout=out)
    answers = list(oracle.label(task, items, make_context(round=1)))
    shown = out.getvalue()
    assert task.describe(items[0])["text"] in shown                     # the source sentence is shown
    suggestion = task.suggest([items[1]])[0]
    assert suggestion and "suggestion:" in shown
    assert answers[0] == Label(items[0], "une traduction", annotator="ann")
    assert answers[1] == Label(items[1], suggestion, annotator="ann")   # Enter accepted the model's translation
    assert isinstance(answers[2], Quit)


def test_translations_round_trip_through_a_jsonl_exchange(tmp_path, capsys):
    recipe = {"name": "nmt-by-hand", "task": {"plugin": "nlp", "name": "translation", "params": TINY},
              "scorer": {"name": "random"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 6, "batch": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "-q"]) == 0     # pauses, awaiting labels
    assert main(["export", str(run), "--format", "jsonl", "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["text"] for r in rows)               # the sources travel as text
    truth = fitted_task()
    for r in rows:
        r["label"] = truth.true_label(r["item_id"])
    rows[0]["label"] = "   "                                             # an empty translation is refused
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["import", str(run), str(tmp_path / "a.jsonl")]) == 2
    assert rows[0]["item_id"] in capsys.readouterr().err
    rows[0]["label"] = truth.true_label(rows[0]["item_id"])
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["import", str(run), str(tmp_path / "a.jsonl")]) == 0
    assert main(["resume", str(run), "-q"]) == 0                         # trains round 0, pauses for round 1
    assert main(["status", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["labels"] == 6 and info["round"] == 1 and info["outstanding"] == 3
