"""Regressions for the data-loss and wrong-exit defects a hostile probe found (the reliability issue): each test
fails on the code before its fix. Toy task only; the plugins' own cases live beside their tests."""
import errno
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from activelab import recipe as recipes
from activelab.cli import main
from activelab.errors import UserError
from activelab.loop import Runner
from activelab.run import _pin_paths, create_run, status
from activelab.store import LabelConflict, LabelFrozen, LabelStore

TOY = {"name": "toy", "task": {"name": "toy", "params": {"n_items": 60, "n_test": 30, "epochs": 5}},
       "scorer": {"name": "entropy"}, "loop": {"rounds": 2, "initial": 6, "batch": 4}}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def labels_of(run_dir):
    db = sqlite3.connect(run_dir / "labels.sqlite")
    try:
        return dict(db.execute("SELECT item_id, value FROM labels"))
    finally:
        db.close()


# ---------------------------------------------------------------------------------------- 1. concurrent creation
def _create(args):
    path, out, barrier = args
    barrier.wait()
    try:
        create_run(recipes.load(path), out)
        return "made"
    except UserError as exc:
        return f"refused: {exc}"


def test_two_runs_creating_one_folder_at_once_exactly_one_wins(tmp_path):
    path = write(tmp_path, TOY)
    ctx = multiprocessing.get_context("fork")
    for attempt in range(6):
        out = tmp_path / f"run{attempt}"
        with ctx.Manager() as manager:
            barrier = manager.Barrier(2)
            with ctx.Pool(2) as procs:
                results = procs.map(_create, [(str(path), str(out), barrier)] * 2)
        assert sorted(r.split(":")[0] for r in results) == ["made", "refused"], results
        assert (out / "recipe.yaml").is_file() and (out / "labels.sqlite").stat().st_size > 0
        # nothing but the one run folder is left behind (the loser's temporary folder is gone)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".run{attempt}")) == []


def test_a_refused_run_never_deletes_the_running_one(tmp_path, capsys):
    path = write(tmp_path, TOY)
    out = tmp_path / "run"
    create_run(recipes.load(path), out)
    holder = Runner(out, progress=False)  # another process is working on it (holds the lock)
    try:
        holder.store.add_label("0", 1, 0, "someone")
        # the refused process is a "fresh" one (it believes it just made the folder): it must remove nothing
        with pytest.raises(UserError, match="another activelab process"):
            Runner(out, progress=False, fresh=True)
        assert main(["run", str(path), "--out", str(out), "-q"]) == 2
        assert main(["resume", str(out), "-q"]) == 2
        capsys.readouterr()
        assert (out / "labels.sqlite").is_file() and (out / "recipe.yaml").is_file()
        assert holder.store.labels() == {"0": 1}
    finally:
        holder.close()


def test_a_fresh_run_with_bad_data_leaves_no_folder_but_an_old_one_is_kept(tmp_path, capsys):
    bad = {**TOY, "task": {"name": "toy", "params": {"n_items": 60}}, "scorer": {"name": "entropy"}}
    path = write(tmp_path, bad)
    out = tmp_path / "fresh"
    # a data problem found while building the task: the folder this command just made is removed again
    import activelab.testing as testing

    original = testing.ToyTask.__init__

    def broken(self, *a, **k):
        raise UserError("data/x.csv: broken file")

    testing.ToyTask.__init__ = broken
    try:
        assert main(["run", str(path), "--out", str(out), "-q"]) == 2
        assert not out.exists()
    finally:
        testing.ToyTask.__init__ = original
    one_line_error(capsys, "broken file")


# ---------------------------------------------------------------------------------------- 2 and 10. frozen labels
def test_labels_a_model_was_trained_on_never_change(tmp_path):
    store = LabelStore(tmp_path / "s.sqlite")
    store.add_label("a", 1, 0, "x")
    store.add_label("b", 2, 1, "x")
    store.freeze(1)
    with pytest.raises(LabelFrozen):
        store.remove_label("b", 1)
    with pytest.raises(LabelFrozen):
        store.replace_label("b", 3, 1, "x")
    with pytest.raises(LabelFrozen):
        store.add_label("c", 3, 1, "x")   # a late answer for a batch that was already trained on
    with pytest.raises(LabelFrozen):
        store.skip(1, "c")
    assert store.labels() == {"a": 1, "b": 2}
    store.add_label("c", 3, 2, "x")       # the next round is open
    store.replace_label("c", 4, 2, "y")
    assert store.labels()["c"] == 4


def test_a_replacing_answer_is_one_transaction(tmp_path, monkeypatch):
    store = LabelStore(tmp_path / "s.sqlite")
    store.add_label("a", 1, 0, "x")
    import activelab.store as store_module

    calls = {"n": 0}
    real = time.time

    def failing_time():  # the insert of the new label fails after the old one was deleted
        calls["n"] += 1
        raise OSError(errno.EIO, "simulated failure")

    monkeypatch.setattr(store_module.time, "time", failing_time)
    with pytest.raises(OSError):
        store.replace_label("a", 2, 0, "y")
    monkeypatch.setattr(store_module.time, "time", real)
    assert calls["n"] == 1
    assert store.labels() == {"a": 1}     # rolled back whole: the item still has its old answer
    with pytest.raises(LabelConflict):
        store.replace_label("zz", 2, 0, "y")


def test_import_into_a_finished_run_is_refused_and_changes_nothing(tmp_path, capsys):
    path = write(tmp_path, TOY)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    before = labels_of(out)
    store = LabelStore(out / "labels.sqlite")
    last_batch = store.batch(2)[0]
    store.close()
    item = last_batch[0]
    old = json.loads(before[item])
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"item_id": item, "label": (old + 1) % 4}) + "\n")
    capsys.readouterr()
    assert main(["import", str(out), str(answers)]) == 2
    one_line_error(capsys, "already trained on")
    assert labels_of(out) == before


# ---------------------------------------------------------------------------------------- 3. a lost store
@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_run_whose_store_was_lost_is_an_error_not_a_fresh_start(tmp_path, capsys, damage):
    path = write(tmp_path, TOY)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    for suffix in ("-wal", "-shm"):
        (out / f"labels.sqlite{suffix}").unlink(missing_ok=True)
    if damage == "truncate":
        (out / "labels.sqlite").write_bytes(b"")
    else:
        (out / "labels.sqlite").unlink()
    capsys.readouterr()
    assert main(["resume", str(out), "-q"]) == 2
    one_line_error(capsys, "labels.sqlite")
    assert main(["status", str(out)]) == 2
    one_line_error(capsys, "labels.sqlite")
    # nothing was recreated behind the user's back
    assert not (out / "labels.sqlite").exists() or (out / "labels.sqlite").stat().st_size == 0


# ---------------------------------------------------------------------------------------- 4. pinned data
def test_paths_in_the_resolved_recipe_are_absolute(tmp_path, monkeypatch):
    class Inner(BaseModel):
        path: Path | None = None
        name: str = "x"

    class Config(BaseModel):
        data: Inner
        extra: list[Path] = []
        mapping: dict[str, Path] = {}

    monkeypatch.chdir(tmp_path)
    cfg = Config(data=Inner(path="data/train.json"), extra=["a/b"], mapping={"k": "../c"})
    pinned = _pin_paths(cfg, cfg.model_dump(mode="json"))
    assert pinned["data"] == {"path": str(tmp_path / "data" / "train.json"), "name": "x"}
    assert pinned["extra"] == [str(tmp_path / "a" / "b")]
    assert pinned["mapping"] == {"k": str(tmp_path.parent / "c")}


def test_resume_on_other_data_is_refused(tmp_path, capsys):
    path = write(tmp_path, {**TOY, "oracle": {"name": "exchange"}})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0   # pauses awaiting labels
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["task"]["params"]["n_items"] = 61   # the pool is no longer the one the run started on
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["resume", str(out), "-q"]) == 2
    one_line_error(capsys, "data differ")


# ---------------------------------------------------------------------------------------- 7, 12, 14, 15. recipes
BOMB = """name: bomb
task: {name: toy}
scorer: {name: entropy}
loop: {rounds: 1, initial: 2, batch: 2}
strategies:
  a: &a {x: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}
  b: &b {x: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]}
  c: &c {x: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]}
  d: &d {x: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]}
  e: &e {x: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}
  f: &f {x: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]}
  g: &g {x: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]}
  h: {x: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]}
"""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_alias_bomb_is_refused_at_load(tmp_path, capsys, command):
    path = write(tmp_path, BOMB)
    started = time.perf_counter()
    args = [command, str(path)] + (["--out", str(tmp_path / "run"), "-q"] if command == "run" else [])
    assert main(args) == 2
    assert time.perf_counter() - started < 10
    one_line_error(capsys, "r.yaml", "expands to more than")
    assert not (tmp_path / "run").exists()


def test_duplicate_keys_are_refused_with_both_lines(tmp_path, capsys):
    text = "name: toy\ntask: {name: toy}\nscorer: {name: entropy}\nloop: {rounds: 1, initial: 2, batch: 2}\n" \
           "scorer: {name: random}\n"
    assert main(["validate", str(write(tmp_path, text))]) == 2
    line = capsys.readouterr().err.strip()
    assert "duplicate key 'scorer' (lines 3 and 5)" in line and "r.yaml" in line and "\n" not in line


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", ".hidden", ""])
def test_a_recipe_name_cannot_put_the_run_folder_elsewhere(tmp_path, capsys, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write(tmp_path, {**TOY, "name": name})), "-q"]) == 2
    assert "name:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_input_nested_100000_levels_deep_is_a_one_line_error(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    assert main(["validate", str(write(tmp_path, "name: " + deep))]) == 2
    one_line_error(capsys, "r.yaml", "nested")
    # an import file: JSON lines and a Label Studio export
    path = write(tmp_path, {**TOY, "oracle": {"name": "exchange"}})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    for name, text in (("deep.jsonl", deep + "\n"), ("deep.json", deep)):
        capsys.readouterr()
        assert main(["import", str(out), str(write(tmp_path, text, name))]) == 2
        one_line_error(capsys, name, "nested too deeply")
    assert labels_of(out) == {}


# ---------------------------------------------------------------------------------------- 11. the environment
def test_a_full_disk_while_writing_a_checkpoint_is_a_user_error_with_nothing_half_written(tmp_path, capsys,
                                                                                           monkeypatch):
    path = write(tmp_path, TOY)
    out = tmp_path / "run"
    import activelab.run as run_module

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module.os, "fsync", full)
    create_run_fsync = False
    try:
        code = main(["run", str(path), "--out", str(out), "-q"])
    finally:
        monkeypatch.undo()
    assert code == 2 and not create_run_fsync
    line = one_line_error(capsys, "No space left on device")
    assert "recipe.yaml" in line or ".pt" in line or "metrics" in line
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".new")]


def test_a_full_label_store_is_a_user_error(tmp_path):
    path = write(tmp_path, TOY)
    out = create_run(recipes.load(path), tmp_path / "run")
    runner = Runner(out, progress=False)
    try:
        real = runner.store.db

        class Full:  # SQLite's own answer when the disk fills up, for every write
            def execute(self, sql, *args):
                if sql.lstrip().upper().startswith(("INSERT", "DELETE", "UPDATE")):
                    raise sqlite3.OperationalError("database or disk is full")
                return real.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(real, name)

            def __enter__(self):
                return real.__enter__()

            def __exit__(self, *exc):
                return real.__exit__(*exc)

        runner.store.db = Full()
        with pytest.raises(UserError, match="labels.sqlite: cannot write the label store"):
            runner.run()
        runner.store.db = real
    finally:
        runner.close()


def test_a_truncated_checkpoint_is_a_user_error(tmp_path, capsys):
    path = write(tmp_path, {**TOY, "oracle": {"name": "exchange"}})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0   # round 0 awaits labels
    store = LabelStore(out / "labels.sqlite")
    for item in store.batch(0)[0]:
        store.add_label(item, 0, 0, "test")
    store.close()
    assert main(["resume", str(out), "-q"]) == 0                  # fits round 0, pauses at round 1
    ckpt = out / "checkpoints" / "round_0.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    capsys.readouterr()
    assert main(["export", str(out), "--format", "jsonl"]) == 2
    one_line_error(capsys, "round_0.pt", "checkpoint unreadable")


# ---------------------------------------------------------------------------------------- 13. compare metrics
def test_compare_refuses_an_unknown_metric_before_any_run(tmp_path, capsys):
    path = write(tmp_path, TOY)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "random", "--seeds", "1", "--metrics", "nosuchmetric",
                 "--out", str(out), "-q"]) == 2
    one_line_error(capsys, "nosuchmetric", "accuracy")
    assert not out.exists()


# ---------------------------------------------------------------------------------------- 16. strict JSON
def test_non_finite_metrics_are_written_as_strict_json(tmp_path, monkeypatch):
    import activelab.testing as testing

    monkeypatch.setattr(testing.ToyTask, "evaluate", lambda self: {"accuracy": float("nan")})
    path = write(tmp_path, {**TOY, "loop": {"rounds": 1, "initial": 6, "batch": 4}})
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    rows = [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [None, None]


# ---------------------------------------------------------------------------------------- status after a stop
def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "activelab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_status_says_interrupted_after_sigterm_or_kill(tmp_path, sig):
    slow = {**TOY, "oracle": {"name": "simulated", "params": {"delay_s": 0.2}},
            "loop": {"rounds": 3, "initial": 10, "batch": 10}}
    path = write(tmp_path, slow)
    out = tmp_path / "run"
    proc = _cli("run", str(path), "--out", str(out), "-q")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if (out / "labels.sqlite").exists() and status(out)["labels"] >= 2:
            break
    assert status(out)["status"] in ("labelling", "running")   # alive: the lock is held
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read().decode()
    assert status(out)["status"] == "interrupted"
    labels = status(out)["labels"]
    assert labels >= 2
    resumed = _cli("resume", str(out), "-q")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read().decode()
    assert status(out)["status"] == "done"
