"""Optional hooks: what a task or an oracle MAY offer beyond its Protocol, one small documented Protocol each.

The core and the tools ask for a hook only through its accessor below (``hooks.suggest(task)`` returns the
task's ``suggest`` method or None; ``hooks.lower_is_better(task)`` the names or an empty set), never with a
``getattr`` of their own. When the registry loads a plugin's component it calls :func:`check`: an attribute that
looks like a misspelt hook (``sugest``) or a hook of the wrong shape (``suggest(self)``) is a
:class:`~activelab.errors.UserError` naming the plugin, the component and the attribute, not silence (pluggy
rejects unknown hook names for the same reason).
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

import numpy as np

from .errors import UserError
from .protocol import ItemId, Oracle, Task


# ------------------------------------------------------------------------------------------ task hooks
class Suggest(Protocol):
    def suggest(self, ids: Sequence[ItemId]) -> list[Any]:
        """The current model's predicted label per item, in the canonical form ``check_label`` returns (``None``
        where it has none). Shown as the suggestion a person accepts with Enter and sent to Label Studio as
        pre-annotations. While an oracle labels round r's batch the task holds the model that chose it (round
        r-1's); round 0 has no trained model, and tools ask for no suggestion."""


class LabelSchema(Protocol):
    def label_schema(self) -> dict[str, Any]:
        """The kind of label a person gives. ``{"type": "choices", "choices": [names]}`` (a label is an index into
        ``choices`` or the name itself); ``{"type": "rectangles", "classes": [names]}`` (a label is a list of
        ``{"label": name, "box": [x0, y0, x1, y1]}`` in pixels of the image that ``describe`` names, and
        ``describe`` gives its ``width`` and ``height``); ``{"type": "text"}`` (a label is a string). Without it a
        tool accepts free text and leaves the checking to ``check_label``."""


class ParseLabel(Protocol):
    def parse_label(self, text: str) -> Any:
        """What a person typed as a label value (``check_label`` then checks it). Without it: the text itself for
        a ``text`` schema, else the text read as JSON if it is JSON, else the text."""


class CorruptLabel(Protocol):
    def corrupt_label(self, value: Any, rng: np.random.Generator) -> Any:
        """A wrong label for ``value`` drawn with ``rng``: the simulated oracle's label noise. Without it a recipe
        that asks for noise is refused."""


class FitBootstrap(Protocol):
    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` committee members on bootstrap resamples of the labels (member b drawn from
        ``seed``); ``predict(..., mc=MC(mode="bootstrap"))`` then uses them. Goes with the ``BOOTSTRAP`` output."""


class LabelCost(Protocol):
    def label_cost(self, ids: Sequence[ItemId], labels: Sequence[Any] | None = None) -> np.ndarray:
        """What labelling each item costs, in the task's ``cost_unit`` (seconds of audio, source tokens, boxes):
        with ``labels``, what those answers cost; without, the cost expected before asking (what strategies that
        select per unit of cost divide by). Without the hook every label costs 1 and no cost is reported."""


class CostUnit(Protocol):
    """What :meth:`LabelCost.label_cost` counts, for tables and plots (e.g. ``"seconds of audio"``); default
    ``"labels"``."""

    cost_unit: str


class DataFingerprint(Protocol):
    def data_fingerprint(self) -> str:
        """A digest of the task's data (pool items and their content); a run stores it when it starts and refuses
        to resume on data that differ. Without it: a digest of the pool ids."""


class LowerIsBetter(Protocol):
    """Names of metrics where smaller is better (error rates such as ``"wer"``); reports use it to say when a
    strategy "reaches" a target. Every other metric counts as higher-is-better."""

    lower_is_better: Collection[str]


class Metrics(Protocol):
    """Every metric name ``evaluate`` and ``fit`` can report; ``activelab compare --metrics`` checks names against
    it before any run (without it, after the first run)."""

    metrics: Collection[str]


class QueryType(Protocol):
    """``"pool"`` (labelled items leave the pool; the default) or ``"synthesis"`` (the candidates are generators
    that are never used up, e.g. corruption levels; answers create new items). See :mod:`activelab.pool`."""

    query_type: str


class PredictBatchSize(Protocol):
    """How many items each chunk ``predict`` yields holds (the last one fewer), the chunks numbered from
    ``mc.chunk`` for their dropout masks. Several processes (:mod:`activelab.distributed`) split a query along
    these chunks, so every output, MC dropout's included, equals one process's. Without it: chunks of 256 items,
    and MC-dropout masks may differ from a one-process run's."""

    predict_batch_size: int


class FitsDistributed(Protocol):
    """True for a task whose ``fit`` can train on every process together (DistributedDataParallel) when a process
    group is initialised: with the recipe's ``loop.train_on_all`` every rank then calls ``fit``. Otherwise (and by
    default) rank 0 fits alone and sends its ``state_dict`` to the other ranks."""

    fits_distributed: bool


# ------------------------------------------------------------------------------------------ oracle hooks
class Interactive(Protocol):
    """True for an oracle that talks to a person on this terminal: the loop draws no progress bar over its
    questions, and the run's status reads "awaiting labels" while it asks. Default: False."""

    interactive: bool


# ------------------------------------------------------------------------------------------ accessors
# One per hook: the component's hook (a bound method) or None, or an attribute hook's value or its default.
def _method(component: Any, name: str) -> Any:
    hook = getattr(component, name, None)
    return hook if callable(hook) else None


def _value(component: Any, name: str, default: Any) -> Any:
    value = getattr(component, name, default)
    return default if isinstance(value, property) else value      # a class whose hook is a property: unknown


def suggest(task: Task) -> Callable[[Sequence[ItemId]], list[Any]] | None:
    return _method(task, "suggest")


def label_schema(task: Task) -> Callable[[], dict[str, Any]] | None:
    return _method(task, "label_schema")


def parse_label(task: Task) -> Callable[[str], Any] | None:
    return _method(task, "parse_label")


def corrupt_label(task: Task) -> Callable[[Any, np.random.Generator], Any] | None:
    return _method(task, "corrupt_label")


def fit_bootstrap(task: Task) -> Callable[[Mapping[ItemId, Any], int, int], None] | None:
    return _method(task, "fit_bootstrap")


def label_cost(task: Task) -> Callable[..., np.ndarray] | None:
    return _method(task, "label_cost")


def cost_unit(task: Task | type) -> str:
    return str(_value(task, "cost_unit", "labels"))


def data_fingerprint(task: Task) -> Callable[[], str] | None:
    return _method(task, "data_fingerprint")


def lower_is_better(task: Task | type) -> frozenset[str]:
    """Of a task or a task class; empty without the hook."""
    return frozenset(_value(task, "lower_is_better", ()))


def metrics(task: Task | type) -> frozenset[str] | None:
    """Of a task or a task class; None without the hook (nothing declared)."""
    declared = _value(task, "metrics", None)
    return None if declared is None else frozenset(declared)


def query_type(task: Task) -> str:
    return _value(task, "query_type", "pool")


def predict_batch_size(task: Task) -> int | None:
    return _value(task, "predict_batch_size", None)


def fits_distributed(task: Task) -> bool:
    return bool(_value(task, "fits_distributed", False))


def interactive(oracle: Oracle) -> bool:
    return bool(_value(oracle, "interactive", False))


# ------------------------------------------------------------------------------------------ registration
def _names(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, str) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class Hook:
    kind: str                                      # the component kind that may have it
    protocol: type
    valid: Callable[[Any], bool] | None = None     # an attribute hook's check of its value; None for a method
    expected: str = ""                             # what ``valid`` wants, for the message


HOOKS: dict[str, Hook] = {
    "suggest": Hook("task", Suggest),
    "label_schema": Hook("task", LabelSchema),
    "parse_label": Hook("task", ParseLabel),
    "corrupt_label": Hook("task", CorruptLabel),
    "fit_bootstrap": Hook("task", FitBootstrap),
    "data_fingerprint": Hook("task", DataFingerprint),
    "label_cost": Hook("task", LabelCost),
    "cost_unit": Hook("task", CostUnit, lambda v: isinstance(v, str), "a string"),
    "lower_is_better": Hook("task", LowerIsBetter, _names, "a collection of metric names"),
    "metrics": Hook("task", Metrics, _names, "a collection of metric names"),
    "query_type": Hook("task", QueryType, lambda v: v in ("pool", "synthesis"), "'pool' or 'synthesis'"),
    "predict_batch_size": Hook("task", PredictBatchSize, lambda v: isinstance(v, int) and v > 0,
                               "a positive integer"),
    "fits_distributed": Hook("task", FitsDistributed, lambda v: isinstance(v, bool), "True or False"),
    "interactive": Hook("oracle", Interactive, lambda v: isinstance(v, bool), "True or False"),
}
#: What the Protocols of :mod:`activelab.protocol` require: never mistaken for a misspelt hook.
REQUIRED = {kind: {n for n in dir(proto) if not n.startswith("_")} | set(getattr(proto, "__annotations__", {}))
            for kind, proto in {"task": Task, "oracle": Oracle}.items()}
CUTOFF = 0.8   # difflib similarity from which a name counts as a misspelt hook ("sugest", "label_shema")


def _shape_problem(component: type, name: str, hook: Hook) -> str | None:
    raw = inspect.getattr_static(component, name)
    if hook.valid is not None:                # an attribute; a property is computed per instance: not checked
        if isinstance(raw, property) or (not callable(raw) and hook.valid(raw)):
            return None
        return "is a method; the hook is an attribute" if callable(raw) else f"is {raw!r}; expected {hook.expected}"
    wanted = list(inspect.signature(getattr(hook.protocol, name)).parameters)[1:]
    expected = f"{name}(self{''.join(', ' + p for p in wanted)})"
    if not callable(raw) and not isinstance(raw, (staticmethod, classmethod)):
        return f"is not a method; expected {expected}"
    params = list(inspect.signature(getattr(component, name)).parameters.values())
    params = params[1:] if inspect.isfunction(raw) else params       # a plain method's self
    try:       # callable with the hook's positional arguments, and requiring no others
        inspect.Signature(params).bind(*wanted)
    except TypeError:
        return f"is {name}({', '.join(['self'] + [str(p).split(':')[0] for p in params])}); expected {expected}"
    return None


def check(plugin: str, kind: str, name: str, component: Any) -> None:
    """Refuse a component class with an attribute that looks like a misspelt hook of its kind, or with a hook of
    the wrong shape (a method's number of arguments, an attribute's value)."""
    if not inspect.isclass(component):
        return
    mine = [h for h, hook in HOOKS.items() if hook.kind == kind]
    where = f"plugin {plugin}: {kind} '{name}' ({component.__qualname__})"
    for attr in dir(component):
        if attr.startswith("_") or attr in REQUIRED.get(kind, ()):
            continue
        if attr in mine:
            if problem := _shape_problem(component, attr, HOOKS[attr]):
                raise UserError(f"{where}: hook '{attr}' {problem}")
            continue
        close = difflib.get_close_matches(attr, mine, n=1, cutoff=CUTOFF)
        if close:
            raise UserError(f"{where}: attribute '{attr}' is not a hook; did you mean '{close[0]}'? "
                            f"({kind} hooks: {', '.join(mine)})")
