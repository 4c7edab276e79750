"""The plugin as a user meets it: installed, listed by ``activelab plugins``, its recipes validated and run.

These tests drive the ``activelab`` command (the console script installed beside this Python), as a user
would, so they check the installation itself: the entry point, the manifest's import strings, the recipes.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from activelab_tabular.manifest import MANIFEST

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
ACTIVELAB = shutil.which("activelab", path=str(Path(sys.executable).parent)) or shutil.which("activelab")


def activelab(*args: str) -> subprocess.CompletedProcess:
    assert ACTIVELAB, "the activelab command is not installed"
    return subprocess.run([ACTIVELAB, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


# ------------------------------------------------------------------------------------------- installation
def test_entry_point_is_registered():
    found = {ep.name: ep for ep in entry_points(group="activelab.plugins")}
    assert found["tabular"].value == "activelab_tabular.manifest:MANIFEST"
    assert found["tabular"].dist.name == "activelab-tabular"


def test_every_manifest_entry_imports_and_has_a_strict_config():
    assert MANIFEST.name == "tabular"
    assert set(MANIFEST.components) == {"task", "scorer"}
    for kind, table in MANIFEST.components.items():
        for name, target in table.items():
            module, _, attr = target.partition(":")
            component = getattr(importlib.import_module(module), attr)
            with pytest.raises(ValidationError):
                component.Config.model_validate({"surely_not_a_field": 1})


def test_activelab_plugins_lists_it_with_its_origin():
    result = activelab("plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("tabular:"))
    block = "\n".join(lines[start:start + 4])
    assert "from entry point tabular = activelab_tabular.manifest:MANIFEST (activelab-tabular 0.1.0)" in block
    assert "tabular_classification, tabular_regression" in block
    assert "committee_variance" in block
    assert "vision:" in result.stdout, "installing a plugin must not hide the built-in ones"


# ------------------------------------------------------------------------------------------- recipes
def test_the_three_recipes_exist():
    assert {p.name for p in RECIPES} >= {"wine_entropy.yaml", "diabetes_committee.yaml"}
    assert any(p.name.startswith("breast_cancer_") for p in RECIPES)


def set_dotted(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def test_every_recipe_and_each_of_its_strategies_validates(tmp_path):
    """``activelab compare --strategies`` applies a strategy's dotted overrides to the recipe, so a typo in a
    strategy would only show when compare reaches it. Validate every recipe and every variant, in one call."""
    variants = []
    for path in RECIPES:
        recipe = yaml.safe_load(path.read_text())
        strategies = recipe.pop("strategies", {})
        assert strategies, f"{path.name} defines no strategies for `activelab compare`"
        for name, overrides in strategies.items():
            variant = yaml.safe_load(yaml.safe_dump(recipe))
            for key, value in overrides.items():
                set_dotted(variant, key, value)
            variants.append(tmp_path / f"{path.stem}-{name}.yaml")
            variants[-1].write_text(yaml.safe_dump(variant))
    result = activelab("validate", *map(str, RECIPES), *map(str, variants))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == len(RECIPES) + len(variants)


def test_a_scorer_the_task_cannot_serve_is_refused(tmp_path):
    recipe = yaml.safe_load((RECIPES[0].parent / "wine_entropy.yaml").read_text())
    recipe["scorer"] = {"plugin": "tabular", "name": "committee_variance"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = activelab("validate", str(path))
    assert result.returncode == 2
    assert "needs" in result.stderr and "prediction" in result.stderr


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_wine_recipe_runs_end_to_end(tmp_path):
    result = activelab("run", str(RECIPES[0].parent / "wine_entropy.yaml"), "--out", str(tmp_path / "run"),
                       "-q", "loop.rounds=2")
    assert result.returncode == 0, result.stderr
    rows = read_metrics(tmp_path / "run")
    assert [r["n_labeled"] for r in rows] == [6, 9, 12]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert rows[-1]["accuracy"] > 0.7


def test_diabetes_committee_compares_with_random(tmp_path):
    """committee_variance end to end inside `activelab compare`, which also reads the task's lower_is_better."""
    result = activelab("compare", str(RECIPES[0].parent / "diabetes_committee.yaml"),
                       "--strategies", "committee_variance,random", "--seeds", "1", "--out", str(tmp_path / "cmp"),
                       "-q", "loop.rounds=1", "loop.batch=5")
    assert result.returncode == 0, result.stderr
    assert "rmse" in result.stdout and "lower is better" in result.stdout
    rows = read_metrics(tmp_path / "cmp" / "committee_variance" / "seed_0")
    assert [r["n_labeled"] for r in rows] == [20, 25]
    assert rows[-1]["rmse"] > 0 and "score_seconds" in rows[-1]
