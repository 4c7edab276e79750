"""Pools: which items are labelled and which may be asked about, over the run's label store.

Two query types, chosen by the task's ``query_type`` hook:

- ``"pool"`` (:class:`LabelPool`): the classic pool. Candidates are the task's items without a label; a label
  takes an item out of the pool for good.
- ``"synthesis"`` (:class:`SynthesisPool`): the learner synthesises its queries. Candidates are generators (e.g.
  corruption levels) that are never used up; the selector allocates samples to them (a generator id repeated n
  times = n samples), and the oracle answers with one new item per (generator, round) whose label is a dict with
  at least ``"count"``. Labels are free, so ``n_labeled`` counts synthesised samples.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import hooks
from .errors import UserError
from .protocol import Answer, Candidates, Label, Quit, Skip, Task, Text, Undo
from .store import LabelStore


class Outcome(Text):
    """What committing one answer did."""

    LABELLED = "labelled"
    SAME = "same"                          # the item already had exactly this label
    SKIPPED = "skipped"
    UNDONE = "undone"
    NOTHING_TO_UNDO = "nothing to undo"
    REPLACED = "replaced"                  # a corrected answer took the place of this round's earlier one


class LabelPool:
    """Unlabelled items of the task; a labelled item never comes back."""

    def __init__(self, task: Task, store: LabelStore):
        self.task = task
        self.store = store
        ids = [str(i) for i in task.pool_ids()]
        self._position = {item: i for i, item in enumerate(ids)}
        if len(self._position) != len(ids):
            raise UserError("the task's pool has duplicate item ids")
        self._ids = ids

    def candidates(self) -> Candidates:
        """The unlabelled items, in pool order, as positions into the task's pool (no per-item id work)."""
        free = np.ones(len(self._ids), dtype=bool)
        taken = [self._position[i] for i in self.store.labels() if i in self._position]
        free[np.asarray(taken, dtype=np.int64)] = False
        return Candidates(self._ids, np.flatnonzero(free), increasing=True)

    def labels(self) -> dict[str, Any]:
        return self.store.labels()

    def n_labeled(self) -> int:
        return self.store.count_labels()

    def _batch_entry(self, item_id: str, round: int, batch: list[str]) -> str:
        """The batch entry an answer is for (the item itself); a UserError when it is for none."""
        if item_id not in batch:
            raise UserError(f"the oracle answered for item {item_id!r}, which is not in round {round}'s batch")
        return item_id

    def apply(self, answer: Answer, round: int, batch: list[str]) -> Outcome:
        """Commit one oracle answer; returns what happened."""
        if isinstance(answer, Quit):
            raise TypeError("Quit is handled by the loop")
        entry = self._batch_entry(answer.item_id, round, batch)
        if isinstance(answer, Label):
            value = self._check(answer)
            return Outcome.LABELLED if self.store.add_label(answer.item_id, value, round, answer.annotator) \
                else Outcome.SAME
        if isinstance(answer, Skip):
            self.store.skip(round, entry)
            return Outcome.SKIPPED
        if isinstance(answer, Undo):
            removed = self.store.remove_label(answer.item_id, round)
            self.store.unskip(round, entry)
            return Outcome.UNDONE if removed else Outcome.NOTHING_TO_UNDO
        raise TypeError(f"unknown answer {answer!r}")

    def replace(self, answer: Label | Skip, round: int, batch: list[str]) -> Outcome:
        """A corrected answer for an item labelled earlier in this round: withdraw and store (or skip) in one
        transaction, so a kill in between never leaves the item without either answer."""
        if answer.item_id not in batch:
            raise UserError(f"item {answer.item_id!r} is not in round {round}'s batch")
        value = self._check(answer) if isinstance(answer, Label) else None
        self.store.replace_label(answer.item_id, value, round, answer.annotator)
        return Outcome.REPLACED

    def _check(self, answer: Label) -> Any:
        try:
            return self.task.check_label(answer.item_id, answer.value)
        except ValueError as exc:
            raise UserError(f"label for item {answer.item_id!r} rejected: {exc}") from exc

    def outstanding(self, round: int, batch: list[str]) -> list[str]:
        """Items of the batch that still need an answer (neither labelled nor skipped)."""
        done = self.store.labeled_in(batch) | self.store.skipped(round)
        return [i for i in batch if i not in done]


class SynthesisPool(LabelPool):
    """Generators are always candidates; answers are new synthesised items ``"<generator>@<round>"``."""

    def candidates(self) -> Candidates:
        return Candidates(self._ids)

    def n_labeled(self) -> int:
        return int(sum(int(v.get("count", 1)) for v in self.store.labels().values()))

    def _batch_entry(self, item_id: str, round: int, batch: list[str]) -> str:
        generator = item_id.rsplit("@", 1)[0]
        if generator not in batch:
            raise UserError(f"item {item_id!r} does not come from a generator of round {round}")
        return generator

    def outstanding(self, round: int, batch: list[str]) -> list[str]:
        made = self.store.labeled_in(f"{g}@{round}" for g in set(batch))
        skipped = self.store.skipped(round)
        return [g for g in batch if f"{g}@{round}" not in made and g not in skipped]


POOLS = {"pool": LabelPool, "synthesis": SynthesisPool}


def make_pool(task: Task, store: LabelStore) -> LabelPool:
    kind = hooks.query_type(task)
    if kind not in POOLS:
        raise UserError(f"task query_type {kind!r} is not one of {', '.join(POOLS)}")
    return POOLS[kind](task, store)
