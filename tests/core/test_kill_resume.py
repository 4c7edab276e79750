"""kill -9 at arbitrary moments loses no label, labels nothing twice, and `resume` ends where an uninterrupted run
ends (same queries, same labels, same metrics)."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

TOY = {
    "name": "toy-kill",
    "seed": 11,
    "task": {"name": "toy"},
    "scorer": {"name": "entropy"},
    # A slow oracle, so kills land while labels are being given as well as while models train.
    "oracle": {"name": "simulated", "params": {"delay_s": 0.01}},
    "loop": {"rounds": 4, "initial": 20, "batch": 15, "keep_checkpoints": 1},
}


# CEAL on digits: fine-tuning carries the model and optimiser state across rounds, pseudo-labels depend on it.
CEAL = {
    "name": "ceal-kill",
    "seed": 2,
    "task": {"plugin": "vision", "name": "classification",
             "params": {"data": {"kind": "digits", "max_pool": 500, "max_test": 100}, "epochs": 4, "min_steps": 20,
                        "pseudo_label": {"enabled": True, "delta0": 0.05, "dr": 0.0033}}},
    "scorer": {"name": "entropy"},
    "oracle": {"name": "simulated", "params": {"delay_s": 0.01}},
    "loop": {"rounds": 4, "initial": 20, "batch": 15, "keep_checkpoints": 1},
}


# On-demand restoration (query synthesis): the network and its Adam state carry across rounds, each round's
# allocation comes from the previous model's validation PSNR, and samples are regenerated from stored seeds.
RESTORE = {
    "name": "restore-kill",
    "seed": 3,
    "task": {"plugin": "vision", "name": "restoration",
             "params": {"task": "denoise", "crop_size": 16, "width": 8, "n_val": 4, "n_test": 6, "examples": 2,
                        "batch_size": 25, "lr": 0.001, "ema": 0.9,
                        "data": {"kind": "skimage", "names": ["camera", "coins", "moon", "astronaut"], "scale": 0.25}}},
    "scorer": {"name": "inverse_psnr"},
    "selector": {"name": "proportional"},
    "oracle": {"name": "corruptor", "params": {"delay_s": 0.15}},
    "loop": {"rounds": 5, "initial": 150, "batch": 150, "keep_checkpoints": 1},
}


# Image regression with EMCM: every round's scoring trains a bootstrap committee (seeded by seed and round), and
# a fresh network is fitted each round, so a resumed run must score and fit exactly as an uninterrupted one.
ROTATION = {
    "name": "rotation-kill",
    "seed": 5,
    "task": {"plugin": "vision", "name": "rotation",
             "params": {"data": {"kind": "digits", "max_pool": 300, "max_test": 100}, "epochs": 4, "min_steps": 20}},
    "scorer": {"plugin": "core", "name": "emcm", "params": {"size": 2}},
    "oracle": {"name": "simulated", "params": {"delay_s": 0.01}},
    "loop": {"rounds": 4, "initial": 20, "batch": 15, "keep_checkpoints": 1},
}


def cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "activelab.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def snapshot(run_dir):
    if not (run_dir / "labels.sqlite").exists():
        return {}, {}, []
    db = sqlite3.connect(run_dir / "labels.sqlite")
    try:
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'metrics'").fetchone()[0] == 0:
            return {}, {}, []  # caught between creating the file and its tables
        labels = dict(db.execute("SELECT item_id, value FROM labels"))
        batches = dict(db.execute("SELECT round, items FROM batches"))
        metrics = [yaml.safe_load(r[0]) for r in db.execute("SELECT record FROM metrics ORDER BY round")]
    finally:
        db.close()
    return labels, batches, metrics


def strip_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("data", [TOY, CEAL, RESTORE, ROTATION],
                         ids=["toy", "ceal-digits", "restoration", "rotation-emcm"])
def test_sigkill_at_random_moments_then_resume(tmp_path, data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))

    ref = cli("run", str(recipe), "--out", str(tmp_path / "ref"), "-q")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    want = snapshot(tmp_path / "ref")

    run_dir = tmp_path / "killed"
    rng = __import__("random").Random(5)
    proc = cli("run", str(recipe), "--out", str(run_dir), "-q")
    seen_labels: dict = {}
    kills = 0
    # Kill whenever the run has made progress since the last kill: first while labels are being given, then
    # while a model trains (a new metrics row appears only after a fit), at a random moment each time.
    for wait_for in ("labels", "labels", "metrics", "labels", "metrics"):
        before = snapshot(run_dir)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            if not (run_dir / "labels.sqlite").exists():
                continue
            now = snapshot(run_dir)
            if (wait_for == "labels" and len(now[0]) > len(before[0])) or \
                    (wait_for == "metrics" and len(now[2]) > len(before[2])):
                break
        if proc.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        labels, _, _ = snapshot(run_dir)
        # nothing committed before a kill ever disappears or changes
        assert all(labels.get(k) == v for k, v in seen_labels.items())
        seen_labels = labels
        proc = cli("resume", str(run_dir), "-q")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert kills >= 3, f"only {kills} kills landed; make the run slower"

    labels, batches, metrics = snapshot(run_dir)
    assert labels == want[0]
    assert batches == want[1]
    assert strip_times(metrics) == strip_times(want[2])
    # the report files were rewritten after the last round too
    jsonl = [yaml.safe_load(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert strip_times(jsonl) == strip_times(want[2])
    assert (run_dir / "learning_curve.png").exists()
    assert all(labels.get(k) == v for k, v in seen_labels.items())
