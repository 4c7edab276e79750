"""The one loop that drives any task, and the run folder it works in.

A run folder holds ``recipe.yaml`` (the resolved recipe), ``labels.sqlite`` (the label store, which also records
each round's query and metrics), ``metrics.jsonl``, ``checkpoints/round_<r>.pt`` and ``learning_curve.png``.

Round ``r`` (0 .. loop.rounds):
  1. select batch r: r = 0 is uninformed (``loop.initial`` items); later rounds score the candidates with the
     model of round r-1 and take ``loop.batch``. The batch is committed before the oracle is asked.
  2. ask the oracle for every item of the batch still outstanding; each answer is committed as it comes.
  3. fit model r on all labels (from checkpoint r-1), save checkpoint r atomically.
  4. evaluate; commit the round's metrics row, rewrite metrics.jsonl and the learning curve.

Every step is idempotent given what the store and the checkpoints hold, so ``resume`` after a kill at any moment
redoes at most the step that was interrupted. All randomness is derived from (seed, round, purpose), and a fit
starts from a checkpoint that round-trips exactly, so a resumed run queries the same items as an uninterrupted one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from pydantic import BaseModel
from tqdm.auto import tqdm

from . import recipe as recipes
from .device import pick_device
from .errors import UserError
from .pool import make_pool
from .protocol import Context, Env, Label, Quit, iter_chunks
from .report import plot_learning_curve
from .store import LabelStore

RECIPE_FILE = "recipe.yaml"
STORE_FILE = "labels.sqlite"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"


LOCK_FILE = ".lock"
# statuses that mean "a process is working on it"; with no process holding the lock they read "interrupted"
ACTIVE = ("running", "training", "labelling", "scoring")
INTERRUPTED = "interrupted"


def _atomic_write(path: Path, data: bytes) -> None:
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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
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
        raise UserError(f"{run_dir}: already holds a run; continue it with `activelab resume {run_dir}` or pick another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: cannot make the run folder: a file of that name exists")
    parent = Path(os.path.abspath(run_dir)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".new", dir=parent))
    except OSError as exc:
        raise UserError(f"--out {run_dir}: cannot make the run folder: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / "checkpoints").mkdir()
        _atomic_write(tmp / RECIPE_FILE, yaml.safe_dump(resolved_recipe(resolved), sort_keys=False).encode())
        store = LabelStore(tmp / STORE_FILE)
        try:
            store.set_state("status", "created")
        finally:
            store.close()
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
                    raise UserError(f"{run_dir}: already exists and is not empty (another run, or other files); "
                                    f"pick another --out") from None
                raise UserError(f"--out {run_dir}: cannot make the run folder: {exc.strerror or exc}") from None
    except OSError as exc:
        raise UserError(f"--out {run_dir}: cannot make the run folder: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder only (gone after a successful rename)
    return run_dir


def _discard_new_run(run_dir: Path, store: LabelStore | None) -> None:
    """Remove a run folder this process just made, whose components failed to build (bad data found before
    anything was asked). Called only while holding the run's lock, and only if the store holds no label."""
    if store is not None:
        try:
            if store.count_labels():
                return
        finally:
            store.close()
    for name in (RECIPE_FILE, STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / "checkpoints", run_dir):
        try:
            folder.rmdir()
        except OSError:
            pass


def open_run(run_dir: str | Path) -> recipes.Resolved:
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {RECIPE_FILE})")
    return recipes.load(run_dir / RECIPE_FILE)


class Runner:
    """Drives one run folder from wherever it stands to the end (or to a pause).

    ``fresh=True`` (a folder :func:`create_run` just made): if the components cannot be built (bad data), the
    folder is removed again, under the run's lock and only while it holds no label."""

    def __init__(self, run_dir: str | Path, progress: bool = True, oracle_override: Any = None, echo: bool = False,
                 fresh: bool = False):
        self.run_dir = Path(run_dir)
        self.resolved = open_run(self.run_dir)
        self._lock = _lock(self.run_dir)
        self.store: LabelStore | None = None
        try:
            self._build(progress, oracle_override, echo)
        except BaseException:
            if fresh:
                _discard_new_run(self.run_dir, self.store)
            elif self.store is not None:
                self.store.close()
            self._lock.close()
            raise

    def _build(self, progress: bool, oracle_override: Any, echo: bool) -> None:
        self.recipe = self.resolved.recipe
        self.progress = progress   # progress bars
        self.echo = echo           # one summary line per round on stderr
        self.store = LabelStore(self.run_dir / STORE_FILE, create=False)
        self.env = Env(seed=self.recipe.seed, run_dir=self.run_dir, device=pick_device(), progress=progress)
        build = lambda kind: self.resolved.classes[kind](self.resolved.configs[kind], self.env)  # noqa: E731
        self.task = build("task")
        self._check_data()
        self.scorer = build("scorer")
        self.selector = build("selector")
        self.oracle = oracle_override if oracle_override is not None else build("oracle")
        self.pool = make_pool(self.task, self.store)
        self.loaded_round = -1  # the task as constructed is the untrained model "of round -1"

    def _check_data(self) -> None:
        """The run is pinned to its data: a fingerprint of the pool (the task's ``data_fingerprint()`` where it
        has one, else its item ids) is stored when the run first opens and compared on every later open."""
        hook = getattr(self.task, "data_fingerprint", None)
        if callable(hook):
            fingerprint = str(hook())
        else:
            digest = hashlib.sha256()
            for item in self.task.pool_ids():
                digest.update(str(item).encode() + b"\0")
            fingerprint = digest.hexdigest()
        known = self.store.get_state("data_fingerprint")
        if known is None:
            self.store.set_state("data_fingerprint", fingerprint)
        elif known != fingerprint:
            raise UserError(f"{self.run_dir}: the task's data differ from the data this run was started on "
                            f"(fingerprint {fingerprint[:12]} != {str(known)[:12]}); restore the original data "
                            f"(see {self.run_dir / RECIPE_FILE}) or start a new run")

    # ------------------------------------------------------------------------------------------ helpers
    def ctx(self, round: int) -> Context:
        loop = self.recipe.loop
        return Context(round=round, seed=self.recipe.seed, budget=loop.initial if round == 0 else loop.batch,
                       labels=self.pool.labels(), run_dir=self.run_dir, progress=self.progress)

    def checkpoint(self, round: int) -> Path:
        return self.run_dir / "checkpoints" / f"round_{round}.pt"

    def _ensure_model(self, round: int) -> dict[str, Any]:
        """Put the model of ``round`` in memory (-1 = untrained); returns the checkpoint read, if any.

        Checkpoints are our own files, written by this loop: loading them with ``weights_only=False`` is safe."""
        if self.loaded_round == round:
            return {}
        if round < 0:
            raise RuntimeError("cannot go back to the untrained model once a checkpoint is loaded")
        path = self.checkpoint(round)
        if not path.exists():
            raise UserError(f"{path}: checkpoint missing; the run folder was changed by hand")
        try:
            state = torch.load(path, map_location=self.env.device, weights_only=False)
            task_state = state["task"]
        except Exception as exc:  # a truncated or overwritten file: pickle, zip and key errors alike
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"{path}: checkpoint unreadable (truncated or corrupt: {detail})") from None
        self.task.load_state_dict(task_state)
        self.loaded_round = round
        return state

    def _prune(self, round: int) -> None:
        keep = self.recipe.loop.keep_checkpoints
        for old in range(0, round - keep + 1):
            self.checkpoint(old).unlink(missing_ok=True)

    def _scored(self, chunks: Iterator[np.ndarray], total: int, sink: list[np.ndarray]) -> Iterator[np.ndarray]:
        bar = tqdm(total=total, desc="scoring", unit="item", disable=not self.progress, leave=False)
        for chunk in chunks:
            sink.append(chunk)
            bar.update(len(chunk))
            yield chunk
        bar.close()

    # ------------------------------------------------------------------------------------------ steps
    def select(self, round: int) -> list[str]:
        batch = self.store.batch(round)
        if batch is not None:
            return batch[0]
        ctx = self.ctx(round)
        candidates = self.selector.candidates(self.pool.candidates(), ctx)
        if round == 0:
            chosen = self.selector.select(candidates, None, ctx.budget, ctx)
            chosen_scores = None
        else:
            self._ensure_model(round - 1)
            seen: list[np.ndarray] = []
            started = time.perf_counter()
            raw = self.scorer.score(self.task, candidates, ctx)
            chosen = self.selector.select(candidates, self._scored(iter_chunks(raw), len(candidates), seen),
                                          ctx.budget, ctx)
            self._score_seconds = time.perf_counter() - started
            scores = np.concatenate(seen) if seen else np.zeros(0)
            index = {item: i for i, item in enumerate(candidates[: len(scores)])}
            chosen_scores = [_finite(float(scores[index[c]])) if c in index else None for c in chosen]
        self.store.open_batch(round, list(chosen), chosen_scores)
        return list(chosen)

    def model_for_labelling(self, round: int) -> None:
        """Put the model that chose round ``round``'s batch (round - 1's) in memory, for the suggestions human
        tools show; round 0 has none. (On a resumed run ``select`` returns the stored batch without loading it.)"""
        if round > 0:
            self._ensure_model(round - 1)

    def ask(self, round: int, batch: list[str]) -> bool:
        """Ask the oracle until nothing is outstanding (an undone item is asked again) or it stops answering;
        False if it quit (the run pauses, with the Quit's status: "paused", "awaiting labels", ...)."""
        outstanding = self.pool.outstanding(round, batch)
        if outstanding:
            # "awaiting labels" only where a person is asked; a simulation or a generator is just "labelling"
            asks_people = getattr(self.oracle, "interactive", False)
            self.store.set_state("status", "awaiting labels" if asks_people else "labelling")
            self.model_for_labelling(round)
        # an oracle that talks to a person on this terminal gets no progress bar drawn over its questions
        quiet = not self.progress or getattr(self.oracle, "interactive", False)
        while outstanding:
            progressed = False
            bar = tqdm(total=len(outstanding), desc=f"labelling round {round}", unit="item",
                       disable=quiet, leave=False)
            for answer in self.oracle.label(self.task, outstanding, self.ctx(round)):
                if isinstance(answer, Quit):
                    bar.close()
                    self.store.set_state("status", answer.status or "paused")
                    return False
                outcome = self.pool.apply(answer, round, batch)
                progressed = progressed or outcome in ("labelled", "skipped", "same")
                if isinstance(answer, Label) and outcome == "labelled":
                    bar.update(1)
            bar.close()
            left = self.pool.outstanding(round, batch)
            if not progressed or left == outstanding:
                break  # the oracle answered only part of the batch: go on with what it gave
            outstanding = left
        return True

    def fit_and_evaluate(self, round: int, batch: list[str]) -> dict[str, Any]:
        labels = self.pool.labels()
        if not labels:
            raise UserError(f"round {round}: no labels to train on (the oracle answered none of {len(batch)} items)")
        ckpt = self.checkpoint(round)
        fit_seconds = None
        self.store.freeze(round)  # from here on the labels of this round never change (the model learns them)
        if ckpt.exists():  # killed after the checkpoint was written but before the metrics were
            stats = self._ensure_model(round)["fit_stats"]
        else:
            if round > 0:
                self._ensure_model(round - 1)
            started = time.perf_counter()
            stats = dict(self.task.fit(labels, self.ctx(round)))
            fit_seconds = time.perf_counter() - started
            buffer = _torch_bytes({"task": self.task.state_dict(), "fit_stats": stats, "round": round})
            _atomic_write(ckpt, buffer)
            self.loaded_round = round
        metrics = dict(self.task.evaluate())
        queried = self.store.batch(round)[0]
        record: dict[str, Any] = {
            "round": round,
            "n_labeled": self.pool.n_labeled(),
            "n_queried": len(set(queried) & set(labels)) if self.task.query_type == "pool" else len(queried),
            **{k: _plain(v) for k, v in stats.items()},
            **{k: _plain(v) for k, v in metrics.items()},
        }
        if fit_seconds is not None:
            record["fit_seconds"] = round_to(fit_seconds)
        if getattr(self, "_score_seconds", None) is not None:
            record["score_seconds"] = round_to(self._score_seconds)
            self._score_seconds = None
        record = {k: _finite(v) for k, v in record.items()}
        self.store.add_metrics(round, record)
        self.write_reports()
        self._prune(round)
        return record

    def write_reports(self) -> None:
        rows = self.store.metrics()
        _atomic_write(self.run_dir / METRICS_FILE,
                      "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())
        plot_learning_curve(rows, self.task.primary_metric, self.run_dir / CURVE_FILE, title=self.recipe.name)

    # ------------------------------------------------------------------------------------------ driver
    def run(self) -> str:
        """Run to the end; returns "done" or "paused"."""
        self.store.set_state("status", "running")
        for r in range(0, self.recipe.loop.rounds + 1):
            if self.store.has_metrics(r):
                continue
            self.store.set_state("round", r)
            batch = self.select(r)
            # a round whose fit already began (killed while training) is not asked again: its labels are final
            if self.store.frozen_round() < r and not self.ask(r, batch):
                return "paused"
            self.store.set_state("status", "training")
            record = self.fit_and_evaluate(r, batch)
            self.store.set_state("status", "running")
            if self.echo:
                shown = {k: record[k] for k in ("n_labeled", self.task.primary_metric) if k in record}
                tqdm.write(f"round {r}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        # Reports and pruning again: a kill between the last metrics commit and these leaves them stale.
        self.write_reports()
        self._prune(self.recipe.loop.rounds)
        self.store.set_state("status", "done")
        return "done"

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self._lock.close()


def _lock(run_dir: Path):
    """One process per run folder: a second `run`/`resume` on the same folder is refused, not interleaved."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"{run_dir / LOCK_FILE}: cannot open the run's lock: {exc.strerror or exc}") from None
    fh = os.fdopen(fd, "r+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UserError(f"{run_dir}: another activelab process is working on this run") from None
    return fh


def _held(run_dir: Path) -> bool:
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


def _torch_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _finite(v: Any) -> Any:
    """Metrics are strict JSON: a non-finite number (NaN, inf) is stored as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def round_to(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def status(run_dir: str | Path) -> dict[str, Any]:
    """Where a run stands: round, labelled count, batch outstanding."""
    run_dir = Path(run_dir)
    if not (run_dir / RECIPE_FILE).is_file() and not (run_dir / STORE_FILE).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {STORE_FILE})")
    store = LabelStore(run_dir / STORE_FILE, create=False)
    try:
        rnd = store.get_state("round", 0)
        batch = store.batch(rnd)
        outstanding = 0
        if batch is not None:
            # an item is answered when labelled, skipped, or (synthesis pools) made as "<generator>@<round>"
            made = store.labeled_in([*batch[0], *(f"{i}@{rnd}" for i in batch[0])])
            done = made | {m.rsplit("@", 1)[0] for m in made if m.endswith(f"@{rnd}")} | store.skipped(rnd)
            outstanding = sum(1 for i in batch[0] if i not in done)
        rows = store.metrics()
        state = store.get_state("status", "created")
        if state in ACTIVE and not _held(run_dir):
            state = INTERRUPTED  # killed, or stopped by an error: nobody is working on it
        return {"status": state, "round": rnd, "labels": store.count_labels(),
                "batch_size": len(batch[0]) if batch else 0, "outstanding": outstanding,
                "last_metrics": rows[-1] if rows else None}
    finally:
        store.close()
