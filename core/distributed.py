"""One run on several processes (torch.distributed): rank 0 is the run, the other ranks share its forward passes.

Start: ``activelab run|resume|compare ... --nproc N`` launches N local workers with torch's elastic launcher
(:func:`launch`; gloo on CPU, nccl on GPU). On several machines the same code runs under ``torchrun`` (every
worker runs ``activelab run`` or ``resume`` with torchrun's environment; the run folder must be on a file system
all machines see). Who does what:

- **Rank 0** runs the loop exactly as one process does: it alone owns the run folder, the label store, the oracle,
  the checkpoints and the reports. Its task is wrapped in a :class:`Leader`, which tells the other ranks what to do.
- **Every other rank** builds the same task from the run's recipe (after rank 0 built its own, so caches rank 0
  writes are read, not written twice) and follows (:func:`follow`): it never opens the label store.
- **Queries** (``task.predict``, whoever calls it: scorers, cold start, stopping criteria): the items are cut
  into the task's own chunks (``predict_batch_size`` items, :mod:`activelab.hooks`); chunk k is computed by rank
  k mod N and the chunks are gathered on rank 0 in order. Rank 0's scorer and selector therefore see the chunks a
  single process would compute, in the same order, and the picks are a one-process run's picks for EVERY scorer and
  selector (top-k, streams, k-center, BADGE, ...); MC dropout draws its masks per chunk index (``MC.chunk``), so
  they match too. Scores are computed on rank 0 from the gathered outputs (the forward passes are the cost);
  the gathered chunks stream through, so memory stays one chunk per rank, as in one process.
- **Training**: rank 0 fits and sends its ``state_dict`` to the others, which is exact because a task's state
  round-trips exactly (what resuming a run relies on): the picks are a one-process run's for any number of
  workers. With the recipe's ``loop.train_on_all`` and a task that can (hook ``fits_distributed``:
  DistributedDataParallel) every rank fits on its part of each minibatch instead (faster; the model then depends
  on the number of workers, through float sums, batch norm and dropout masks), and rank 0's state is still sent.
  Only inside such a fit (:func:`training_together`) may a task use collectives. ``fit_bootstrap`` runs on every
  rank (same labels, same seeds); ``load_state_dict`` (a resumed run's checkpoint) is sent from rank 0.

Faults: when a worker dies the launcher stops the others; rank 0 commits every answer as it comes, so nothing
labelled is lost, and ``activelab resume`` (with any ``--nproc``) finishes the run with the same picks.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import torch
import torch.distributed as dist

from . import hooks
from .errors import UserError
from .protocol import MC, Candidates

LAUNCHED = "ACTIVELAB_LAUNCHED"   # set for the workers :func:`launch` starts
CHUNK = 256                      # items per chunk for a task without predict_batch_size
TIMEOUT = timedelta(days=30)     # the other ranks wait while people label


_TOGETHER = [False]


def training_together() -> bool:
    """True inside a ``fit`` (or ``fit_bootstrap``) that every rank runs at once (``loop.train_on_all``): the only
    time a task may use collectives (DistributedDataParallel, :mod:`activelab.torchkit.ddp`) while it trains."""
    return _TOGETHER[0]


@contextmanager
def together(on: bool = True) -> Iterator[None]:
    """Mark the block as a fit every rank runs at once (or, ``on=False``, as one rank's alone)."""
    before, _TOGETHER[0] = _TOGETHER[0], on
    try:
        yield
    finally:
        _TOGETHER[0] = before


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gpus_enough(workers: int, who: str) -> None:
    """nccl needs a GPU of its own per worker on a machine: refuse more workers than GPUs in one line."""
    have = torch.cuda.device_count()
    if workers > have:
        raise UserError(f"{who}: {workers} workers on this machine need {workers} GPUs (one each, for nccl); it has "
                        f"{have}: use at most {have} per machine, or CUDA_VISIBLE_DEVICES= to run them on the CPU")


def join() -> int:
    """Join the process group the launcher (``--nproc`` or torchrun) describes in the environment when it has more
    than one process: nccl with one GPU per local rank where CUDA is available, else gloo. Returns the world
    size."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            gpus_enough(local + 1, f"local rank {local}")
            torch.cuda.set_device(local)
            backend = "nccl"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return world()[1]


def send(message: Any) -> Any:
    """Rank 0: broadcast ``message`` to every rank. Other ranks: receive it (``message`` is ignored)."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------ queries
GO, STOP, READY = ("go",), ("stop",), ("ready",)


def _blocks(n: int, size: int, ranks: int) -> Iterator[list[tuple[int, int, int]]]:
    """The chunks (index k, start, stop) of ``n`` items in rounds of one chunk per rank."""
    chunks = -(-n // size)
    for first in range(0, chunks, ranks):
        yield [(k, k * size, min(n, (k + 1) * size)) for k in range(first, min(chunks, first + ranks))]


def _host(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _part(task: Any, ids: Sequence[Any], want: set[str], mc: MC | None, block: list, rank: int) -> list[dict]:
    """This rank's chunk of ``block`` (nothing when the block has fewer chunks than ranks), as the task yields it."""
    if rank >= len(block):
        return []
    k, start, stop = block[rank]
    chunk_mc = None if mc is None else dataclasses.replace(mc, chunk=mc.chunk + k)
    return [{name: _host(v) for name, v in out.items()} for out in task.predict(ids[start:stop], want, chunk_mc)]


def _chunk_size(task: Any) -> int:
    return int(hooks.predict_batch_size(task) or CHUNK)


class Leader:
    """Rank 0's task: the task itself, whose queries are shared out and whose state the other ranks mirror.
    Everything not listed here is the task's own attribute, answered on rank 0 alone."""

    def __init__(self, task: Any, train_on_all: bool = False):
        self._task = task
        self._ranks = world()[1]
        self._together = train_on_all and hooks.fits_distributed(task)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._task, name)
        if name == "fit_bootstrap":       # committee members: trained on every rank (same labels and seeds)
            def fit_bootstrap(*args: Any, **kwargs: Any) -> Any:
                send(("call", name, args, kwargs, self._together))
                with together(self._together):
                    return value(*args, **kwargs)
            return fit_bootstrap
        return value

    def predict(self, ids: Sequence[Any], want: Collection[str], mc: MC | None = None) -> Iterator[dict[str, Any]]:
        self._task.predict(ids[:0], set(want), mc)      # the task's own checks of the call, raised here
        return self._predict(ids, set(want), mc)

    def _predict(self, ids: Sequence[Any], want: set[str], mc: MC | None) -> Iterator[dict[str, Any]]:
        own = self._task.pool_ids()
        wire = ("rows", ids.rows) if isinstance(ids, Candidates) and (ids.universe is own or list(
            ids.universe) == list(own)) else ("ids", list(ids))
        send(("predict", wire, want, mc))
        for block in _blocks(len(ids), _chunk_size(self._task), self._ranks):
            send(GO)
            gathered: list[Any] = [None] * self._ranks
            dist.gather_object(_part(self._task, ids, want, mc, block, 0), gathered, dst=0)
            try:
                for outs in gathered:
                    yield from outs
            except GeneratorExit:          # the consumer stopped reading (a stream selector): so do the others
                send(STOP)
                raise

    def fit(self, labels: Any, ctx: Any) -> Any:
        labels = dict(labels)
        ctx = dataclasses.replace(ctx, labels=labels)
        if self._together:                            # every rank trains (DDP); the state is sent anyway, so
            send(("fit", labels, ctx))                # the others mirror rank 0 exactly whatever the hardware
        with together(self._together):
            stats = self._task.fit(labels, ctx)
        send(("load", self._task.state_dict()))
        return stats

    def load_state_dict(self, state: Any) -> None:
        self._task.load_state_dict(state)
        send(("load", state))

    def finish(self) -> None:
        """The run ended normally (done or paused): the other ranks stop following."""
        send(("end",))


def follow(task: Any) -> None:
    """What every rank but 0 does: mirror rank 0's task until it says the run ended."""
    rank, ranks = world()
    pending = None
    while True:
        message, pending = pending or send(None), None
        op = message[0]
        if op == "end":
            return
        if op == "predict":
            (kind, value), want, mc = message[1:]
            ids = Candidates(task.pool_ids(), value) if kind == "rows" else value
            for block in _blocks(len(ids), _chunk_size(task), ranks):
                step = send(None)
                if step != GO:          # rank 0 stopped reading: STOP, or already its next instruction
                    pending = None if step == STOP else step
                    break
                dist.gather_object(_part(task, ids, want, mc, block, rank), None, dst=0)
        elif op == "fit":
            with together(True):
                task.fit(*message[1:])
        elif op == "load":
            task.load_state_dict(message[1])
        elif op == "call":
            with together(message[4]):
                getattr(task, message[1])(*message[2], **message[3])
        # anything else is a STOP that came after a query's last chunk: nothing to stop


# ------------------------------------------------------------------------------------------ launching
def _entry(argv: list[str]) -> None:
    """A launched worker: the command line as one process would run it, in the launcher's process group."""
    from .cli import main

    code = main(argv)
    if code:
        sys.exit(code)


def roll_call() -> list[dict[str, Any]]:
    """Every rank's host and process id (each rank calls it once, right after rank 0 is ready)."""
    me = {"rank": world()[0], "host": socket.gethostname(), "pid": os.getpid()}
    everyone: list[Any] = [None] * world()[1]
    dist.all_gather_object(everyone, me)
    return everyone


def follow_run(run_dir: Any) -> int:
    """Every rank but 0: once rank 0 has opened the run, build the same task from its recipe and follow it."""
    from .device import pick_device
    from .protocol import Env
    from .run import open_run

    try:
        if send(None) != READY:
            return 0
        roll_call()
        resolved = open_run(run_dir)
        env = Env(seed=resolved.recipe.seed, run_dir=Path(run_dir), device=pick_device(), progress=False)
        follow(resolved.classes["task"](resolved.configs["task"], env))
    except KeyboardInterrupt:      # rank 0 says what happened to the run
        return 130
    return 0


def launch(argv: list[str], nproc: int, run_dir: Any) -> int:
    """Run ``activelab <argv>`` on ``nproc`` local worker processes (torch's elastic launcher, no restarts).
    Returns 0 or rank 0's exit code (it printed why: 2 a user error, 130/143 interrupted); a :class:`UserError`
    naming the rank when another rank failed or any rank was killed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if torch.cuda.is_available():
        gpus_enough(nproc, "--nproc")

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in loggers]
    for log in loggers:                 # their failure report is a table and a warning per worker; ours is one line
        log.setLevel(logging.CRITICAL)
    os.environ[LAUNCHED] = "1"          # rank 0 leaves explaining a failure to this process
    try:
        elastic_launch(config, _entry)(argv)
        return 0
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code > 0 and rank == 0:
            return code
        if code > 0:
            how = f"stopped with exit code {code}"
        else:
            try:
                how = f"was killed ({signal.Signals(-code).name})"
            except ValueError:
                how = f"was killed (signal {-code})"
        raise UserError(f"worker rank {rank} {how}; every label given so far is saved. Continue with: "
                        f"activelab resume {run_dir} (with any --nproc)") from None
    finally:
        os.environ.pop(LAUNCHED, None)
        for log, level in zip(loggers, levels):
            log.setLevel(level)
