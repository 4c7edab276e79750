"""The run folder: what it holds, how it is made, locked and written, and where a run stands.

A run folder holds ``recipe.yaml`` (the resolved recipe), ``labels.sqlite`` (the label store, which also records
each round's query and metrics), ``metrics.jsonl``, ``checkpoints/round_<r>.pt`` and ``learning_curve.png``.
One process works on it at a time (``.lock``); every file is written whole or not at all.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import recipe as recipes
from .errors import UserError
from .protocol import RunStatus
from .store import LabelStore

RECIPE_FILE = "recipe.yaml"
STORE_FILE = "labels.sqlite"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"
LOCK_FILE = ".lock"
# statuses that mean "a process is working on it"; with no process holding the lock they read "interrupted"
ACTIVE = (RunStatus.RUNNING, RunStatus.TRAINING, RunStatus.LABELLING)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all; an environment error (disk full, read-only folder) is a one-line
    user error and leaves no temporary file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None


def resolved_recipe(resolved: recipes.Resolved) -> dict[str, Any]:
    """The recipe as a run folder stores it: validated params with every default filled in, so a later change
    of a plugin's default does not change what a resumed run does, and every filesystem path (a config field
    whose value is a ``pathlib.Path``) made absolute, so ``resume`` from another directory reads the same data."""
    out = resolved.recipe.model_dump(mode="json")
    for kind, config in resolved.configs.items():
        if hasattr(config, "model_dump"):
            out[kind]["params"] = _pin_paths(config, config.model_dump(mode="json"))
    return out


def _pin_paths(value: Any, dumped: Any) -> Any:
    """``dumped`` (the JSON form of ``value``) with every ``Path`` in ``value`` replaced by its absolute form."""
    if isinstance(value, Path):
        return os.path.abspath(os.path.expanduser(value))
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        return {k: _pin_paths(getattr(value, k), v) if k in type(value).model_fields else v
                for k, v in dumped.items()}
    if isinstance(value, (list, tuple)) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_pin_paths(v, d) for v, d in zip(value, dumped)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        by_key = {str(k): v for k, v in value.items()}
        return {k: _pin_paths(by_key[k], v) if k in by_key else v for k, v in dumped.items()}
    return dumped


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def create_run(resolved: recipes.Resolved, out: str | Path | None) -> Path:
    """Make a new run folder with the resolved recipe; refuses to overwrite an existing run.

    Creation is atomic: the folder is built under a temporary name beside the target and renamed into place, and
    the rename fails when the target exists and is not empty. Of two processes creating the same folder, exactly
    one wins; the other is refused and removes nothing but its own temporary folder."""
    name = resolved.recipe.name
    stamp = time.strftime('%Y%m%d-%H%M%S')
    run_dir = Path(out) if out else Path("runs") / f"{name}-{stamp}"
    if (run_dir / RECIPE_FILE).exists():
        raise UserError(f"{run_dir}: already holds a run; continue it with `activelab resume {run_dir}` "
                        f"or pick another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: cannot make the run folder: a file of that name exists")
    parent = Path(os.path.abspath(run_dir)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # our own temporary folder, removed on the way out (already gone after a successful rename)
        with tempfile.TemporaryDirectory(prefix=f".{run_dir.name}.", suffix=".new", dir=parent,
                                         ignore_cleanup_errors=True) as made:
            tmp = Path(made)
            os.chmod(tmp, 0o777 & ~_umask())
            (tmp / "checkpoints").mkdir()
            atomic_write(tmp / RECIPE_FILE, yaml.safe_dump(resolved_recipe(resolved), sort_keys=False).encode())
            with contextlib.closing(LabelStore(tmp / STORE_FILE)) as store:
                store.set_state("status", RunStatus.CREATED)
            for attempt in range(1, 100):
                try:
                    os.rename(tmp, run_dir)
                    break
                except OSError as exc:
                    taken = exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
                    if taken and out is None:  # the default name is taken (same recipe, same second): number it
                        run_dir = Path("runs") / f"{name}-{stamp}-{attempt + 1}"
                        continue
                    if taken:
                        raise UserError(f"{run_dir}: already exists and is not empty (another run, or other "
                                        f"files); pick another --out") from None
                    raise
    except OSError as exc:
        raise UserError(f"--out {run_dir}: cannot make the run folder: {exc.strerror or exc}") from None
    return run_dir


def discard_new_run(run_dir: Path, store: LabelStore | None) -> None:
    """Remove a run folder this process just made, whose components failed to build (bad data found before
    anything was asked). Called only while holding the run's lock, and only if the store holds no label."""
    if store is not None:
        with contextlib.closing(store):
            if store.count_labels():
                return
    for name in (RECIPE_FILE, STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", run_dir):
        with contextlib.suppress(OSError):
            folder.rmdir()


def open_run(run_dir: str | Path) -> recipes.Resolved:
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    return recipes.load(run_dir / RECIPE_FILE)


def lock(run_dir: Path):
    """One process per run folder: a second `run`/`resume` on the same folder is refused, not interleaved."""
    import fcntl  # POSIX only: imported where it is used

    try:
        fh = open(run_dir / LOCK_FILE, "a+")    # made if missing, never truncated
    except OSError as exc:
        raise UserError(f"{run_dir / LOCK_FILE}: cannot open the run's lock: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UserError(f"{run_dir}: another activelab process is working on this run") from None
    return fh


def held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (the kernel drops a dead process's lock)."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return False


def status(run_dir: str | Path) -> dict[str, Any]:
    """Where a run stands: round, labelled count, batch outstanding; the worker processes of its last start on
    several (``[{"rank", "host", "pid"}]``, None on one)."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file() and not (run_dir / STORE_FILE).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {STORE_FILE})")
    with contextlib.closing(LabelStore(run_dir / STORE_FILE, create=False)) as store:
        rnd = store.get_state("round", 0)
        batch = store.batch(rnd)
        outstanding = 0
        if batch is not None:
            # an item is answered when labelled, skipped, or (synthesis pools) made as "<generator>@<round>"
            made = store.labeled_in([*batch[0], *(f"{i}@{rnd}" for i in batch[0])])
            done = made | {m.rsplit("@", 1)[0] for m in made if m.endswith(f"@{rnd}")} | store.skipped(rnd)
            outstanding = sum(1 for i in batch[0] if i not in done)
        rows = store.metrics()
        state = store.get_state("status", RunStatus.CREATED)
        if state in ACTIVE and not held(run_dir):
            state = RunStatus.INTERRUPTED  # killed, or stopped by an error: nobody is working on it
        return {"status": state, "round": rnd, "labels": store.count_labels(),
                "batch_size": len(batch[0]) if batch else 0, "outstanding": outstanding,
                "last_metrics": rows[-1] if rows else None, "workers": store.get_state("workers")}
