"""What every tool for people labelling shares (the terminal oracle, Label Studio, CSV and JSON lines): the task's
label schema and suggestions (the optional hooks ``label_schema``, ``suggest`` and ``parse_label`` of
:mod:`activelab.hooks`) with their fallbacks, and how a label is shown to a person and read back."""
from __future__ import annotations

import json
from typing import Any, Sequence

from activelab import hooks
from activelab.protocol import ItemId, Task

FREE = {"type": "free"}   # no label_schema: any text, checked by the task's check_label


def schema(task: Task) -> dict[str, Any]:
    hook = hooks.label_schema(task)
    return dict(hook()) if hook is not None else dict(FREE)


def suggestions(task: Task, ids: Sequence[ItemId], round: int) -> list[Any]:
    """The model's predicted label per item; all ``None`` in round 0 (no trained model) or without the hook."""
    hook = hooks.suggest(task)
    if hook is None or round <= 0 or not ids:
        return [None] * len(ids)
    out = list(hook(list(ids)))
    if len(out) != len(ids):
        raise RuntimeError(f"{type(task).__name__}.suggest returned {len(out)} labels for {len(ids)} items")
    return out


def describe(task: Task, item: ItemId, kind: dict[str, Any]) -> dict[str, Any]:
    """``task.describe(item)`` without fields that only repeat the schema's label set (e.g. a list of classes):
    tools show the label set once, not with every item."""
    labels = [kind.get("choices"), kind.get("classes")]
    return {k: v for k, v in task.describe(item).items() if not (isinstance(v, list) and v in labels)}


def parse(task: Task, text: str, kind: dict[str, Any]) -> Any:
    """A label value from what a person typed (``check_label`` decides whether it is valid)."""
    hook = hooks.parse_label(task)
    if hook is not None:
        return hook(text)
    if kind.get("type") == "text":
        return text
    if kind.get("type") == "choices" and text.strip() in (kind.get("choices") or []):
        return text.strip()  # a class named "1" is the name "1", not index 1
    try:
        return json.loads(text)
    except ValueError:
        return text


def choice_name(value: Any, kind: dict[str, Any]) -> str | None:
    """For a ``choices`` schema: the choice a canonical value stands for (an index or the name itself)."""
    choices = kind.get("choices") or []
    if isinstance(value, str) and value in choices:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return choices[value]
    return None


def show(value: Any, kind: dict[str, Any]) -> str:
    """A label as a person reads it: ``3 (cat)`` for a choice, the text itself, else JSON."""
    if kind.get("type") == "choices":
        name = choice_name(value, kind)
        if name is not None and name != str(value):
            return f"{value} ({name})"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def text_cell(value: Any) -> str:
    """A value in a plain text cell (CSV): strings as they are, everything else as JSON; None as empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)
