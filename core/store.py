"""The durable label store: one SQLite file per run (``labels.sqlite``).

Every answer is committed in its own transaction (WAL journal, ``synchronous=FULL``) before the loop asks the
oracle for the next one, so killing the process at any moment loses no label an oracle gave. An item can carry at
most one label (primary key); giving a different label to an already labelled item is refused, the same label
again is a no-op (importing a file twice changes nothing).

Labels a model was trained on are frozen: the loop calls :meth:`LabelStore.freeze` with the round before it
fits, and from then on no label of that round or an earlier one can be withdrawn, replaced or added (an import
into a finished run, or after a round's fit, is refused instead of silently disagreeing with the checkpoints).

Every write error (a full disk, a read-only folder) is a :class:`~activelab.errors.UserError` naming the file.

Tables:
  labels(item_id PK, value JSON, round, annotator, created)
  batches(round PK, items JSON, scores JSON, created)         -- the query of each round, written before asking
  skips(round, item_id)                                        -- items an oracle declined in that round's batch
  metrics(round PK, record JSON)                               -- one row per evaluated round
  state(key PK, value JSON)                                    -- run status ("running", "paused", "done", ...)
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    item_id   TEXT PRIMARY KEY,
    value     TEXT NOT NULL,
    round     INTEGER NOT NULL,
    annotator TEXT NOT NULL,
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    round   INTEGER PRIMARY KEY,
    items   TEXT NOT NULL,
    scores  TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skips (
    round   INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    PRIMARY KEY (round, item_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    round  INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class LabelConflict(UserError):
    """An item already has a different label."""


class LabelFrozen(UserError):
    """The label belongs to a round a model was already trained on."""


class LabelStore:
    """Transactional label store over one SQLite file.

    ``create=False`` opens an existing store only: a missing, empty (e.g. truncated to 0 bytes) or table-less file
    is an error, never silently a new, empty store."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create:
            if not self.path.is_file():
                raise UserError(f"{self.path}: the label store is missing; this run folder cannot be continued")
            if self.path.stat().st_size == 0:
                raise UserError(f"{self.path}: the label store is empty (0 bytes; truncated?); refusing to treat "
                                f"this run as new")
        try:
            # Python's default transaction handling: each `with self._write():` block below is one transaction.
            self.db = sqlite3.connect(str(self.path), timeout=30.0)
            if not create:
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"labels", "batches", "state"} <= tables:
                    self.db.close()
                    raise UserError(f"{self.path}: not a label store (its tables are missing); refusing to treat "
                                    f"this run as new")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if create:
                self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise UserError(f"{self.path}: not a usable label store: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction; a write the environment refuses (disk full, read-only) is a one-line user error,
        and the transaction is rolled back whole."""
        try:
            with self.db:
                yield
        except sqlite3.OperationalError as exc:
            raise UserError(f"{self.path}: cannot write the label store: {exc}") from None

    # -------------------------------------------------------------------------------------------- freezing
    def frozen_round(self) -> int:
        """The last round a model was trained on (-1 before the first fit)."""
        return int(self.get_state("trained_through", -1))

    def freeze(self, round: int) -> None:
        """Mark the labels of ``round`` and earlier as trained on: from now on they never change."""
        if round > self.frozen_round():
            self.set_state("trained_through", round)

    def _refuse_frozen(self, item_id: str, round: int, what: str) -> None:
        frozen = self.frozen_round()
        if round <= frozen:
            raise LabelFrozen(f"item {item_id!r}: round {round} was already trained on (a model was fitted on the "
                              f"labels of rounds 0..{frozen}); {what} refused")

    # -------------------------------------------------------------------------------------------- labels
    def add_label(self, item_id: str, value: Any, round: int, annotator: str) -> bool:
        """Commit one label. Returns False if the item already had exactly this label (nothing changes)."""
        encoded = json.dumps(value, sort_keys=True)
        with self._write():  # one transaction per label: durable before returning
            row = self.db.execute("SELECT value FROM labels WHERE item_id = ?", (item_id,)).fetchone()
            if row is not None:
                if row[0] == encoded:
                    return False
                raise LabelConflict(f"item {item_id!r} already has label {row[0]}; refusing {encoded}")
            self._refuse_frozen(item_id, round, "a new label")
            self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                            (item_id, encoded, round, annotator, time.time()))
            self.db.execute("DELETE FROM skips WHERE item_id = ?", (item_id,))
        return True

    def remove_label(self, item_id: str, round: int) -> bool:
        """Undo: withdraw a label given in ``round``; a label a model was trained on is never withdrawn."""
        with self._write():
            if self.db.execute("SELECT 1 FROM labels WHERE item_id = ? AND round = ?", (item_id, round)).fetchone():
                self._refuse_frozen(item_id, round, "withdrawing its label")
            cur = self.db.execute("DELETE FROM labels WHERE item_id = ? AND round = ?", (item_id, round))
        return cur.rowcount > 0

    def replace_label(self, item_id: str, value: Any, round: int, annotator: str) -> None:
        """A corrected answer for an item labelled earlier in ``round``, in ONE transaction: the old label is
        withdrawn and ``value`` stored, or (``value is None``) the item is marked skipped instead. Refused for a
        label of another round or one a model was trained on."""
        with self._write():
            row = self.db.execute("SELECT round FROM labels WHERE item_id = ?", (item_id,)).fetchone()
            if row is None or row[0] != round:
                raise LabelConflict(f"item {item_id!r} has no label of round {round} to replace")
            self._refuse_frozen(item_id, round, "replacing its label")
            self.db.execute("DELETE FROM labels WHERE item_id = ?", (item_id,))
            if value is None:
                self.db.execute("INSERT OR IGNORE INTO skips VALUES (?, ?)", (round, item_id))
            else:
                self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                                (item_id, json.dumps(value, sort_keys=True), round, annotator, time.time()))

    def labels(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT item_id, value FROM labels ORDER BY item_id").fetchall()
        return {item: json.loads(value) for item, value in rows}

    def label_rows(self) -> list[tuple[str, Any, int, str]]:
        rows = self.db.execute("SELECT item_id, value, round, annotator FROM labels ORDER BY round, created").fetchall()
        return [(i, json.loads(v), r, a) for i, v, r, a in rows]

    def count_labels(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    # -------------------------------------------------------------------------------------------- batches
    def open_batch(self, round: int, items: list[str], scores: list[float] | None) -> None:
        with self._write():
            self.db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                            (round, json.dumps(items), json.dumps(scores) if scores is not None else None,
                             time.time()))

    def batch(self, round: int) -> tuple[list[str], list[float] | None] | None:
        row = self.db.execute("SELECT items, scores FROM batches WHERE round = ?", (round,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), (json.loads(row[1]) if row[1] is not None else None)

    def skip(self, round: int, item_id: str) -> None:
        with self._write():
            self._refuse_frozen(item_id, round, "a skip")
            self.db.execute("INSERT OR IGNORE INTO skips VALUES (?, ?)", (round, item_id))

    def skipped(self, round: int) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT item_id FROM skips WHERE round = ?", (round,))}

    def unskip(self, round: int, item_id: str) -> None:
        with self._write():
            self._refuse_frozen(item_id, round, "withdrawing its skip")
            self.db.execute("DELETE FROM skips WHERE round = ? AND item_id = ?", (round, item_id))

    def labeled_in(self, item_ids: Iterable[str]) -> set[str]:
        """Which of ``item_ids`` have a label (one query, however many ids: SQLite reads them as a JSON array)."""
        q = "SELECT item_id FROM labels WHERE item_id IN (SELECT value FROM json_each(?))"
        return {r[0] for r in self.db.execute(q, (json.dumps(list(item_ids)),))}

    # -------------------------------------------------------------------------------------------- metrics
    def add_metrics(self, round: int, record: dict[str, Any]) -> None:
        with self._write():
            self.db.execute("INSERT OR REPLACE INTO metrics VALUES (?, ?)",
                            (round, json.dumps(record, allow_nan=False)))

    def metrics(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT record FROM metrics ORDER BY round")]

    def has_metrics(self, round: int) -> bool:
        return self.db.execute("SELECT 1 FROM metrics WHERE round = ?", (round,)).fetchone() is not None

    # -------------------------------------------------------------------------------------------- state
    def set_state(self, key: str, value: Any) -> None:
        with self._write():
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
