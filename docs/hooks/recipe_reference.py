"""MkDocs hook: writes the recipe reference (docs/reference/recipes.md) at build time from the installed
components' pydantic ``Config`` models, so the page can never disagree with what ``activelab validate`` accepts.

It walks the same list as ``activelab schema`` (:func:`activelab.schema.components`: every plugin found through
the ``activelab.plugins`` entry points, every component of its manifest) and renders each ``Config``'s JSON
schema as a table: field (nested models as dotted names), type, default, description. A component that cannot be
imported is a build warning, so ``mkdocs build --strict`` fails instead of publishing a page with a hole in it.

Registered in mkdocs.yml under ``hooks:``; excluded from the site itself (``exclude_docs``).
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

MARKER = "<!-- activelab:recipe-reference -->"
PAGE = "reference/recipes.md"
log = logging.getLogger("mkdocs.hooks.recipe_reference")

KIND_TITLES = {"task": "Tasks", "scorer": "Scorers", "selector": "Selectors", "oracle": "Oracles",
               "stopping": "Stopping criteria"}


# ------------------------------------------------------------------------------------------ JSON schema -> text
_CODE = re.compile(r"(`+)(.+?)\1")


def _cell(text: str) -> str:
    """One table cell: on one line, with the pipes outside code spans escaped (inside them a pipe is literal)."""
    from activelab.schema import plain

    text = plain(str(text))
    out, last = [], 0
    for m in _CODE.finditer(text):
        out += [text[last:m.start()].replace("|", "\\|"), m.group(0)]
        last = m.end()
    out.append(text[last:].replace("|", "\\|"))
    return "".join(out)


def _code(value: Any) -> str:
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The nested model a field holds (``$ref``, or ``$ref`` or null), else None."""
    ref = node.get("$ref")
    if ref is None:
        refs = [n for n in node.get("anyOf", []) if "$ref" in n]
        if len(refs) == 1:
            ref = refs[0]["$ref"]
    return defs.get(ref.rsplit("/", 1)[-1]) if ref else None


def _alternatives(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """The models a field may hold when it is a union of several (``model: {kind: ...}``), else []."""
    refs = [n["$ref"] for n in node.get("oneOf", node.get("anyOf", [])) if "$ref" in n]
    return [defs[r.rsplit("/", 1)[-1]] for r in refs if r.rsplit("/", 1)[-1] in defs] if len(refs) > 1 else []


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                    ("minLength", "length >="), ("maxLength", "length <=")):
        if key in node:
            parts.append(f"{op} {node[key]}")
    if "pattern" in node:
        parts.append(f"matching `{node['pattern']}`")
    return f" ({', '.join(parts)})" if parts else ""


def type_of(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(_code(v) for v in node["enum"])
    if "const" in node:
        return _code(node["const"])
    if "$ref" in node:
        return "mapping (fields below)"
    if _alternatives(node, defs):
        return "mapping, one of the kinds below"
    if "anyOf" in node:
        parts = [type_of(n, defs) for n in node["anyOf"] if n.get("type") != "null"]
        nullable = any(n.get("type") == "null" for n in node["anyOf"])
        return " or ".join(parts) + (" or `null`" if nullable else "")
    kind = node.get("type")
    if kind == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(type_of(n, defs) for n in node["prefixItems"]) + "]"
        return "list" + (f" of {type_of(node['items'], defs)}" if node.get("items") else "") + _bounds(node)
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"mapping of names to {type_of(extra, defs)}"
        return "mapping"
    if kind == "string" and node.get("format") == "path":
        return "path" + _bounds(node)
    if isinstance(kind, list):
        return " or ".join(kind)
    return (kind or "any") + _bounds(node)


def rows(model: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    """One table row per field, nested models expanded as ``outer.inner`` rows after their own row."""
    out = []
    required = set(model.get("required", []))
    for name, node in model.get("properties", {}).items():
        path = f"{prefix}{name}"
        nested = _resolve(node, defs)
        kinds = _alternatives(node, defs)
        if "default" in node:
            default = _code(node["default"])
        elif name in required:
            default = "**required**"
        elif nested is not None or kinds:
            default = "(fields below)"
        else:
            default = ""
        desc = node.get("description") or (nested or {}).get("description", "")
        out.append(f"| `{path}` | {_cell(type_of(node, defs))} | {_cell(default)} | {_cell(desc)} |")
        if nested is not None:
            out.extend(rows(nested, defs, prefix=f"{path}."))
        for kind in kinds:              # each kind's fields, its `kind` row first
            out.extend(rows(kind, defs, prefix=f"{path}."))
    return out


def table(model: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    body = rows(model, defs, prefix)
    if not body:
        return ["No parameters (`params` must be empty or left out)."]
    return ["| field | type | default | description |", "|---|---|---|---|", *body]


# ------------------------------------------------------------------------------------------ the page
def render() -> str:
    from activelab import registry, schema
    from activelab.recipe import Recipe

    comps = schema.components()
    plugins = registry.plugins()
    lines = ["## The recipe file", "",
             "Every recipe has these fields (`activelab.recipe.Recipe`); unknown keys are errors. `task`, `scorer`, "
             "`selector` and `oracle` are each `{name, plugin, params}`: `name` is a component below, `plugin` "
             "may be left out when the name is unique, and `params` is checked by that component's own table.", ""]
    top = Recipe.model_json_schema()
    defs = top.get("$defs", {})
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    component_help = {"task": "the task: data, model, training (see Tasks)",
                      "scorer": "ranks the candidates: higher = ask first (see Scorers)",
                      "selector": "turns scores into a batch (see Selectors)",
                      "oracle": "answers the queries (see Oracles)",
                      "cold_start": "a scorer that chooses the first batch instead of random items (see Scorers)",
                      "stopping": "a list of stopping criteria, each reported every round (see Stopping criteria)"}
    for name, node in top["properties"].items():
        if name in component_help:
            default = {"selector": '`{"name": "topk"}`', "oracle": '`{"name": "simulated"}`', "cold_start": "`null`",
                       "stopping": "`[]`"}.get(name, "**required**")
            shape = "list of `{name, plugin, params}`" if name == "stopping" else "`{name, plugin, params}`"
            lines.append(f"| `{name}` | {shape} | {default} | {component_help[name]} |")
            continue
        lines.extend(rows({"properties": {name: node}, "required": top.get("required", [])}, defs))
    lines += ["", "## Installed plugins", "", "| plugin | description | registered by |", "|---|---|---|"]
    for name, plugin in sorted(plugins.items()):
        lines.append(f"| `{name}` | {_cell(plugin.manifest.description)} | {_cell(plugin.origin)} |")
    lines += ["", "## Components at a glance", "", "| kind | name | plugin | what it is |", "|---|---|---|---|"]
    for c in comps:
        lines.append(f"| {c.kind} | `{c.name}` | {c.plugin} | {_cell(c.summary or c.problem)} |")
    for kind in registry.KINDS:
        mine = [c for c in comps if c.kind == kind]
        if not mine:
            continue
        lines += ["", f"## {KIND_TITLES[kind]}"]
        for c in mine:
            lines += ["", f"### {c.plugin} / {c.name}", ""]
            if c.summary:
                lines += [c.summary, ""]
            lines += [f"`{kind}: {{plugin: {c.plugin}, name: {c.name}}}`, implemented by `{c.target}`.", ""]
            if c.cls is not None:
                facts = []
                if kind == "task" and getattr(c.cls, "outputs", None):
                    facts.append("provides " + ", ".join(f"`{o}`" for o in sorted(c.cls.outputs)))
                if kind == "task" and getattr(c.cls, "primary_metric", None):
                    facts.append(f"primary metric `{c.cls.primary_metric}`")
                if kind == "scorer" and getattr(c.cls, "needs", None) is not None \
                        and not isinstance(c.cls.needs, property):
                    facts.append("needs " + (", ".join(f"`{n}`" for n in sorted(c.cls.needs)) or "nothing"))
                if facts:
                    lines += ["It " + "; ".join(facts) + ".", ""]
            if c.config is None:
                if c.cls is None:
                    log.warning("recipe reference: %s", c.problem)
                lines.append(f"*{c.problem}*")
                continue
            lines += table(c.config, c.config.get("$defs", {}))
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files):  # noqa: ARG001 (MkDocs hook signature)
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s: the marker %s is missing; the generated reference was not inserted", PAGE, MARKER)
        return markdown
    return markdown.replace(MARKER, render())
