"""The command line: exit codes, one-line errors that name the field or file, validate/plugins/status/compare."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activelab.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "toy",
    "task": {"name": "toy"},
    "scorer": {"name": "entropy"},
    "loop": {"rounds": 1, "initial": 8, "batch": 4},
}


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_(**changes):
    """GOOD with dotted-key changes; a value of ... deletes the key."""
    import copy

    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(last)
        else:
            node[last] = value
    return data


# (recipe, the field or file the single error line must name, words it must contain)
MALFORMED = [
    (with_(loop__rounds=0), "loop.rounds", "must be >= 1"),
    (with_(loop__initial=0), "loop.initial", "must be >= 1"),
    (with_(loop__batch="ten"), "loop.batch", "integer"),
    (with_(rounds=3), "rounds", "unknown key"),
    (with_(task=...), "task", "required"),
    (with_(scorer__name="entropi"), "scorer.name", "did you mean 'entropy'"),
    (with_(scorer__plugin="visionn"), "scorer.name", "plugin 'visionn' not found"),
    (with_(task__params={"n_items": -5}), "task.params.n_items", "must be >="),
    (with_(task__params={"colour": "red"}), "task.params.colour", "unknown key"),
    (with_(oracle={"name": "simulated", "params": {"noise": 1.5}}), "oracle.params.noise", "must be <="),
    (with_(selector={"name": "stream"}), "selector.params.threshold", "required"),
    (with_(scorer={"name": "entropy", "params": "fast"}), "scorer.params", "mapping"),
    ("name: x\ntask: [unclosed\n", "line", "invalid YAML"),
    ("- just\n- a list\n", "r.yaml", "must be a mapping"),
]


@pytest.mark.parametrize("data,field,words", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_recipe_exits_2_with_one_line_naming_the_field(tmp_path, capsys, data, field, words):
    path = write(tmp_path, data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert field in err[0] and words in err[0], err[0]
    assert str(path) in err[0]
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    path = write(tmp_path, with_(loop__rounds=0, loop__batch=0, scorer__name="nope", extra=1))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    for fragment in ("loop.rounds: must be >= 1", "loop.batch: must be >= 1", "scorer.name:", "extra: unknown key"):
        assert fragment in err


def test_missing_recipe_file_and_bad_override(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: recipe file not found" in capsys.readouterr().err
    path = write(tmp_path, GOOD)
    assert main(["run", str(path), "loop.rounds", "--out", str(tmp_path / "o")]) == 2
    assert "expected dotted.key=value" in capsys.readouterr().err
    assert main(["run", str(path), "loop.rounds=0", "--out", str(tmp_path / "o")]) == 2
    assert "loop.rounds: must be >= 1" in capsys.readouterr().err


def test_every_recipe_in_the_tree_validates(capsys):
    found = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert found, "no recipes found"
    assert main(["validate", *map(str, found)]) == 0, capsys.readouterr().err


def test_plugins_lists_components_and_origin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "core:" in out and "vision:" in out and "entry point" in out
    for name in ("entropy", "bald", "kcenter", "topk", "stream", "simulated", "classification"):
        assert name in out


def test_run_resume_status_and_refusing_to_overwrite(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["resume", str(out), "-q"]) == 0  # nothing left to do
    assert main(["status", str(out)]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["resume", str(tmp_path / "nowhere")]) == 2


def test_compare_writes_table_and_plot(tmp_path, capsys):
    path = write(tmp_path, {**GOOD, "strategies": {"rand": {"scorer.name": "random"}}})
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "rand,entropy", "--seeds", "2", "--out", str(out), "-q"]) == 0
    table = (out / "compare.md").read_text()
    assert "rand" in table and "entropy" in table and "±" in table
    assert (out / "compare.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "entropy").iterdir()) == ["seed_0", "seed_1"]
    assert main(["compare", str(path), "--strategies", "bogus", "--out", str(out)]) == 2
    # the same folders under a changed recipe are refused, not silently mixed into the table
    assert main(["compare", str(path), "loop.batch=3", "--strategies", "rand", "--seeds", "1", "--out", str(out),
                 "-q"]) == 2
    assert "made by a different recipe" in capsys.readouterr().err


def test_console_script_exit_code_for_user_error(tmp_path):
    exe = Path(sys.executable).with_name("activelab")
    proc = subprocess.run([str(exe), "validate", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "missing.yaml" in proc.stderr and "Traceback" not in proc.stderr
