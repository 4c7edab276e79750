"""Recipes: YAML files (read with ``yaml.safe_load``) validated into typed models with unknown keys rejected.

Validation reports every problem at once, each with its dotted path in the file (``loop.rounds: must be >= 1``):
the recipe's own fields, the component names (looked up in the installed plugins, never by import path), each
component's ``params`` (validated by the component's ``Config`` model) and whether the scorer's needs are met by
the task's outputs.
"""
from __future__ import annotations

import collections.abc
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from . import registry
from .errors import RecipeError, UserError
from .protocol import Env


def _not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("empty_path", "must be a path, not an empty string")
    return value


def _expanded(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:            # "~name/..." of an unknown user: Path.expanduser raises
        raise PydanticCustomError("home_folder", "cannot expand ~ in {path}: no such user or no home folder",
                                  {"path": str(path)}) from None


DataPath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(_expanded)]
"""The type of a component config's filesystem-path field (``DataPath | None`` when it may be left out): a
:class:`~pathlib.Path` with ``~`` expanded, so a run folder pins it to the same absolute path from any folder
(``Path("~/x").absolute()`` would be ``<cwd>/~/x``); an empty string is refused (``Path("")`` is the current
folder)."""


class ComponentSpec(BaseModel):
    """``{name: entropy, plugin: core, params: {...}}``; ``plugin`` may be left out when the name is unique."""

    model_config = ConfigDict(extra="forbid")
    name: str
    plugin: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class LoopSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(ge=1, description="query rounds after the initial batch")
    initial: int = Field(ge=1, description="size of the first, uninformed batch (random items, equal shares)")
    batch: int = Field(ge=1, description="items queried per round")
    keep_checkpoints: int = Field(default=2, ge=1, description="newest checkpoints kept in the run folder")
    train_on_all: bool = Field(default=False, description=(
        "with several workers (--nproc, torchrun) and a task that can (fits_distributed): train on every worker "
        "together (DDP), faster; the models, and so the picks, then depend on the number of workers. Off: rank 0 "
        "trains and the picks are a one-process run's for any number"))


#: The recipe's component fields and the kind of component each names.
FIELDS = {"task": "task", "scorer": "scorer", "cold_start": "scorer", "selector": "selector", "oracle": "oracle"}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the name becomes the default run folder runs/<name>-<time>: no path separators, no "..", no leading dot
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$",
                      description="letters, digits and . _ + - (at most 100; it names the default run folder)")
    description: str = ""
    seed: int = 0
    task: ComponentSpec
    scorer: ComponentSpec
    cold_start: ComponentSpec | None = Field(
        None, description="a scorer that chooses the first batch (round 0, before any model is trained; e.g. "
                          "typiclust on the task's label-free features) instead of random items")
    selector: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="topk"))
    oracle: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="simulated"))
    loop: LoopSpec
    stopping: list[ComponentSpec] = Field(default_factory=list, description="stopping criteria, judged after each "
                                          "round's fit and recorded in its metrics; params end_loop: true ends the run")
    strategies: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named sets of dotted overrides for `activelab compare --strategies`",
    )


@dataclass
class Resolved:
    """A validated recipe with its component classes and validated configs."""

    recipe: Recipe
    classes: dict[str, type]
    configs: dict[str, Any]
    raw: dict[str, Any]
    stopping: list[tuple[type, Any]]
    """The ``stopping`` criteria's classes and configs, in recipe order."""


# ------------------------------------------------------------------------------------------- messages
PLAIN = {"extra_forbidden": "unknown key", "missing": "required"}
BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _message(err: dict[str, Any]) -> str:
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind in PLAIN:
        return PLAIN[kind]
    if kind in BOUNDS:
        bound = next(iter(ctx.values())) if ctx else "?"
        return f"must be {BOUNDS[kind]} {bound} (got {err.get('input')!r})"
    if kind == "dict_type":
        return f"must be a mapping (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return f"must be letters, digits and . _ + - starting with a letter or digit (got {err.get('input')!r})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')} (got {err.get('input')!r})"
    msg = err.get("msg", "invalid")
    return f"{msg[0].lower()}{msg[1:]}" + (f" (got {err.get('input')!r})"
                                           if kind.endswith("_type") or kind.endswith("_parsing") else "")


def pydantic_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err.get("loc", ()))
        path = f"{prefix}.{path}" if prefix and path else (prefix or path)
        out.append(f"{path or '(top level)'}: {_message(err)}")
    return out


# ------------------------------------------------------------------------------------------- loading
MAX_VALUES = 100_000   # values a recipe may hold once YAML aliases are expanded (an "alias bomb" holds billions)
MAX_DEPTH = 64         # nesting of mappings and lists


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a key given twice (naming both lines) instead of keeping
    the last one silently."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, collections.abc.Hashable):
                    continue  # reported by the constructor below (with the same test)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (lines {seen[key]} and {line})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                        lambda loader, node: loader.construct_mapping(node, deep=True))


def check_size(data: Any, where: str) -> None:
    """Refuse data that expands to more than ``MAX_VALUES`` values (YAML aliases share one object many times),
    nests deeper than ``MAX_DEPTH`` or refers to itself. Sizes of shared objects are computed once, so this
    costs time in the number of distinct objects, never in the expanded size."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(obj: Any, depth: int) -> int:       # recursion is bounded: deeper than MAX_DEPTH is refused
        if not isinstance(obj, (dict, list)):
            return 1
        key = id(obj)
        if key in on_path:
            raise UserError(f"{where}: refers to itself (a YAML alias inside its own anchor)")
        if key not in sizes:
            if depth > MAX_DEPTH:
                raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            on_path.add(key)
            children = [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj
            sizes[key] = 1 + sum(size(c, depth + 1) for c in children)
            on_path.discard(key)
            if sizes[key] > MAX_VALUES:
                raise UserError(f"{where}: expands to more than {MAX_VALUES:,} values (YAML aliases?); refusing it")
        return sizes[key]

    size(data, 0)


def safe_load(text: str, where: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and the size and depth limits above."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to read") from None
    check_size(data, where)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: recipe file not found")
    try:
        data = safe_load(p.read_text(encoding="utf-8"), str(p))
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise UserError(f"{p}: cannot read recipe: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{p}:{where}: invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of keys (name, task, scorer, loop, ...), "
                        f"got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``loop.rounds=3`` -> (["loop", "rounds"], 3); the value is read as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: expected dotted.key=value")
    try:
        parsed = safe_load(value, f"override {key}") if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a copy of ``data``; intermediate mappings are created (the schema rejects unknown ones)."""
    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                if part in node and node[part] is not None:
                    raise UserError(f"override {'.'.join(parts)}: {part} is not a mapping")
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def validate(data: dict[str, Any], source: str = "recipe") -> Resolved:
    """Validate a recipe mapping; raises :class:`RecipeError` listing every problem."""
    problems: list[str] = []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc))
        recipe = None

    classes: dict[str, type] = {}
    configs: dict[str, Any] = {}
    specs = [(f, kind, data.get(f, {"name": "topk"} if f == "selector" else {"name": "simulated"} if f == "oracle"
                                 else None)) for f, kind in FIELDS.items()]
    stops = data.get("stopping") if isinstance(data.get("stopping"), list) else []
    specs += [(f"stopping.{i}", "stopping", spec) for i, spec in enumerate(stops)]
    for field, kind, spec_raw in specs:
        if not isinstance(spec_raw, dict) or not isinstance(spec_raw.get("name"), str):
            continue  # already reported by the schema (or an optional field left out)
        params = spec_raw.get("params") or {}
        try:
            cls = registry.load(kind, spec_raw["name"], spec_raw.get("plugin"))
        except UserError as exc:
            problems.append(f"{field}.name: {exc}")
            continue
        classes[field] = cls
        if not isinstance(params, dict):
            continue  # reported by the schema
        config_model = getattr(cls, "Config", None)
        try:
            configs[field] = dict(params) if config_model is None else config_model.model_validate(params)
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, prefix=f"{field}.params"))

    # Cross-checks that need both ends.
    for field, kind, spec_raw in specs:
        if "task" not in configs or field not in configs or kind not in ("scorer", "stopping"):
            continue
        needs = _needs(classes[field], configs[field])
        offers = set(getattr(classes["task"], "outputs", ()))
        missing = sorted(set(needs) - offers)
        what = "scorer" if kind == "scorer" else "stopping criterion"
        if missing:
            problems.append(f"{field}.name: {what} '{spec_raw['name']}' needs {', '.join(missing)}, which task "
                            f"'{data['task']['name']}' does not provide "
                            f"(it provides: {', '.join(sorted(offers)) or 'nothing'})")
    names = [spec.get("name") if isinstance(spec, dict) else None for spec in stops]
    problems += [f"stopping.{i}.name: '{n}' is given twice" for i, n in enumerate(names) if n and n in names[:i]]
    stopping = [(classes.pop(f), configs.pop(f)) for f, kind, _ in specs if kind == "stopping" and f in configs]
    # the run folder pins every default of the criteria, as resolved_recipe does for the other components
    for spec, (_, config) in zip(recipe.stopping if recipe is not None and not problems else [], stopping):
        spec.params = config.model_dump(mode="json") if hasattr(config, "model_dump") else spec.params
    if recipe is not None:     # the schema made every strategy a mapping with string keys
        problems += [f"strategies.{sname}: keys must be dotted recipe paths (not strategies.*)"
                     for sname, keys in recipe.strategies.items() if any(k.startswith("strategies") for k in keys)]
    if problems:
        raise RecipeError(source, problems)
    return Resolved(recipe=recipe, classes=classes, configs=configs, raw=data, stopping=stopping)


def _needs(scorer_cls: type, config: Any) -> set[str]:
    """A scorer's needs may depend on its config (a bootstrap vs a dropout committee): ask an instance."""
    try:
        return set(scorer_cls(config, Env()).needs)
    except Exception:  # a scorer that cannot be built without a run still declares its class-level needs
        return set(getattr(scorer_cls, "needs", ()))


def load(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Resolved:
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate(data, source=str(path))


def strategy_overrides(resolved: Resolved, strategy: str) -> dict[str, Any]:
    """A named strategy of the recipe, or, when the recipe does not define it, a scorer name."""
    named = resolved.recipe.strategies
    if strategy in named:
        return dict(named[strategy])
    try:
        registry.find("scorer", strategy)
    except UserError as exc:
        defined = ", ".join(sorted(named)) or "none"
        raise UserError(f"strategy '{strategy}' is neither defined in the recipe's strategies ({defined}) nor a "
                        f"scorer: {exc}") from exc
    return {"scorer": {"name": strategy, "params": {}}}
