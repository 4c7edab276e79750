"""A JSON Schema (draft 2020-12) for recipe files, built from the models that validate them. A shelf beside the
kernel: the core plugin's manifest contributes its verb, ``activelab schema`` (:data:`SCHEMA`).

``activelab schema`` prints it; editors that speak JSON Schema (the YAML language server in VS Code, Neovim, ...)
then complete and check ``recipes/*.yaml`` as they are typed. It uses only keywords draft-07 shares (``$ref`` into
``$defs``, ``if``/``then``, ``enum``, ``const``, ``anyOf``), since editors' YAML support is draft-07 at heart. The
schema is made from the same pydantic models :mod:`activelab.recipe` validates with, so it cannot disagree with
``activelab validate`` about what exists:

- the top level is :class:`activelab.recipe.Recipe` (``name``, ``seed``, ``loop``, ``strategies``, ...);
- ``task``, ``scorer``, ``selector`` and ``oracle`` each take ``name`` from the installed components of that kind
  (an ``enum``), ``plugin`` from the plugins that offer that kind, and ``params`` from the chosen component's own
  ``Config`` model (one ``if``/``then`` per component), so a misspelt key anywhere is flagged; ``cold_start`` is a
  scorer (or null) and ``stopping`` a list of stopping criteria, checked the same way.

What it cannot say, ``activelab validate`` still checks: that the task provides what the scorer needs, and the
dotted keys inside ``strategies``. It is also a little stricter than pydantic's lax parsing (``epochs: "20"`` is a
string here, an int to pydantic).

:func:`components` is the one walk over the installed components; the docs' recipe reference (``docs/hooks/``)
renders the same walk as tables.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activelab import registry
from activelab.cli import Verb
from activelab.errors import UserError
from activelab.recipe import Recipe

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")   # Sphinx roles in docstrings (:class:`Label`) -> ``Label``

#: The file committed next to the recipes (built-in plugins only; its "$comment" says how to regenerate it).
COMMITTED = "recipes/recipe.schema.json"


@dataclass(frozen=True)
class Component:
    """One installed component: its kind, plugin, name, class (None when it cannot be imported) and Config's
    JSON schema (None when it has no Config, or its schema cannot be made; ``problem`` then says why)."""

    kind: str
    plugin: str
    name: str
    target: str
    cls: type | None
    config: dict[str, Any] | None
    problem: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.plugin}.{self.name}"

    @property
    def summary(self) -> str:
        """The first paragraph of the class docstring, on one line."""
        doc = inspect.getdoc(self.cls) if self.cls is not None else ""
        first = (doc or "").strip().split("\n\n")[0]
        return plain(first)


def plain(text: str) -> str:
    """A docstring paragraph on one line, Sphinx roles (``:class:`Label```) turned into code spans."""
    return " ".join(_ROLE.sub(r"``\1``", text or "").split())


def _wanted(only: list[str] | None) -> dict[str, registry.Plugin]:
    found = registry.plugins()
    if not only:
        return found
    unknown = [p for p in only if p not in found]
    if unknown:
        raise UserError(f"plugin(s) not installed: {', '.join(unknown)}; installed: {', '.join(sorted(found))}")
    return {p: found[p] for p in only}


def components(only: list[str] | None = None) -> list[Component]:
    """Every component of the installed plugins (or of the plugins named in ``only``), sorted by kind, plugin
    and name. A component whose module cannot be imported (an optional extra not installed) is listed with its
    problem instead of failing the walk."""
    out = []
    plugins = _wanted(only)
    for kind in registry.KINDS:
        for pname in sorted(plugins):
            table = plugins[pname].manifest.components.get(kind, {})
            for name in sorted(table):
                cls, config, problem = None, None, ""
                try:
                    cls = registry.load(kind, name, pname)
                except UserError as exc:
                    problem = str(exc)
                if cls is not None:
                    model = getattr(cls, "Config", None)
                    if model is None:
                        problem = "no Config: params are passed through unchecked"
                    else:
                        try:
                            config = model.model_json_schema()
                        except Exception as exc:  # a type pydantic cannot express in JSON Schema
                            problem = f"Config has no JSON schema ({type(exc).__name__}: {exc})"
                out.append(Component(kind, pname, name, table[name], cls, config, problem))
    return out


def _rewrite_refs(node: Any, prefix: str) -> Any:
    """Point a component schema's local ``#/$defs/X`` references at ``#/$defs/<prefix>.X``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = f"#/$defs/{prefix}.{value[len('#/$defs/'):]}"
            else:
                out[key] = _rewrite_refs(value, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, prefix) for v in node]
    return node


def _spec_schema(kind: str, comps: list[Component], defs: dict[str, Any], default: str | None) -> dict[str, Any]:
    """The schema of one ``task:`` / ``scorer:`` / ... mapping, its components' params added to ``defs``."""
    by_name: dict[str, list[Component]] = {}
    for c in comps:
        by_name.setdefault(c.name, []).append(c)
    plugins = sorted({c.plugin for c in comps})
    branches: list[dict[str, Any]] = []
    for c in comps:
        if c.config is not None:
            config = copy.deepcopy(c.config)
            for inner, body in config.pop("$defs", {}).items():
                defs[f"{c.key}.{inner}"] = _rewrite_refs(body, c.key)
            config = _rewrite_refs(config, c.key)
            config.pop("title", None)
            params: dict[str, Any] = config
        else:
            params = {"type": "object", "$comment": c.problem}
        if c.summary:
            params["description"] = c.summary
        defs[c.key] = params
        when: dict[str, Any] = {"properties": {"name": {"const": c.name}}, "required": ["name"]}
        if len(by_name[c.name]) > 1:  # several plugins offer this name: the recipe must say which
            when = {"properties": {"name": {"const": c.name}, "plugin": {"const": c.plugin}},
                    "required": ["name", "plugin"]}
        branches.append({"if": when, "then": {"properties": {"params": {"$ref": f"#/$defs/{c.key}"}}}})
    for name, offers in sorted(by_name.items()):
        if len(offers) > 1:
            branches.append({"if": {"properties": {"name": {"const": name}}, "required": ["name"]},
                             "then": {"required": ["plugin"]}})
    for p in plugins:  # a plugin given explicitly must offer the name
        names = sorted(c.name for c in comps if c.plugin == p)
        branches.append({"if": {"properties": {"plugin": {"const": p}}, "required": ["plugin"]},
                         "then": {"properties": {"name": {"enum": names}}}})
    spec: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"description": f"the {kind}, by name (`activelab plugins` lists them)",
                     "enum": sorted(by_name)},
            "plugin": {"description": "the plugin offering it; needed only when several plugins use the name",
                       "anyOf": [{"enum": plugins}, {"type": "null"}]},
            "params": {"description": f"the {kind}'s settings, checked by its Config (unknown keys are errors)",
                       "type": "object"},
        },
        "allOf": branches,
    }
    if default is not None:
        spec["default"] = {"name": default}
    return spec


def build(only: list[str] | None = None, comps: list[Component] | None = None) -> dict[str, Any]:
    """The recipe schema for the installed plugins, or for the plugins named in ``only``."""
    comps = components(only) if comps is None else comps
    top = Recipe.model_json_schema()
    defs: dict[str, Any] = {k: v for k, v in top.pop("$defs", {}).items() if k != "ComponentSpec"}
    defaults = {"task": None, "scorer": None, "selector": "topk", "oracle": "simulated", "stopping": None}
    stops = top["properties"]["stopping"]          # a list of stopping specs (the loop below makes it one spec)
    for kind in registry.KINDS:
        defs[kind] = _spec_schema(kind, [c for c in comps if c.kind == kind], defs, defaults[kind])
        top["properties"][kind] = {"$ref": f"#/$defs/{kind}"}
    cold = top["properties"]["cold_start"]
    top["properties"]["cold_start"] = {"description": cold.get("description", ""),
                                       "anyOf": [{"$ref": "#/$defs/scorer"}, {"type": "null"}], "default": None}
    top["properties"]["stopping"] = {"description": stops.get("description", ""), "type": "array",
                                     "items": {"$ref": "#/$defs/stopping"}, "default": []}
    names = sorted({c.plugin for c in comps})
    top.pop("title", None)
    schema = {
        "$schema": DIALECT,
        "title": "activelab recipe",
        "description": "A YAML recipe for `activelab run`: a task, a scorer, a selector, an oracle and a loop. "
                       "Generated from the installed components' Config models by `activelab schema`.",
        "$comment": f"plugins: {', '.join(names)}. Regenerate with: activelab schema --plugins "
                    f"{','.join(names)} --out FILE",
        **top,
        "$defs": dict(sorted(defs.items())),
    }
    return schema


def builtin_plugins() -> list[str]:
    """The plugins that activelab's own distribution registers (the committed schema covers exactly these)."""
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group=registry.GROUP)
                  if ep.dist is not None and ep.dist.name.lower().replace("_", "-") == "activelab")


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write(text: str, out: str | Path) -> Path:
    """Write ``text`` atomically (a temporary file renamed into place)."""
    path = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a schema is for every editor on the machine
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def command(out: str | None, plugins: str | None) -> int:
    """``activelab schema [--out FILE] [--plugins a,b]``: the schema on stdout, or written to ``out``. A component
    that cannot be imported is named on stderr (its params are then left unchecked in the schema)."""
    import sys

    only = [n.strip() for n in plugins.split(",") if n.strip()] if plugins else None
    comps = components(only)
    schema = build(only, comps)
    for c in comps:
        if c.cls is None:
            print(f"activelab: warning: {c.problem}; its params are not checked by the schema", file=sys.stderr)
    text = dumps(schema)
    if out:
        print(write(text, out), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _arguments(sc) -> None:
    sc.add_argument("--out", help="write it to this file instead of stdout")
    sc.add_argument("--plugins", help="comma-separated plugins to cover (default: every installed plugin)")


SCHEMA = Verb("print a JSON Schema for recipe files (editors validate and complete with it)", _arguments,
              lambda args: command(args.out, args.plugins))
