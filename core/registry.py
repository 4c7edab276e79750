"""Plugin discovery: every plugin, built-in or third-party, registers through the ``activelab.plugins``
entry-point group and exposes a :class:`Manifest` mapping component names (and command-line verbs) to lazy
``"module:attr"`` strings.

Nothing is imported until it is used, so loading the vision plugin's manifest does not import speech code, and a
recipe can only name components that an installed plugin offers (never an arbitrary import path). A component is
checked for misspelt or misshapen optional hooks (:func:`activelab.hooks.check`) when it is loaded.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from . import hooks
from .errors import UserError

GROUP = "activelab.plugins"
KINDS = ("task", "scorer", "selector", "oracle", "stopping")


@dataclass(frozen=True)
class Manifest:
    """What a plugin offers. ``components[kind][name] = "package.module:Attr"``; ``commands[verb] =
    "package.module:VERB"``, an :class:`activelab.cli.Verb` that ``activelab VERB`` runs."""

    name: str
    description: str = ""
    components: dict[str, dict[str, str]] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plugin:
    manifest: Manifest
    origin: str            # "entry point core = activelab.manifest:MANIFEST (activelab 0.1.0)"


@lru_cache(maxsize=1)
def plugins() -> dict[str, Plugin]:
    """All installed plugins by name (cached for the process)."""
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=GROUP):
        try:
            manifest = ep.load()
        except Exception as exc:  # a broken third-party plugin must not take the others down
            warnings.warn(f"plugin '{ep.name}' ({ep.value}) failed to load and is ignored: {exc}", stacklevel=2)
            continue
        if isinstance(manifest, dict):
            manifest = Manifest(name=manifest.get("name", ep.name), description=manifest.get("description", ""),
                                components=manifest.get("components", {}), commands=manifest.get("commands", {}))
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
        found[manifest.name] = Plugin(manifest, f"entry point {ep.name} = {ep.value} ({dist})")
    return found


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def find(kind: str, name: str, plugin: str | None = None) -> tuple[str, str]:
    """Resolve a component to ``(plugin_name, "module:attr")`` with an error that lists what exists."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}")
    found = plugins()
    if plugin is not None and plugin not in found:
        raise UserError(f"plugin '{plugin}' not found; installed: {', '.join(sorted(found))}"
                        + _suggest(plugin, list(found)))
    tables = {p: pl.manifest.components.get(kind, {}) for p, pl in sorted(found.items()) if plugin in (None, p)}
    hits = [(p, table[name]) for p, table in tables.items() if name in table]
    if not hits:
        everything = sorted({n for table in tables.values() for n in table})
        where = "any plugin" if plugin is None else f"plugin {plugin}"
        raise UserError(f"{kind} '{name}' not found in {where}; available: {', '.join(everything) or 'none'}"
                        + _suggest(name, everything))
    if len(hits) > 1:
        raise UserError(f"{kind} '{name}' is offered by several plugins ({', '.join(p for p, _ in hits)}); "
                        f"say which with 'plugin:'")
    return hits[0]


def resolve(target: str) -> Any:
    """The object a ``"module:attr"`` string names (``ImportError``/``AttributeError`` when there is none)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load(kind: str, name: str, plugin: str | None = None) -> Any:
    """Import and return the component class, checked for misspelt or misshapen hooks."""
    owner, target = find(kind, name, plugin)
    try:
        obj = resolve(target)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{kind} '{name}' of plugin {owner} cannot be imported ({target}): {exc}") from exc
    hooks.check(owner, kind, name, obj)
    return obj


def commands() -> dict[str, tuple[str, str]]:
    """Command-line verbs the plugins contribute: ``verb -> (plugin, "module:attr")``; the first plugin (by
    name) that offers a verb has it."""
    found: dict[str, tuple[str, str]] = {}
    for name, plugin in sorted(plugins().items()):
        for verb, target in plugin.manifest.commands.items():
            found.setdefault(verb, (name, target))
    return found

