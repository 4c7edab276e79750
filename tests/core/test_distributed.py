"""Several processes for one run (activelab.distributed, issue 14): the same picks as one process, whatever the
scorer or selector; a killed worker stops the run with one line naming its rank and loses nothing; the same code
under two torchrun launchers ("two nodes"). Workers are real processes on gloo (CPU), one thread each."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from activelab.cli import main
from activelab.distributed import _blocks
from activelab.store import LabelStore

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}   # gloo workers, also on a 1-GPU machine
ENV.pop("WORLD_SIZE", None)


def recipe(tmp_path: Path, scorer: dict, selector: dict | None = None, rounds: int = 3) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy-dist", "seed": 3,
        # chunks of 64 items: a query of 2,000 candidates is 32 chunks, shared out unevenly between 2 ranks
        "task": {"name": "toy", "params": {"n_items": 2000, "chunk_size": 64}},
        "scorer": scorer, "selector": selector or {"name": "topk"}, "oracle": {"name": "simulated"},
        "loop": {"initial": 10, "batch": 10, "rounds": rounds}}))
    return path


def picks(run: Path) -> list[str]:
    """Every labelled item in the order it was labelled."""
    with sqlite3.connect(run / "labels.sqlite") as db:
        return [row[0] for row in db.execute("SELECT item_id FROM labels ORDER BY rowid")]


def activelab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "activelab"), *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def test_blocks_cover_every_item_once_in_order():
    for n, size, ranks in [(0, 4, 2), (1, 4, 2), (9, 4, 2), (64, 8, 3), (65, 8, 3), (5, 10, 4)]:
        chunks = [c for block in _blocks(n, size, ranks) for c in block]
        assert [k for k, _, _ in chunks] == list(range(len(chunks)))
        assert [i for _, a, b in chunks for i in range(a, b)] == list(range(n))
        assert all(len(block) <= ranks for block in _blocks(n, size, ranks))


@pytest.mark.parametrize("scorer,selector", [
    ({"name": "entropy"}, None),
    ({"name": "bald", "params": {"samples": 5}}, None),                 # MC dropout: masks drawn per chunk
    ({"name": "kcenter"}, None),                                          # needs the whole candidate set
    ({"name": "margin"}, {"name": "stream", "params": {"threshold": -0.5}}),   # stops reading early
], ids=["entropy", "bald", "kcenter", "stream"])
def test_two_processes_pick_what_one_process_picks(tmp_path, scorer, selector):
    path = recipe(tmp_path, scorer, selector)
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    done = activelab("run", str(path), "--out", str(tmp_path / "two"), "-q", "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert len(picks(tmp_path / "one")) == 40
    assert picks(tmp_path / "two") == picks(tmp_path / "one")
    status = json.loads(activelab("status", str(tmp_path / "two"), "--json").stdout)
    assert status["status"] == "done" and [w["rank"] for w in status["workers"]] == [0, 1]


def test_a_killed_worker_stops_the_run_with_one_line_and_resume_finishes_it(tmp_path):
    # Enough rounds that the run cannot finish between round 0's metrics appearing and the kill (a round after the
    # first takes about 0.2 s here); the worker list is read from the run's store directly, not through a second
    # `activelab status` process, whose start alone can outlast a short run on a loaded machine.
    path = recipe(tmp_path, {"name": "bald", "params": {"samples": 5}}, rounds=40)
    run = tmp_path / "two"
    proc = subprocess.Popen([str(BIN / "activelab"), "run", str(path), "--out", str(run), "-q", "--nproc", "2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:   # wait until round 0's model exists
            if (run / "metrics.jsonl").exists():
                store = LabelStore(run / "labels.sqlite", create=False)
                try:
                    workers = store.get_state("workers")
                finally:
                    store.close()
                break
            time.sleep(0.05)
        assert workers, "the run never finished round 0"
        os.kill(next(w["pid"] for w in workers if w["rank"] == 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"activelab: error: worker rank 1 was killed (SIGKILL); every label given so far is saved. "
                     f"Continue with: activelab resume {run} (with any --nproc)"], err
    assert json.loads(activelab("status", str(run), "--json").stdout)["status"] == "interrupted"
    before = picks(run)
    assert main(["resume", str(run), "-q"]) == 0                       # on one process this time
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    assert picks(run) == picks(tmp_path / "one")
    assert picks(run)[:len(before)] == before                          # nothing given before the kill was lost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_torchrun_launchers_as_two_nodes(tmp_path):
    path = recipe(tmp_path, {"name": "entropy"})
    run = tmp_path / "nodes"
    command = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", "two-nodes",
               "-m", "activelab", "run", str(path), "--out", str(run), "-q"]
    nodes = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    assert picks(run) == picks(tmp_path / "one")


def test_compare_runs_each_run_on_several_processes(tmp_path):
    path = recipe(tmp_path, {"name": "entropy"}, rounds=1)
    out = tmp_path / "cmp"
    done = activelab("compare", str(path), "--strategies", "entropy", "--seeds", "1", "--out", str(out), "-q",
                     "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    assert picks(out / "entropy" / "seed_0") == picks(tmp_path / "one")


def test_bad_nproc_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", str(recipe(tmp_path, {"name": "entropy"})), "--nproc", "0"]) == 2
    assert capsys.readouterr().err.strip() == "activelab: error: --nproc: must be >= 1, got 0"


def test_a_task_that_could_train_on_all_workers_still_picks_what_one_process_picks(tmp_path):
    """Image classification declares fits_distributed; without loop.train_on_all rank 0 trains and sends its state,
    so the picks do not depend on the number of workers (and a resume with another --nproc goes on the same)."""
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump({
        "name": "digits-dist", "seed": 2,
        "task": {"plugin": "vision", "name": "classification", "params": {"epochs": 2, "min_steps": 10}},
        "scorer": {"name": "bald", "params": {"samples": 4}}, "selector": {"name": "topk"},
        "oracle": {"name": "simulated"}, "loop": {"initial": 30, "batch": 20, "rounds": 2}}))
    assert main(["run", str(path), "--out", str(tmp_path / "one"), "-q"]) == 0
    done = activelab("run", str(path), "--out", str(tmp_path / "two"), "-q", "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert picks(tmp_path / "two") == picks(tmp_path / "one") and len(picks(tmp_path / "one")) == 70


def test_more_workers_than_gpus_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """nccl needs one GPU per worker: on a machine with CUDA and too few GPUs, --nproc (before any worker starts)
    and a torchrun worker (whose local rank has no GPU) are refused in one line that says what to do."""
    import torch

    from activelab import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["run", str(recipe(tmp_path, {"name": "entropy"})), "--out", str(tmp_path / "r"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("activelab: error: --nproc: 2 workers on this machine need 2 GPUs (one each, for nccl); it has 1: "
                   "use at most 1 per machine, or CUDA_VISIBLE_DEVICES= to run them on the CPU")
    assert not (tmp_path / "r").exists()          # refused before the run folder is made
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(distributed.UserError, match="^local rank 1: 2 workers on this machine need 2 GPUs"):
        distributed.join()
