"""The JSON Schema for recipes (`activelab schema`): it is valid draft 2020-12, every recipe in the tree passes it,
a misspelt key fails it, and the committed recipes/recipe.schema.json is exactly what the command generates."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from activelab import schema
from activelab.cli import main
from activelab.recipe import read_yaml

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / schema.COMMITTED
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


@pytest.fixture(scope="module")
def generated() -> dict:
    return schema.build(schema.builtin_plugins())


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))


def test_command_prints_a_valid_schema(capsys):
    assert main(["schema", "--plugins", "core"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(out["properties"]) >= {"name", "seed", "task", "scorer", "selector", "oracle", "loop", "strategies"}
    assert "entropy" in out["$defs"]["scorer"]["properties"]["name"]["enum"]
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(out)


def test_command_writes_a_file(tmp_path, capsys):
    target = tmp_path / "recipe.schema.json"
    assert main(["schema", "--out", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["title"] == "activelab recipe"
    assert capsys.readouterr().out == ""


def test_unknown_plugin_is_a_user_error(capsys):
    assert main(["schema", "--plugins", "visoin"]) == 2
    assert "plugin(s) not installed: visoin" in capsys.readouterr().err


def test_committed_schema_is_current(generated):
    """recipes/recipe.schema.json is regenerated whenever a Config changes; this fails when someone forgot."""
    assert COMMITTED.read_text(encoding="utf-8") == schema.dumps(generated), (
        f"{schema.COMMITTED} is stale; regenerate it with: activelab schema --plugins "
        f"{','.join(schema.builtin_plugins())} --out {schema.COMMITTED}")


def test_every_component_is_in_the_schema(generated):
    for c in schema.components(schema.builtin_plugins()):
        assert c.cls is not None, c.problem
        assert c.name in generated["$defs"][c.kind]["properties"]["name"]["enum"]
        assert c.key in generated["$defs"]


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_every_recipe_validates(path, validator):
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
              for e in validator.iter_errors(read_yaml(path))]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("where, key", [
    ((), "seeds"),                                  # top level
    (("loop",), "round"),                           # the recipe's own models
    (("task", "params"), "epoch"),                  # a component's Config
    (("task", "params", "pseudo_label"), "delta"),  # a nested model inside a Config
    (("oracle", "params"), "nois"),
])
def test_a_misspelt_key_fails(where, key, validator):
    data = copy.deepcopy(read_yaml(ROOT / "recipes" / "ceal_digits.yaml"))
    node = data
    for part in where:
        node = node.setdefault(part, {})
    node[key] = 1
    messages = [e.message for e in validator.iter_errors(data)]
    assert any(f"'{key}' was unexpected" in m for m in messages), messages


def test_unknown_names_fail(validator):
    data = read_yaml(ROOT / "recipes" / "ceal_digits.yaml")
    assert list(validator.iter_errors({**data, "scorer": {"name": "entropi"}}))
    # a plugin given explicitly must offer the name
    assert list(validator.iter_errors({**data, "scorer": {"name": "entropy", "plugin": "vision"}}))
    assert not list(validator.iter_errors({**data, "scorer": {"name": "entropy", "plugin": "core"}}))


def test_draft7_tools_read_it_too():
    """Editors' YAML support (the YAML language server) is draft-07 at heart: the schema uses only keywords that
    draft-07 shares with 2020-12, so a draft-07 validator gives the same answers."""
    jsonschema = pytest.importorskip("jsonschema")
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    draft7 = jsonschema.Draft7Validator({k: v for k, v in committed.items() if k != "$schema"})
    for path in RECIPES:
        assert not list(draft7.iter_errors(read_yaml(path))), path
    data = copy.deepcopy(read_yaml(ROOT / "recipes" / "ceal_digits.yaml"))
    data["task"]["params"]["epoch"] = 1
    assert any("'epoch' was unexpected" in e.message for e in draft7.iter_errors(data))
