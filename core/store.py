"""The durable label store: one SQLite file per run (``labels.sqlite``).

Every answer is committed in its own transaction (WAL journal, ``synchronous=FULL``) before the loop asks the
oracle for the next one, so killing the process at any moment loses no label an oracle gave. An item can carry at
most one label (primary key); giving a different label to an already labelled item is refused, the same label
again is a no-op (importing a file twice changes nothing).

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
from pathlib import Path
from typing import Any, Iterable

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


class LabelStore:
    """Transactional label store over one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            # Python's default transaction handling: each `with self.db:` block below is one transaction.
            self.db = sqlite3.connect(str(self.path), timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise UserError(f"{self.path}: not a usable label store: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    # -------------------------------------------------------------------------------------------- labels
    def add_label(self, item_id: str, value: Any, round: int, annotator: str) -> bool:
        """Commit one label. Returns False if the item already had exactly this label (nothing changes)."""
        encoded = json.dumps(value, sort_keys=True)
        with self.db:  # one transaction per label: durable before returning
            row = self.db.execute("SELECT value FROM labels WHERE item_id = ?", (item_id,)).fetchone()
            if row is not None:
                if row[0] == encoded:
                    return False
                raise LabelConflict(f"item {item_id!r} already has label {row[0]}; refusing {encoded}")
            self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                            (item_id, encoded, round, annotator, time.time()))
            self.db.execute("DELETE FROM skips WHERE item_id = ?", (item_id,))
        return True

    def remove_label(self, item_id: str, round: int) -> bool:
        """Undo: withdraw a label given in ``round`` (labels of earlier rounds were already trained on)."""
        with self.db:
            cur = self.db.execute("DELETE FROM labels WHERE item_id = ? AND round = ?", (item_id, round))
        return cur.rowcount > 0

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
        with self.db:
            self.db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                            (round, json.dumps(items), json.dumps(scores) if scores is not None else None,
                             time.time()))

    def batch(self, round: int) -> tuple[list[str], list[float] | None] | None:
        row = self.db.execute("SELECT items, scores FROM batches WHERE round = ?", (round,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), (json.loads(row[1]) if row[1] is not None else None)

    def skip(self, round: int, item_id: str) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO skips VALUES (?, ?)", (round, item_id))

    def skipped(self, round: int) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT item_id FROM skips WHERE round = ?", (round,))}

    def unskip(self, round: int, item_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM skips WHERE round = ? AND item_id = ?", (round, item_id))

    def labeled_in(self, item_ids: Iterable[str]) -> set[str]:
        ids = list(item_ids)
        out: set[str] = set()
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            q = f"SELECT item_id FROM labels WHERE item_id IN ({','.join('?' * len(part))})"
            out.update(r[0] for r in self.db.execute(q, part))
        return out

    # -------------------------------------------------------------------------------------------- metrics
    def add_metrics(self, round: int, record: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO metrics VALUES (?, ?)", (round, json.dumps(record)))

    def metrics(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT record FROM metrics ORDER BY round")]

    def has_metrics(self, round: int) -> bool:
        return self.db.execute("SELECT 1 FROM metrics WHERE round = ?", (round,)).fetchone() is not None

    # -------------------------------------------------------------------------------------------- state
    def set_state(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
