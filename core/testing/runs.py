"""Reading a run folder's label store from a test, for kill -9 / resume checks of a plugin's runs."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import yaml


def snapshot(run_dir: Path) -> tuple[dict[str, Any], dict[int, Any], list[dict[str, Any]]]:
    """(labels, batches, metrics rows without their ``*_seconds`` timings) as the run's store holds them."""
    db = sqlite3.connect(Path(run_dir) / "labels.sqlite")
    try:
        labels = dict(db.execute("SELECT item_id, value FROM labels"))
        batches = dict(db.execute("SELECT round, items FROM batches"))
        metrics = [yaml.safe_load(r[0]) for r in db.execute("SELECT record FROM metrics ORDER BY round")]
    finally:
        db.close()
    return labels, batches, [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in metrics]


def metrics_rows(run_dir: Path) -> int:
    """How many metrics rows the run has committed (0 before its store or its metrics table exists)."""
    if not (Path(run_dir) / "labels.sqlite").exists():
        return 0
    db = sqlite3.connect(Path(run_dir) / "labels.sqlite")
    try:
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'metrics'").fetchone()[0] == 0:
            return 0
        return db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    finally:
        db.close()
