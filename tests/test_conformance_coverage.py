"""Every component a built-in plugin registers has a conformance test.

The walker reads every manifest the registry finds (``activelab.registry.plugins()``) and, for the plugins whose
manifest module lives in this repository (core, vision, nlp, speech), requires at least one test class that
declares the component in its ``covers = (plugin, kind, name)`` attribute. Test classes are found by reading the
source of ``tests/**/*.py`` (``ast``, nothing imported): a declaration counts when it sits on a class named
``Test*`` (pytest collects it) that derives, directly or through classes of the same file, from the conformance
class of that kind (``TaskConformance``, ``ScorerConformance``, ``SelectorConformance``, ``OracleConformance``).
The kit's ``test_covers_the_component_it_names`` then checks at run time that the factory builds that component.

Components of plugins installed from elsewhere (the example ``examples/plugin-tabular``, or any third-party
plugin found in the environment) are skipped: such a plugin carries its own tests.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from activelab import registry

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BASES = {"TaskConformance": "task", "ScorerConformance": "scorer", "SelectorConformance": "selector",
         "OracleConformance": "oracle", "StoppingConformance": "stopping"}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _covers(cls: ast.ClassDef) -> tuple[str, ...] | None:
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "covers" for t in stmt.targets):
            value = ast.literal_eval(stmt.value)
            assert isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, str) for v in value), \
                f"{cls.name}: covers must be a (plugin, kind, name) tuple of strings, got {value!r}"
            return value
    return None


def declarations(tests: Path = TESTS) -> dict[tuple[str, ...], list[str]]:
    """``(plugin, kind, name) -> ["tests/...py::TestClass", ...]``, with each declaration checked against its class."""
    found: dict[tuple[str, ...], list[str]] = {}
    for path in sorted(tests.rglob("*.py")):
        classes = {n.name: n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.ClassDef)}

        def kinds(name: str, seen: frozenset = frozenset()) -> set[str]:
            if name in BASES:
                return {BASES[name]}
            if name not in classes or name in seen:
                return set()
            return set().union(*(kinds(_base_name(b), seen | {name}) for b in classes[name].bases))

        for cls in classes.values():
            covers = _covers(cls)
            if covers is None:
                continue
            where = f"{path.relative_to(tests.parent)}::{cls.name}"
            assert cls.name.startswith("Test"), f"{where}: declares covers but pytest does not collect it"
            assert covers[1] in kinds(cls.name), f"{where}: covers a {covers[1]} but is no {covers[1]} conformance"
            found.setdefault(covers, []).append(where)
    return found


def in_this_repo(plugin: registry.Plugin) -> bool:
    """Whether the plugin's manifest module is a file of this repository (its origin names the entry point)."""
    module = plugin.origin.split(" = ", 1)[1].split(":", 1)[0]
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve().is_relative_to(ROOT) \
        and not Path(spec.origin).resolve().is_relative_to(ROOT / "examples")


def uncovered(declared: dict[tuple[str, ...], list[str]]) -> list[str]:
    """The built-in plugins' components that no declaration covers."""
    builtin = {name: p for name, p in registry.plugins().items() if in_this_repo(p)}
    assert {"core", "vision", "nlp", "speech"} <= set(builtin)
    return [f"{plugin} {kind} '{name}'" for plugin, p in sorted(builtin.items())
            for kind, table in sorted(p.manifest.components.items()) for name in sorted(table)
            if (plugin, kind, name) not in declared]


def test_every_builtin_component_has_a_conformance_test():
    missing = uncovered(declarations())
    assert not missing, ("components without a conformance test (a Test* class with covers = (plugin, kind, name)): "
                         + ", ".join(missing))


def test_every_declaration_names_a_registered_component():
    registered = {(plugin, kind, name) for plugin, p in registry.plugins().items()
                  for kind, table in p.manifest.components.items() for name in table}
    stale = {c: where for c, where in declarations().items() if c not in registered}
    assert not stale, f"covers naming no registered component: {stale}"


def test_the_walker_is_not_vacuous(tmp_path):
    """Without declarations every built-in component is reported; plugins from elsewhere never are; a declaration
    on a class that pytest does not collect, or on a conformance class of another kind, is refused."""
    missing = uncovered({})
    assert "vision selector 'schedule'" in missing and "core task 'toy'" in missing
    assert not [m for m in missing if m.split()[0] not in ("core", "vision", "nlp", "speech")]
    assert uncovered(declarations()) == []
    tests = tmp_path / "tests"
    tests.mkdir()
    for text, problem in [("class TestX(ScorerConformance):\n    covers = ('core', 'task', 'toy')\n", "is no task"),
                          ("class X(TaskConformance):\n    covers = ('core', 'task', 'toy')\n", "does not collect"),
                          ("class _Base(TaskConformance):\n    pass\n\n\nclass TestX(_Base):\n    covers = 'toy'\n",
                           "must be a (plugin, kind, name) tuple")]:
        (tests / "test_fake.py").write_text(text)
        try:
            declarations(tests)
        except AssertionError as exc:
            assert problem in str(exc), exc
        else:
            raise AssertionError(f"accepted {text!r}")
    (tests / "test_fake.py").write_text("class _Base(TaskConformance):\n    pass\n\n\n"
                                        "class TestX(_Base):\n    covers = ('core', 'task', 'toy')\n")
    assert declarations(tests) == {("core", "task", "toy"): ["tests/test_fake.py::TestX"]}
