"""kill -9 during the detection, speech and translation runs, at chosen moments of a round, then `resume`: the
run ends where an uninterrupted run ends (same queries and scores, same labels, same metrics but timings), and no
committed label, batch or metrics row ever changes or disappears while the run is killed and resumed.

(The toy task, CEAL and restoration are killed in tests/core/test_kill_resume.py.)

Each test first runs the recipe uninterrupted, watching the run folder to learn how long each moment of each
round lasts on this machine, then runs it again and kills it (SIGKILL) at four moments, each at a random point
inside the moment:

  labelling   the round's batch is committed and the simulated oracle (``delay_s`` per answer) is answering it
  fitting     every item of the batch is labelled, no checkpoint of the round yet: the model trains
  scoring     round >= 1: the previous round's metrics row is committed, the round's batch is not: the pool is
              being scored with the previous round's model
  checkpoint  right after ``checkpoints/round_<r>.pt`` appears (before the round's metrics row): evaluation

Where a kill really landed is read back from the run folder after the process is gone; a kill that missed its
moment (the machine was slower or faster than during the reference run) is repeated at the next occurrence, and
the test asserts that every moment was hit.
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

MOMENTS = ("labelling", "fitting", "scoring", "checkpoint")
# (moment, first round it may land in), in the order they come up in a run: round 0's labels and its fit from
# scratch; round 1's scoring with the model of round 0, and its evaluation, which the process resumed after the
# checkpoint kill redoes from the checkpoint file, then scores round 2 with that model (speech fine-tunes from it).
KILLS = (("labelling", 0), ("fitting", 0), ("scoring", 1), ("checkpoint", 1))
MAX_KILLS = len(KILLS) + 3          # a miss is retried at the next occurrence of its moment, at most 3 times
TIMEOUT_S = 240                     # any one process (reference or resumed) gets this long


# ----------------------------------------------------------------------------------------------- data and recipes
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill-plugins-data")


def detection_recipe(data: Path) -> dict:
    from activelab.plugins.vision.detection.synth import make_digit_canvases

    folder = make_digit_canvases(data / "digits", images=100, size=32, seed=0)   # 80 pool + 20 test canvases
    return {
        "name": "miaod-kill",
        "seed": 4,
        "task": {"plugin": "vision", "name": "detection",
                 "params": {"data": {"annotations": str(folder / "train.json"),
                                     "test_annotations": str(folder / "test.json")},
                            "channels": 16, "head_convs": 1, "head_width": 16, "miaod": True,
                            "schedule": {"label_epochs": 1, "cycles": 1, "min_epochs": 1, "max_epochs": 1,
                                         "min_steps": 5},
                            "optimizer": "adam", "lr": 0.001, "batch_size": 4, "unlabelled_batch_size": 4,
                            "top_k": 50,
                            # small evaluation batches: scoring the pool and evaluating take long enough to kill in
                            "eval_batch_size": 4}},
        "scorer": {"name": "miaod"},
        "oracle": {"name": "simulated", "params": {"delay_s": 0.1}},
        "loop": {"rounds": 2, "initial": 8, "batch": 8, "keep_checkpoints": 1},
    }


def speech_recipe(data: Path) -> dict:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")
    from activelab.plugins.speech import synth

    folder = synth.make_spoken_commands(data / "commands", utterances=64, test_utterances=8, seed=5)
    return {
        "name": "asr-kill",
        "seed": 1,
        "task": {"plugin": "speech", "name": "recognition",
                 "params": {"data": {"path": str(folder / "train.jsonl"), "test_path": str(folder / "test.jsonl")},
                            "dim": 32, "layers": 1, "n_mels": 20, "subsample": 4,
                            "fine_tune": True,        # the model of round r-1 (and its optimiser) carry over
                            "epochs": 1, "min_steps": 12, "batch_size": 8,
                            "eval_batch_size": 1,     # scoring the pool takes long enough to kill in
                            "loss_prediction": {"enabled": True}}},
        "scorer": {"name": "predicted_loss"},
        "oracle": {"name": "simulated", "params": {"delay_s": 0.1}},
        "loop": {"rounds": 2, "initial": 8, "batch": 8, "keep_checkpoints": 1},
    }


def translation_recipe(data: Path) -> dict:  # noqa: ARG001 - the number phrases need no files
    return {
        "name": "nmt-kill",
        "seed": 1,
        "task": {"plugin": "nlp", "name": "translation",
                 # 180 pool sentences to score, 60 test sentences to translate
                 "params": {"data": {"kind": "numbers", "size": 240, "max_digits": 3, "test_fraction": 0.25},
                            "tokenizer": {"vocab_size": 300},
                            "model": {"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32, "max_len": 32},
                            "curriculum": {"enabled": True},
                            "steps": 60, "batch_size": 8, "warmup": 5, "lr": 0.003, "eval_batch_size": 8}},
        "scorer": {"plugin": "nlp", "name": "curriculum_nll", "params": {"rounds": 2}},
        "oracle": {"name": "simulated", "params": {"delay_s": 0.1}},
        "loop": {"rounds": 2, "initial": 8, "batch": 8, "keep_checkpoints": 1},
    }


# ----------------------------------------------------------------------------------------------- the run folder
@dataclass
class Snap:
    labels: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)     # round -> (items, scores)
    metrics: list = field(default_factory=list)     # records, round order
    round: int | None = None                        # the store's "round" state: the round being worked on
    checkpoints: set = field(default_factory=set)   # rounds with a complete checkpoint file


def read(run_dir: Path) -> Snap | None:
    """What the run folder holds now; None while it is not there yet (or caught between two writes)."""
    db_path = run_dir / "labels.sqlite"
    if not db_path.exists():
        return None
    try:
        db = sqlite3.connect(db_path, timeout=10)
        try:
            if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'state'").fetchone()[0] == 0:
                return None
            labels = {i: json.loads(v) for i, v in db.execute("SELECT item_id, value FROM labels")}
            batches = {r: (json.loads(i), None if s is None else json.loads(s))
                       for r, i, s in db.execute("SELECT round, items, scores FROM batches")}
            metrics = [json.loads(r) for (r,) in db.execute("SELECT record FROM metrics ORDER BY round")]
            row = db.execute("SELECT value FROM state WHERE key = 'round'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    checkpoints = {int(m.group(1)) for name in os.listdir(run_dir / "checkpoints")
                   if (m := re.fullmatch(r"round_(\d+)\.pt", name))}
    return Snap(labels, batches, metrics, json.loads(row[0]) if row else None, checkpoints)


def moment(snap: Snap | None, rounds: int) -> tuple[str, int]:
    """(moment, round) the run stands at: one of MOMENTS, or "starting", "between" (reports, status), "done"."""
    if snap is None:
        return "starting", 0
    r = len(snap.metrics)                 # rounds 0 .. r-1 are evaluated (rows are committed in round order)
    if r > rounds:
        return "done", rounds
    if r not in snap.batches:
        return ("scoring" if r >= 1 and snap.round == r else "starting" if r == 0 else "between"), r
    if any(item not in snap.labels for item in snap.batches[r][0]):
        return "labelling", r
    return ("checkpoint" if r in snap.checkpoints else "fitting"), r


class Watch:
    """Polls a run folder; every poll checks that nothing committed earlier changed or disappeared."""

    def __init__(self, run_dir: Path, rounds: int):
        self.run_dir, self.rounds = run_dir, rounds
        self.last = Snap()
        self.first_seen: dict[tuple[str, int], float] = {}
        self.last_seen: dict[tuple[str, int], float] = {}

    def poll(self) -> tuple[Snap, tuple[str, int]]:
        snap = read(self.run_dir)
        if snap is None:
            return self.last, moment(self.last, self.rounds)
        for item, value in self.last.labels.items():
            assert snap.labels.get(item, "<gone>") == value, \
                f"label of {item} changed: {value} -> {snap.labels.get(item, '<gone>')}"
        for r, batch in self.last.batches.items():
            assert snap.batches.get(r) == batch, f"batch {r} changed: {batch} -> {snap.batches.get(r)}"
        assert snap.metrics[:len(self.last.metrics)] == self.last.metrics, "a committed metrics row changed"
        self.last = snap
        now = time.monotonic()
        where = moment(snap, self.rounds)
        self.first_seen.setdefault(where, now)
        self.last_seen[where] = now
        return snap, where

    def duration(self, where: tuple[str, int]) -> float:
        """How long a moment of the reference run was seen to last (the nearest round's, if that one was missed)."""
        name, r = where
        seen = [(abs(k[1] - r), self.last_seen[k] - self.first_seen[k]) for k in self.first_seen if k[0] == name]
        return min(seen)[1] if seen else 0.0


def cli(log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "activelab.cli", *args, "-q"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def watch_until_done(proc: subprocess.Popen, watch: Watch, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"run took over {TIMEOUT_S} s\n{tail(log)}"
        watch.poll()
        time.sleep(0.02)
    assert proc.returncode == 0, tail(log)
    watch.poll()


def wait_for(proc, watch: Watch, log: Path, want: str, min_round: int) -> tuple[str, int] | None:
    """Poll until the run stands at moment ``want`` in a round >= ``min_round``; None if the run ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"no {want} moment within {TIMEOUT_S} s\n{tail(log)}"
        _, where = watch.poll()
        if where[0] == "done":
            return None
        if want == "checkpoint" and where[0] in ("fitting", "checkpoint") and where[1] >= min_round:
            # a checkpoint appears by an atomic rename: watch for the file alone, as often as we can
            ckpt = watch.run_dir / "checkpoints" / f"round_{where[1]}.pt"
            while proc.poll() is None and not ckpt.exists():
                assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT_S} s\n{tail(log)}"
                time.sleep(0.002)
            return ("checkpoint", where[1]) if proc.poll() is None else None
        if where[0] == want and where[1] >= min_round:
            return where
        time.sleep(0.02)
    assert proc.returncode == 0, tail(log)
    return None


def settled(watch: Watch) -> tuple[str, int]:
    """Where a killed run stands (read until the store answers: nothing writes to it any more)."""
    for _ in range(100):
        if read(watch.run_dir) is not None:
            break
        time.sleep(0.05)
    return watch.poll()[1]


# ----------------------------------------------------------------------------------------------- the test
@pytest.mark.slow
@pytest.mark.parametrize("make_recipe", [detection_recipe, speech_recipe, translation_recipe],
                         ids=["detection", "speech", "translation"])
def test_sigkill_at_each_moment_of_a_round_then_resume(tmp_path, data_dir, make_recipe):
    started, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    recipe_data = make_recipe(data_dir)
    rounds = recipe_data["loop"]["rounds"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_data))
    log = tmp_path / "stderr.log"

    # the uninterrupted run, watched to learn how long each moment lasts here
    ref_dir = tmp_path / "ref"
    ref = Watch(ref_dir, rounds)
    watch_until_done(cli(log, "run", str(recipe), "--out", str(ref_dir)), ref, log)
    want = read(ref_dir)
    assert [r["round"] for r in want.metrics] == list(range(rounds + 1))
    reference_s = time.monotonic() - started

    run_dir = tmp_path / "killed"
    watch = Watch(run_dir, rounds)
    seed = random.SystemRandom().randrange(10**6)       # kills land at different points from one test run to the next
    rng = random.Random(seed)
    proc = cli(log, "run", str(recipe), "--out", str(run_dir))
    todo = list(KILLS)
    kills: list[tuple[str, int, str, int, float]] = []   # (aimed at, its round, landed in, its round, delay)
    try:
        while todo and len(kills) < MAX_KILLS:
            aim, min_round = todo[0]
            at = wait_for(proc, watch, log, aim, min_round)
            if at is None:
                break                                         # the run ended before the moment came up again
            # a random point inside the moment: up to 60% of its length in the reference run (the checkpoint
            # moment is hit right after the file appears)
            delay = 0.0 if aim == "checkpoint" else rng.uniform(0.1, 0.6) * ref.duration(at)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed = settled(watch)
            kills.append((aim, at[1], *landed, round(delay, 3)))
            if landed == at:
                todo.pop(0)
            proc = cli(log, "resume", str(run_dir))
        watch_until_done(proc, watch, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    elapsed = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    durations = {f"{k[0]}{k[1]}": round(ref.last_seen[k] - t, 2) for k, t in ref.first_seen.items()}
    context = (f"{recipe_data['name']} (kill seed {seed}): {len(kills)} kills (aimed at, round, landed in, round, "
               f"delay s) {kills}; reference moments (s) {durations}")
    print(f"\n{context}; reference run {reference_s:.1f} s, all {elapsed:.1f} s wall, {cpu:.1f} s CPU in the runs")

    hit = {aim for aim, r, landed, landed_r, _ in kills if (aim, r) == (landed, landed_r)}
    assert hit == set(MOMENTS), context
    assert len(kills) >= 3, context

    got = read(run_dir)
    assert got.labels == want.labels, context
    assert {r: items for r, (items, _) in got.batches.items()} == \
        {r: items for r, (items, _) in want.batches.items()}, context
    assert got.batches == want.batches, context                           # the queries' scores too
    assert strip_times(got.metrics) == strip_times(want.metrics), context
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert strip_times(jsonl) == strip_times(want.metrics), context        # the reports were rewritten at the end
    assert (run_dir / "learning_curve.png").exists()
