"""Where an item id sits in a task's arrays: the lookup every pool-based task needs, with one clear error."""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from activelab.protocol import ItemId


class ItemIndex:
    """Item ids in pool order, and each id's position.

    ``position`` and ``positions`` raise ``KeyError`` for an id that is not in the pool (a lookup), ``check``
    raises ``ValueError`` (what ``Task.check_label`` must raise for a label that cannot be taken); both say
    ``unknown item '<id>' (not in the pool)``. Duplicate ids are refused when the index is built."""

    def __init__(self, ids: Iterable[ItemId]):
        self.ids: list[ItemId] = list(ids)
        self._position = {item: i for i, item in enumerate(self.ids)}
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
        """The positions of ``ids`` (int64, in their order); ``KeyError`` for the first one not in the pool."""
        return np.fromiter((self.position(i) for i in ids), dtype=np.int64, count=len(ids))

    def check(self, item_id: ItemId) -> int:
        """The position of ``item_id``; ``ValueError`` when it is not in the pool (for ``check_label``)."""
        if item_id not in self:
            raise ValueError(self._unknown(item_id))
        return self._position[item_id]
