"""Checkpoints of torch tasks: one dict format, plain CPU tensors, one clear error when a checkpoint does not fit.

Every torch task's ``state_dict`` is made by :func:`checkpoint`::

    {"format": 1,
     "matches": {"pool_size": 300, ...},  # what the task's data must match to resume from it
     "model": {name: tensor} | None,      # snapshot(model): CPU copies, nothing shared with the live model
     "optimizer": {...} | None,           # snapshot(optimizer)
     "members": [{name: tensor}, ...],    # further networks of the same architecture (a bootstrap committee)
     ...}                                 # the task's own plain values (fitted, steps, vocab, a weight average)

and its ``load_state_dict`` reads it back with :func:`check` and :func:`restore`::

    def load_state_dict(self, state):
        check(state, self._matches())
        self.model = restore(self._new_model(0), state["model"]).eval()
        self.optimizer = restore(self._new_optimizer(self.model), state["optimizer"])

Either refuses a checkpoint that does not fit with a one-line :class:`~activelab.errors.UserError` that starts
"checkpoint does not match" and names what differs. Checkpoints written before this format (no ``"format"`` key;
activelab 0.1's run folders) kept the ``matches`` values at the top level (``classes``, ``pool_size``,
``tokenizer``, ``task``, ``images``) and had no ``optimizer`` or ``members`` where a task did not use them:
:func:`check` reads such values where they are, and :func:`restore` takes the same tensors, so old run folders
resume.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, TypeVar

import torch
from torch import nn

from activelab.errors import UserError

FORMAT = 1
Restorable = TypeVar("Restorable", bound=nn.Module | torch.optim.Optimizer)


def _cpu_copy(value: Any) -> Any:
    """``value`` with every tensor replaced by a detached CPU copy (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)


def snapshot(obj: nn.Module | torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """The state of a model or an optimizer as plain CPU tensors (copies: later training does not change them);
    None for None."""
    if obj is None:
        return None
    return _cpu_copy(obj.state_dict())


def checkpoint(*, matches: Mapping[str, Any], model: nn.Module | None = None,
               optimizer: torch.optim.Optimizer | None = None, members: Iterable[nn.Module] = (),
               **extra: Any) -> dict[str, Any]:
    """A task's ``state_dict`` in the one format (see the module doc). ``matches``: plain values (ints, strings,
    lists) that the task's data must reproduce for the checkpoint to apply; ``extra``: the task's own values."""
    clash = set(extra) & {"format", "matches", "model", "optimizer", "members"}
    if clash:
        raise ValueError(f"checkpoint: extra keys {', '.join(sorted(clash))} clash with the format's own keys")
    return {"format": FORMAT, "matches": dict(matches), "model": snapshot(model), "optimizer": snapshot(optimizer),
            "members": [snapshot(m) for m in members], **extra}


def check(state: Mapping[str, Any], matches: Mapping[str, Any], what: str = "the task's data") -> None:
    """Refuse ``state`` unless its ``matches`` equal these (lists and tuples compare alike). A key the checkpoint
    lacks counts as a difference, except in the layout before :data:`FORMAT`, which did not record every key."""
    legacy = "format" not in state
    saved = state if legacy else state.get("matches", {})
    differ = []
    for key, now in matches.items():
        if key not in saved:
            if not legacy:
                differ.append(f"{key} missing from the checkpoint")
            continue
        then = saved[key]
        if _plain(then) != _plain(now):
            short = len(repr(then)) <= 40 and len(repr(now)) <= 40
            differ.append(f"{key} {then!r} in the checkpoint, {now!r} now" if short else f"{key} differs")
    if differ:
        raise UserError(f"checkpoint does not match {what}: {'; '.join(differ)}")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _model_differences(model: nn.Module, saved: Mapping[str, Any]) -> list[str]:
    mine = model.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    shapes = [f"{k} {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} now" for k, v in mine.items()
              if k in saved and isinstance(v, torch.Tensor) and isinstance(saved[k], torch.Tensor)
              and saved[k].shape != v.shape]
    out = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)):
        if names:
            more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
            out.append(f"{label} {', '.join(names[:3])}{more}")
    return out


def restore(target: Restorable, saved: Mapping[str, Any] | None, what: str = "") -> Restorable:
    """Load ``saved`` (a :func:`snapshot`) into ``target`` (a freshly built model or optimizer) and return it.

    The optimizer gets copies, so training on never changes the checkpoint. A model whose parameter names or
    shapes differ from the checkpoint's (the config's architecture changed) or an optimizer with other parameter
    groups is refused with a one-line ``UserError`` naming the differences. ``what`` names the part in the
    message (default: "the model" / "the optimizer")."""
    is_model = isinstance(target, nn.Module)
    what = what or ("the model" if is_model else "the optimizer")
    if saved is None:
        raise UserError(f"checkpoint does not match {what}: the checkpoint holds none")
    if is_model:
        differ = _model_differences(target, saved)
        if differ:
            raise UserError(f"checkpoint does not match {what}: {'; '.join(differ)}")
        target.load_state_dict(saved)
        return target
    try:
        target.load_state_dict(_cpu_copy(saved))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"checkpoint does not match {what}: {exc}".splitlines()[0]) from None
    return target
