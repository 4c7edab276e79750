"""``activelab compare`` on real (toy) runs: merging comparisons made separately gives what one comparison of all
the runs gives; merge pairs seeds across folders, reads a run once, and refuses unfinished runs, other tasks,
missing metrics and a run counted twice (one line naming the folder, exit code 2)."""
import json
import shutil

import pytest
import yaml

from activelab import recipe as recipes
from activelab.cli import main
from activelab.evaluation.compare import compare, merge
from activelab.run import create_run

TOY = {"name": "toy", "seed": 0, "task": {"name": "toy", "params": {"epochs": 2}}, "scorer": {"name": "entropy"},
       "loop": {"rounds": 2, "initial": 8, "batch": 4}}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two comparisons made separately: random (seeds 0, 1) and entropy (seeds 0, 1)."""
    root = tmp_path_factory.mktemp("cmp")
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    compare(str(path), ["random"], 2, str(root / "a"), [], progress=False)
    compare(str(path), ["entropy"], 2, str(root / "b"), [], progress=False)
    return root, path


def load(folder):
    return json.loads((folder / "compare.json").read_text())


def test_merge_of_two_comparisons_equals_one_comparison_of_both(made, tmp_path):
    root, path = made
    both = tmp_path / "both"
    shutil.copytree(root / "a" / "random", both / "random")
    shutil.copytree(root / "b" / "entropy", both / "entropy")
    compare(str(path), ["random", "entropy"], 2, str(both), [], progress=False)   # reuses the finished runs
    merge([str(root / "a"), str(root / "b")], str(tmp_path / "merged"))
    one, merged = load(both), load(tmp_path / "merged")
    assert merged["settings"] == one["settings"] and merged["penalty"] == one["penalty"]
    assert list(merged["settings"]) == ["toy/toy"]
    info = merged["settings"]["toy/toy"]
    assert set(info["strategies"]) == {"random", "entropy"} and info["target"]["strategy"] == "random"
    random = info["strategies"]["random"]
    assert random["seeds"] == [0, 1] and random["ratio"] == 1.0 and len(random["auc"]["per_seed"]) == 2
    assert len(random["metrics"]["accuracy"]) == len(random["rounds"]) == 3
    assert merged["command"].startswith("activelab compare --merge ")
    assert one["command"].startswith("activelab compare ") and "--seeds 2" in one["command"]
    assert (tmp_path / "merged" / "compare.csv").read_text() == (both / "compare.csv").read_text()
    md = (tmp_path / "merged" / "compare.md").read_text()
    assert "Pairwise penalty matrix" in md and "Student t" in md and "Made by: `activelab compare --merge" in md
    assert (tmp_path / "merged" / "compare.png").stat().st_size > 1000


def test_merge_pairs_seeds_across_folders_and_reads_a_run_once(made, tmp_path, capsys):
    root, path = made
    compare(str(path), ["random"], 2, str(tmp_path / "more"), ["seed=2"], progress=False)     # seeds 2 and 3
    merged = load(merge([str(root / "a"), str(tmp_path / "more")], str(tmp_path / "m1")))
    assert merged["settings"]["toy/toy"]["strategies"]["random"]["seeds"] == [0, 1, 2, 3]
    # the same runs named twice (a folder, and one of its runs) are read once
    again = load(merge([str(root / "a"), str(root / "a" / "random" / "seed_1"), str(root / "b")], str(tmp_path / "m2")))
    assert again["settings"] == load(merge([str(root / "a"), str(root / "b")], str(tmp_path / "m3")))["settings"]
    # a run made on its own: the strategy is its folder's name
    solo = create_run(recipes.validate({**TOY, "seed": 5, "scorer": {"name": "margin"}}), tmp_path / "margin")
    assert main(["resume", str(solo), "-q"]) == 0
    merged = load(merge([str(root / "a"), str(solo)], str(tmp_path / "m4")))
    assert merged["settings"]["toy/toy"]["strategies"]["margin"]["seeds"] == [5]
    # a copy of a run already in the comparison would be counted twice: refused
    shutil.copytree(root / "a", tmp_path / "copy")
    capsys.readouterr()
    assert main(["compare", "--merge", str(root / "a"), str(tmp_path / "copy"), "--out", str(tmp_path / "m5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "copy") in err and "never counted twice" in err


def test_merge_refuses_unfinished_runs_other_tasks_and_missing_metrics(made, tmp_path, capsys):
    root, _ = made
    unfinished = create_run(recipes.validate(TOY), tmp_path / "new" / "entropy" / "seed_0")

    def refused(*args, says):
        capsys.readouterr()
        assert main(["compare", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err

    refused("--merge", str(root / "a"), str(tmp_path / "new"), "--out", str(tmp_path / "o"), says=str(unfinished))
    other = tmp_path / "other" / "random" / "seed_0"
    shutil.copytree(root / "b" / "entropy" / "seed_0", other)
    recipe = yaml.safe_load((other / "recipe.yaml").read_text())
    (other / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "task": {**recipe["task"], "name": "speech"}}))
    refused("--merge", str(root / "a"), str(tmp_path / "other"), "--out", str(tmp_path / "o"), says=str(other))
    refused("--merge", str(root / "a"), "--metrics", "nosuch", "--out", str(tmp_path / "o"), says="nosuch")
    refused("--merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), says="nothing")
    refused("--merge", str(root / "a"), says="--out")
    refused("--merge", str(root / "a"), "--out", str(tmp_path / "o"), "--target-strategy", "bald", says="bald")
    refused("toy.yaml", "--merge", str(root / "a"), "--out", str(tmp_path / "o"), says="--merge")
    refused("--out", str(tmp_path / "o"), says="--strategies")
    assert not (tmp_path / "o").exists()


def test_parallel_compare_gives_the_sequential_results(made, tmp_path):
    """--jobs runs each (strategy, seed) in its own process; the runs are seeded by their recipes, so the table is
    the one of the sequential comparisons made separately."""
    root, path = made
    out = tmp_path / "par"
    compare(str(path), ["random", "entropy"], 2, str(out), [], progress=False, jobs=3)
    assert load(out)["settings"] == load(merge([str(root / "a"), str(root / "b")], str(tmp_path / "m")))["settings"]


def test_parallel_compare_names_a_failed_run_and_resumes(made, tmp_path, monkeypatch, capsys):
    import os
    import stat
    import sys

    root, path = made
    real = sys.executable
    fake = tmp_path / "python"          # fails for seed 1's runs, runs the others for real
    fake.write_text(f'#!/bin/sh\ncase "$*" in *seed_1*) echo "planted failure" >&2; exit 3;; esac\nexec {real} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(fake))
    out = tmp_path / "par"
    args = ["compare", str(path), "--strategies", "random,entropy", "--seeds", "2", "--out", str(out), "-q"]
    assert main([*args, "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out}/random/seed_1: the run stopped (exit code 3)" in err and "resumes the comparison" in err
    assert not (out / "compare.json").exists()
    assert (out / "random" / "seed_0" / "metrics.jsonl").exists()      # started before the failure: finished
    assert not (out / "entropy" / "seed_1" / "metrics.jsonl").exists()  # after it: never started
    monkeypatch.setattr(sys, "executable", real)
    assert os.path.exists(real) and main([*args, "--jobs", "2"]) == 0     # the same command finishes the rest
    assert load(out)["settings"] == load(merge([str(root / "a"), str(root / "b")], str(tmp_path / "m")))["settings"]
    assert main([*args, "--jobs", "0"]) == 2 and "--jobs: must be >= 1" in capsys.readouterr().err
