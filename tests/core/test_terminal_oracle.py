"""The terminal oracle: a person typing answers (driven in-process through streams, and through a real
pseudo-terminal with `activelab run` / `resume`), every answer in labels.sqlite the moment it is given."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from activelab.labelling.terminal import TerminalOracle, ansi_preview, audio_seconds
from activelab.protocol import Label, Quit, Skip, Undo
from activelab.testing import OracleConformance, ToyTask, fitted_toy_task, make_context

pexpect = pytest.importorskip("pexpect")


def oracle(script: str, **params) -> tuple[TerminalOracle, io.StringIO]:
    out = io.StringIO()
    params.setdefault("annotator", "tester")
    return TerminalOracle(TerminalOracle.Config(**params), stdin=io.StringIO(script), stdout=out), out


class TestTerminalConformance(OracleConformance):
    covers = ("core", "oracle", "terminal")

    def make_oracle(self):
        return oracle("1\n" * 40)[0]


# ----------------------------------------------------------------------------------------------- in-process
def test_typed_labels_refusals_undo_skip_and_quit():
    task = ToyTask()
    items = ["3", "4", "5", "6"]
    ask, out = oracle("2\nzebra\n9\n\n1\nundo\n0\nskip\n?\nquit\n")
    answers = list(ask.label(task, items, make_context(round=0)))
    assert answers == [Label("3", 2, "tester"), Label("4", 1, "tester"), Undo("4", "tester"),
                       Label("4", 0, "tester"), Skip("5", "tester"), Quit()]
    text = out.getvalue()
    assert text.count("refused:") == 2 and "no suggestion" in text     # zebra, 9; Enter in round 0
    assert "withdrew the answer for 4" in text and "skip   leave this item" in text


def test_enter_accepts_the_models_suggestion_and_end_of_input_quits():
    task = fitted_toy_task()
    items = list(task.pool_ids())[100:103]
    hints = task.suggest(items)
    ask, out = oracle("\n\n")
    answers = list(ask.label(task, items, make_context(round=1)))
    assert answers[:2] == [Label(items[0], hints[0], "tester"), Label(items[1], hints[1], "tester")]
    assert answers[2] == Quit()
    assert f"suggestion: {hints[0]}  (Enter accepts)" in out.getvalue()
    # without suggestions Enter alone is refused
    ask, out = oracle("\n3\n", suggest=False)
    assert list(ask.label(task, items[:1], make_context(round=1))) == [Label(items[0], 3, "tester")]
    assert "suggestion:" not in out.getvalue()


def test_undo_before_any_answer_is_explained():
    ask, out = oracle("undo\n1\n")
    assert list(ask.label(ToyTask(), ["7"], make_context(round=0))) == [Label("7", 1, "tester")]
    assert "nothing to undo" in out.getvalue()


class MediaTask(ToyTask):
    """The toy task describing its items as an image, an audio clip and proposed boxes."""

    def __init__(self, folder: Path):
        super().__init__()
        from PIL import Image

        self.image = folder / "item.png"
        Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 255).astype(np.uint8)).save(self.image)
        self.audio = folder / "item.wav"
        with wave.open(str(self.audio), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
            w.writeframes(b"\0\0" * 12000)

    def describe(self, item_id):
        return {"image": str(self.image), "width": 64, "height": 48, "audio": str(self.audio), "text": "a point",
                "boxes": [{"label": "car", "box": [1, 2, 30, 40], "score": 0.9}], "classes": ["0", "1", "2", "3"]}


def test_media_items_show_path_preview_duration_and_can_be_opened_and_played(tmp_path):
    task = MediaTask(tmp_path)
    ask, out = oracle("open\nplay\n1\n", preview="on", viewer="true", player="true")
    assert list(ask.label(task, ["0"], make_context(round=0))) == [Label("0", 1, "tester")]
    text = out.getvalue()
    assert f"image: {task.image} (64 x 48)  (type 'open' to view it)" in text
    assert "\x1b[38;2;" in text                                     # the colour preview
    assert f"audio: {task.audio} (1.5 s)  (type 'play' to hear it)" in text
    assert '"label": "car"' in text and "text: a point" in text and "classes:" not in text
    assert f"opened {task.image}" in text and f"played {task.audio}" in text
    assert audio_seconds(str(task.audio)) == pytest.approx(1.5)
    assert len(ansi_preview(str(task.image), width=16)) == 6 and ansi_preview(str(tmp_path / "none.png")) == []


# ----------------------------------------------------------------------------------------------- a real terminal
RECIPE = {
    "name": "toy_terminal",
    "task": {"name": "toy", "params": {"n_items": 40, "n_test": 40, "epochs": 5}},
    "scorer": {"name": "entropy"},
    "oracle": {"name": "terminal", "params": {"annotator": "tester"}},
    "loop": {"rounds": 1, "initial": 4, "batch": 3},
}
ITEM = r"item \d+ of \d+: (\S+)\r?\n"


def spawn(*args: str, cwd: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    return pexpect.spawn(sys.executable, ["-m", "activelab.cli", *args], cwd=str(cwd), env=env,
                         encoding="utf-8", timeout=120)


def next_item(child) -> str:
    child.expect(ITEM)
    item = child.match.group(1)
    child.expect("label> ")
    return item


def rows(run_dir: Path, table: str):
    db = sqlite3.connect(run_dir / "labels.sqlite")
    try:
        if table == "labels":
            return {i: (json.loads(v), r, a)
                    for i, v, r, a in db.execute("SELECT item_id, value, round, annotator FROM labels")}
        return {(r, i) for r, i in db.execute("SELECT round, item_id FROM skips")}
    finally:
        db.close()


def finish(child) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_pseudo_terminal_run_quit_mid_batch_then_resume(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    child = spawn("run", "r.yaml", "--out", "run", cwd=tmp_path)

    a = next_item(child)
    child.sendline("1")
    b = next_item(child)
    assert rows(run_dir, "labels") == {a: (1, 0, "tester")}            # stored the moment it was given
    child.sendline("7")                                                  # not a class of the toy task
    child.expect("refused: label must be a class number 0..3, got 7")
    child.expect("label> ")
    child.sendline("2")
    c = next_item(child)
    child.sendline("undo")                                               # withdraw b's 2 and ask b again
    child.expect(f"withdrew the answer for {re.escape(b)}")
    assert next_item(child) == b
    assert rows(run_dir, "labels") == {a: (1, 0, "tester")}
    child.sendline("3")
    assert next_item(child) == c
    child.sendline("skip")
    d = next_item(child)
    child.sendline("quit")
    child.expect("paused")
    assert finish(child) == 0
    assert rows(run_dir, "labels") == {a: (1, 0, "tester"), b: (3, 0, "tester")}
    assert rows(run_dir, "skips") == {(0, c)}
    status = json.loads(pexpect.run(f"{sys.executable} -m activelab.cli status run --json", cwd=str(tmp_path),
                                    encoding="utf-8"))
    assert (status["status"], status["round"], status["labels"], status["outstanding"]) == ("paused", 0, 2, 1)

    # resume: what is left of round 0 (d; c was skipped), then round 1 with the model's suggestions
    child = spawn("resume", "run", cwd=tmp_path)
    assert next_item(child) == d
    child.sendline("0")
    child.expect(r"round 1: 3 item\(s\) to label")
    e = next_item(child)
    suggestions = re.findall(r"suggestion: (\d)", child.before)
    assert len(suggestions) == 1, child.before
    hint_e = int(suggestions[0])
    child.sendline("")                                                   # Enter accepts the suggestion
    f = next_item(child)
    child.sendline("undo")
    assert next_item(child) == e
    child.sendline("")
    assert next_item(child) == f
    child.sendline("2")
    g = next_item(child)
    hint_g = int(re.findall(r"suggestion: (\d)", child.before)[0])
    child.sendline("")
    child.expect("done:")
    assert finish(child) == 0
    labels = rows(run_dir, "labels")
    assert labels == {a: (1, 0, "tester"), b: (3, 0, "tester"), d: (0, 0, "tester"),
                      e: (hint_e, 1, "tester"), f: (2, 1, "tester"), g: (hint_g, 1, "tester")}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["n_labeled"] for m in metrics] == [3, 6]
