"""The one loop that drives any task, in a run folder (:mod:`activelab.run`).

Round ``r`` (0 .. loop.rounds):
  1. select batch r: r = 0 is uninformed (``loop.initial`` items), or chosen by the recipe's ``cold_start``
     scorer; later rounds score the candidates with the model of round r-1 and take ``loop.batch``. The batch
     is committed before the oracle is asked.
  2. ask the oracle for every item of the batch still outstanding; each answer is committed as it comes.
  3. fit model r on all labels (from checkpoint r-1), save checkpoint r atomically.
  4. evaluate, and judge the recipe's ``stopping`` criteria on model r (their values join the metrics row);
     commit the round's metrics row, rewrite metrics.jsonl and the learning curve. A criterion whose params say
     ``end_loop: true`` ends the run after the round where it is met (status done; the row's ``stopped_by``).

Every step is idempotent given what the store and the checkpoints hold, so ``resume`` after a kill at any moment
redoes at most the step that was interrupted. All randomness is derived from (seed, round, purpose), and a fit
starts from a checkpoint that round-trips exactly, so a resumed run queries the same items as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, hooks
from .device import pick_device
from .errors import UserError
from .pool import Outcome, make_pool
from .protocol import Context, Env, Label, Quit, RunStatus, iter_blocks
from .report import plot_learning_curve
from .run import CURVE_FILE, METRICS_FILE, RECIPE_FILE, STORE_FILE, atomic_write, discard_new_run, lock, open_run
from .store import LabelStore


class Runner:
    """Drives one run folder from wherever it stands to the end (or to a pause).

    ``fresh=True`` (a folder :func:`create_run` just made): if the components cannot be built (bad data), the
    folder is removed again, under the run's lock and only while it holds no label."""

    def __init__(self, run_dir: str | Path, progress: bool = True, oracle_override: Any = None, echo: bool = False,
                 fresh: bool = False):
        self.run_dir = Path(run_dir)
        self.resolved = open_run(self.run_dir)
        self._lock = lock(self.run_dir)
        self.store: LabelStore | None = None
        try:
            self._build(progress, oracle_override, echo)
        except BaseException:
            if fresh:
                discard_new_run(self.run_dir, self.store)
            self.close()     # closing a store twice is harmless
            raise

    def _build(self, progress: bool, oracle_override: Any, echo: bool) -> None:
        self.recipe = self.resolved.recipe
        self.progress = progress   # progress bars
        self.echo = echo           # one summary line per round on stderr
        self.store = LabelStore(self.run_dir / STORE_FILE, create=False)
        self.env = Env(seed=self.recipe.seed, run_dir=self.run_dir, device=pick_device(), progress=progress)
        build = lambda kind: self.resolved.classes[kind](self.resolved.configs[kind], self.env)  # noqa: E731
        self.task = build("task")
        if distributed.world()[1] > 1:   # several processes: the others follow this task (activelab.distributed)
            self.task = distributed.Leader(self.task, self.recipe.loop.train_on_all)
        self._check_data()
        self.scorer = build("scorer")
        self.cold_start = build("cold_start") if "cold_start" in self.resolved.classes else None
        self.selector = build("selector")
        self.oracle = oracle_override if oracle_override is not None else build("oracle")
        self.stopping = [cls(config, self.env) for cls, config in self.resolved.stopping]
        self.pool = make_pool(self.task, self.store)
        self.loaded_round = -1  # the task as constructed is the untrained model "of round -1"
        self._score_seconds: float | None = None

    def _check_data(self) -> None:
        """The run is pinned to its data: a fingerprint of the pool (the task's ``data_fingerprint()`` where it
        has one, else its item ids) is stored when the run first opens and compared on every later open."""
        hook = hooks.data_fingerprint(self.task)
        digest = hashlib.sha256()           # streamed: a large pool's ids are never joined in memory
        for item in self.task.pool_ids() if hook is None else ():
            digest.update(str(item).encode() + b"\0")
        fingerprint = digest.hexdigest() if hook is None else str(hook())
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

    def _scored(self, chunks: Iterator[Any], total: int) -> Iterator[Any]:
        """The scorer's chunks, passed on untouched (a selector may fuse their measure), with a progress bar."""
        bar = tqdm(total=total, desc="scoring", unit="item", disable=not self.progress, leave=False)
        try:
            for chunk in chunks:
                bar.update(len(chunk))
                yield chunk
        finally:
            bar.close()
            close = getattr(chunks, "close", None)
            if close is not None:   # a selector that stops early (a stream) stops the scorer's predictions too
                close()

    # ------------------------------------------------------------------------------------------ steps
    def select(self, round: int) -> list[str]:
        batch = self.store.batch(round)
        if batch is not None:
            return batch[0]
        ctx = self.ctx(round)
        candidates = self.selector.candidates(self.pool.candidates(), ctx)
        if round == 0 and self.cold_start is None:
            chosen = self.selector.select(candidates, None, ctx.budget, ctx)
            chosen_scores = None
        else:   # round 0 with a cold-start scorer: scored with the untrained model (its label-free outputs)
            if round > 0:
                self._ensure_model(round - 1)
            started = time.perf_counter()
            raw = (self.scorer if round > 0 else self.cold_start).score(self.task, candidates, ctx)
            chosen = self.selector.select(candidates, self._scored(iter_blocks(raw), len(candidates)), ctx.budget, ctx)
            self._score_seconds = time.perf_counter() - started
            values = getattr(chosen, "scores", None)   # a Picks carries the chosen items' scores, nothing more
            chosen_scores = [_finite(float(v)) for v in values] if values is not None and len(values) == len(chosen) \
                else [None] * len(chosen)
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
        # an oracle that talks to a person on this terminal: the run is "awaiting labels" (a simulation or a
        # generator is just "labelling"), and no progress bar is drawn over its questions
        asks_people = hooks.interactive(self.oracle)
        if outstanding:
            self.store.set_state("status", RunStatus.AWAITING_LABELS if asks_people else RunStatus.LABELLING)
            self.model_for_labelling(round)
        while outstanding:
            progressed = False
            with tqdm(total=len(outstanding), desc=f"labelling round {round}", unit="item",
                      disable=not self.progress or asks_people, leave=False) as bar:
                for answer in self.oracle.label(self.task, outstanding, self.ctx(round)):
                    if isinstance(answer, Quit):
                        self.store.set_state("status", answer.status or RunStatus.PAUSED)
                        return False
                    outcome = self.pool.apply(answer, round, batch)
                    progressed = progressed or outcome in (Outcome.LABELLED, Outcome.SKIPPED, Outcome.SAME)
                    if isinstance(answer, Label) and outcome == Outcome.LABELLED:
                        bar.update(1)
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
            buffer = io.BytesIO()
            torch.save({"task": self.task.state_dict(), "fit_stats": stats, "round": round}, buffer)
            atomic_write(ckpt, buffer.getvalue())
            self.loaded_round = round
        metrics = dict(self.task.evaluate())
        queried = self.store.batch(round)[0]
        record: dict[str, Any] = {
            "round": round,
            "n_labeled": self.pool.n_labeled(),
            "n_queried": len(set(queried) & set(labels)) if hooks.query_type(self.task) == "pool" else len(queried),
            **{k: _plain(v) for k, v in {**stats, **metrics}.items()},
        }
        cost = hooks.label_cost(self.task)
        if cost is not None and labels:   # what the labels so far cost, in the task's cost_unit
            record["cost"] = float(np.sum(cost(list(labels), list(labels.values()))))
        if fit_seconds is not None:
            record["fit_seconds"] = float(f"{fit_seconds:.3g}")
        if self._score_seconds is not None:
            record["score_seconds"] = float(f"{self._score_seconds:.3g}")
            self._score_seconds = None
        record.update(self._judge(round) if self.stopping else {})
        record = {k: _finite(v) for k, v in record.items()}
        self.store.add_metrics(round, record)
        self.write_reports()
        self._prune(round)
        return record

    def _judge(self, round: int) -> dict[str, Any]:
        """The stopping criteria on model ``round``: their values, the names of those met (``stop_met``) and, when
        one that ends the loop is met, ``stopped_by``. Their states of rounds r-1 and r are kept under one key,
        written before the metrics row: a run killed in between judges round r again from r-1's states."""
        before = self.store.get_state("stopping", {}).get(str(round - 1), [None] * len(self.stopping))
        ctx, unlabelled, specs = self.ctx(round), self.pool.candidates(), self.recipe.stopping
        verdicts = [c.update(self.task, unlabelled, state, ctx) for c, state in zip(self.stopping, before)]
        self.store.set_state("stopping", {str(round - 1): before, str(round): [v.state for v in verdicts]})
        ends = [(s.name, v.reason) for s, c, v in zip(specs, self.stopping, verdicts) if v.met and c.end_loop]
        for name, reason in ends:
            tqdm.write(f"activelab: round {round}: stopping criterion '{name}' is met ({reason or 'see the metrics'})"
                       "; the loop ends here", file=sys.stderr)
        record = {key: _plain(value) for v in verdicts for key, value in v.values.items()}
        record["stop_met"] = [s.name for s, v in zip(specs, verdicts) if v.met]
        return {**record, "stopped_by": ", ".join(name for name, _ in ends)} if ends else record

    def write_reports(self) -> None:
        rows = self.store.metrics()
        atomic_write(self.run_dir / METRICS_FILE,
                     "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode())
        plot_learning_curve(rows, self.task.primary_metric, self.run_dir / CURVE_FILE, title=self.recipe.name)

    # ------------------------------------------------------------------------------------------ driver
    def run(self) -> str:
        """Run to the end; returns "done" or "paused"."""
        self.store.set_state("status", RunStatus.RUNNING)
        # where a stopping criterion ended the loop, if one did
        last = next((row["round"] for row in self.store.metrics() if row.get("stopped_by")), self.recipe.loop.rounds)
        for r in range(0, last + 1):
            if self.store.has_metrics(r):
                continue
            self.store.set_state("round", r)
            batch = self.select(r)
            # a round whose fit already began (killed while training) is not asked again: its labels are final
            if self.store.frozen_round() < r and not self.ask(r, batch):
                return RunStatus.PAUSED
            self.store.set_state("status", RunStatus.TRAINING)
            record = self.fit_and_evaluate(r, batch)
            self.store.set_state("status", RunStatus.RUNNING)
            if self.echo:
                shown = {k: record[k] for k in ("n_labeled", self.task.primary_metric) if k in record}
                tqdm.write(f"round {r}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in shown.items()))
            if record.get("stopped_by"):
                last = r
                break
        # Reports and pruning again: a kill between the last metrics commit and these leaves them stale.
        self.write_reports()
        self._prune(last)
        self.store.set_state("status", RunStatus.DONE)
        return RunStatus.DONE

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self._lock.close()


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
