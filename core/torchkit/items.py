"""Where an item id sits in a task's arrays: the lookup every pool-based task needs, with one clear error."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numba as nb
import numpy as np

from activelab.protocol import Candidates, ItemId


class ItemIndex:
    """Item ids in pool order, and each id's position.

    ``position`` and ``positions`` raise ``KeyError`` for an id that is not in the pool (a lookup), ``check``
    raises ``ValueError`` (what ``Task.check_label`` must raise for a label that cannot be taken); both say
    ``unknown item '<id>' (not in the pool)``. Duplicate ids are refused when the index is built."""

    def __init__(self, ids: Iterable[ItemId]):
        self.ids: list[ItemId] = list(ids)
        self._position = {item: i for i, item in enumerate(self.ids)}
        self._same_order: Any = None   # the last universe found equal to ``ids`` (see ``positions``)
        if len(self._position) != len(self.ids):
            seen: set[ItemId] = set()
            twice = next(i for i in self.ids if i in seen or seen.add(i))
            raise ValueError(f"duplicate item id {twice!r} in the pool")

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[ItemId]:
        return iter(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._position

    @staticmethod
    def _unknown(item_id: object) -> str:
        return f"unknown item {item_id!r} (not in the pool)"

    def position(self, item_id: ItemId) -> int:
        """The position of ``item_id``; ``KeyError`` when it is not in the pool."""
        try:
            return self._position[item_id]
        except (KeyError, TypeError):
            raise KeyError(self._unknown(item_id)) from None

    def positions(self, ids: Sequence[ItemId]) -> np.ndarray:
        """The positions of ``ids`` (int64, in their order); ``KeyError`` for the first one not in the pool.

        For :class:`~activelab.protocol.Candidates` over a universe in this index's order (the pool the loop built
        from this task's ``pool_ids``) the candidates' rows are the positions: no lookup at all. The universe is
        compared with the index once (the first time it is seen), not on every call."""
        if isinstance(ids, Candidates) and self._same(ids.universe):
            return ids.rows
        return np.fromiter((self.position(i) for i in ids), dtype=np.int64, count=len(ids))

    def _same(self, universe: Sequence[ItemId]) -> bool:
        if universe is self._same_order:
            return True
        if len(universe) == len(self.ids) and list(universe) == self.ids:
            self._same_order = universe
            return True
        return False

    def check(self, item_id: ItemId) -> int:
        """The position of ``item_id``; ``ValueError`` when it is not in the pool (for ``check_label``)."""
        if item_id not in self:
            raise ValueError(self._unknown(item_id))
        return self._position[item_id]

    def blocks(self, ids: Sequence[ItemId], size: int) -> Iterator[slice | np.ndarray]:
        """The positions of ``ids`` in blocks of at most ``size`` (see :func:`row_blocks`): views where consecutive.
        The pool's candidates say their rows increase, so their blocks are told apart without reading the rows."""
        rows = self.positions(ids)
        increasing = isinstance(ids, Candidates) and ids.increasing and rows is ids.rows
        return row_blocks(rows, size, increasing=increasing)


@nb.njit(cache=True, nogil=True)
def _consecutive(block: np.ndarray) -> bool:
    """Each row is the one before plus 1 (one branch-free read of the block, no temporaries)."""
    ok = True
    for i in range(1, block.size):
        ok &= block[i] == block[i - 1] + 1
    return ok


def row_blocks(rows: np.ndarray, size: int, increasing: bool = False) -> Iterator[slice | np.ndarray]:
    """``rows`` in consecutive blocks of at most ``size``, each as a ``slice`` where its rows are consecutive
    (indexing an array with it is a view, not a copy) and as the index array otherwise. ``increasing``: the rows
    are known to strictly increase, so a block whose first and last rows are ``len - 1`` apart is consecutive
    (not read); otherwise such a block is read once to check."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    for start in range(0, len(rows), size):
        block = rows[start:start + size]
        if len(block) and block[-1] - block[0] == len(block) - 1 and (increasing or _consecutive(block)):
            yield slice(int(block[0]), int(block[-1]) + 1)
        else:
            yield block
