"""The ``activelab`` command line. Exit codes: 0 success, 2 a user error (one line naming the field or file),
1 a bug (with a traceback), 130 interrupted (labels given so far are saved).

The kernel's verbs are defined here; a plugin adds its own through its manifest's ``commands`` (``verb ->
"module:attr"`` of a :class:`Verb`), as the core plugin adds ``export`` and ``import``
(:mod:`activelab.labelling.commands`).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sqlite3
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .protocol import RunStatus


@dataclass(frozen=True)
class Verb:
    """A command-line verb a plugin contributes: its one-line help, what adds its arguments to its parser, and
    what runs it (returning the exit code)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _cmd_run(args: argparse.Namespace) -> int:
    from . import distributed
    from . import recipe as recipes
    from .run import create_run

    rank, ranks = nproc_checked(args)
    run_dir = create_run(recipes.load(args.recipe, args.overrides), args.out) if rank == 0 else None
    if ranks > 1:                # under torchrun: rank 0 made the folder
        run_dir = Path(distributed.send(str(run_dir)))
    if args.nproc > 1:
        return distributed.launch(["resume", str(run_dir), "--fresh", *(["-q"] if args.quiet else [])], args.nproc,
                                  run_dir)
    return _drive(run_dir, args.quiet, fresh=True)


def _cmd_resume(args: argparse.Namespace) -> int:
    from . import distributed

    nproc_checked(args)
    if args.nproc > 1:
        return distributed.launch(["resume", args.run, *(["-q"] if args.quiet else [])], args.nproc, args.run)
    return _drive(Path(args.run), args.quiet, fresh=args.fresh)


def nproc_checked(args: argparse.Namespace) -> tuple[int, int]:
    """This process's (rank, world size), after checking ``--nproc`` against it."""
    import torch

    from .distributed import gpus_enough, world

    rank, ranks = world()
    if args.nproc < 1:
        raise UserError(f"--nproc: must be >= 1, got {args.nproc}")
    if args.nproc > 1 and ranks > 1:
        raise UserError(f"--nproc: this process already runs as one of {ranks} (torchrun); leave --nproc out")
    if args.nproc > 1 and torch.cuda.is_available():    # before a run folder is made
        gpus_enough(args.nproc, "--nproc")
    return rank, ranks


class Terminated(Exception):
    """SIGTERM arrived: stop where we are (every committed label is kept) and say so in the run's status."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def _drive(run_dir: Path, quiet: bool, fresh: bool = False) -> int:
    from . import distributed
    from .loop import Runner

    rank, ranks = distributed.world()
    if rank > 0:
        return distributed.follow_run(run_dir)
    # Bars only on a terminal (a log file would get every redraw); a line per round unless --quiet.
    # fresh: a folder this command just made is removed again if its data turn out to be bad (nothing labelled).
    runner = Runner(run_dir, progress=not quiet and sys.stderr.isatty(), echo=not quiet, fresh=fresh)
    if ranks > 1:
        distributed.send(distributed.READY)
    runner.store.set_state("workers", distributed.roll_call() if ranks > 1 else None)   # for `activelab status`
    if not quiet:
        print(f"run folder: {run_dir}", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        outcome = runner.run()
        if ranks > 1:
            runner.task.finish()
    except (KeyboardInterrupt, Terminated) as exc:
        paused = isinstance(exc, KeyboardInterrupt)    # Ctrl-C pauses; SIGTERM interrupts
        _set_status(runner, RunStatus.PAUSED if paused else RunStatus.INTERRUPTED)
        if paused or distributed.LAUNCHED not in os.environ:   # under --nproc the launcher says which worker failed
            print(f"{'interrupted' if paused else 'terminated'}; every label given so far is saved. Continue with: "
                  f"activelab resume {run_dir}", file=sys.stderr)
        return 130 if paused else 143
    except BaseException:
        _set_status(runner, RunStatus.INTERRUPTED)  # an error stopped it: nobody is working on it any more
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.close()
    print(_pause_hint(run_dir) if outcome == RunStatus.PAUSED else
          f"done: {run_dir}/metrics.jsonl, {run_dir}/learning_curve.png", file=sys.stderr)
    return 0


def _set_status(runner, value: str) -> None:
    # the store itself may be what failed (disk full); the error that stopped us is reported
    with contextlib.suppress(Exception):
        runner.store.set_state("status", value)


def _pause_hint(run_dir: Path) -> str:
    from .run import status

    info = status(run_dir)
    left = f"{info['outstanding']} of {info['batch_size']} items of round {info['round']} outstanding"
    if info["status"] == RunStatus.AWAITING_LABELS:
        return (f"awaiting labels ({left}). Export them with `activelab export {run_dir} --format "
                f"label-studio|csv|jsonl`, import the answers with `activelab import {run_dir} FILE`, then "
                f"`activelab resume {run_dir}`")
    return f"paused ({left}); continue with: activelab resume {run_dir}"


def _cmd_validate(args: argparse.Namespace) -> int:
    from . import recipe as recipes

    bad = 0
    for path in args.recipes:
        try:
            recipes.load(path)
            print(f"{path}: ok")
        except UserError as exc:
            bad += 1
            for line in exc.lines():
                print(line, file=sys.stderr)
    return 2 if bad else 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import KINDS, plugins

    for name, plugin in sorted(plugins().items()):     # a plugin that offers no component is not listed
        offered = {kind: sorted(names) for kind in KINDS if (names := plugin.manifest.components.get(kind))}
        if offered:
            print(f"{name}: {plugin.manifest.description}\n  from {plugin.origin}")
        for kind, names in offered.items():
            print(f"  {kind + 's':10} {', '.join(names)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .run import status

    info = status(args.run)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.run}: {info['status']}, round {info['round']}, {info['labels']} labels, "
              f"{info['outstanding']} of {info['batch_size']} outstanding in the current batch")
        if info["workers"]:
            print("  workers: " + ", ".join(f"rank {w['rank']} pid {w['pid']} on {w['host']}" for w in info["workers"]))
    return 0


NPROC = "worker processes sharing the queries (and training, for tasks that support it); default 1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="activelab", description="Active learning for vision, language and speech.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a recipe end to end")
    r.add_argument("recipe")
    r.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. loop.rounds=3")
    r.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--nproc", type=int, default=1, help=NPROC)
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("resume", help="continue an interrupted or paused run")
    s.add_argument("run")
    s.add_argument("-q", "--quiet", action="store_true")
    s.add_argument("--nproc", type=int, default=1, help=NPROC)
    s.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)   # `run --nproc`: the folder is new
    s.set_defaults(func=_cmd_resume)

    v = sub.add_parser("validate", help="check recipes without running them")
    v.add_argument("recipes", nargs="+")
    v.set_defaults(func=_cmd_validate)

    pl = sub.add_parser("plugins", help="list plugins, their components and where they came from")
    pl.set_defaults(func=_cmd_plugins)

    st = sub.add_parser("status", help="where a run stands: round, labels, outstanding batch")
    st.add_argument("run")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)

    _plugin_verbs(sub)
    return p


def _plugin_verbs(sub) -> None:
    """Add the verbs plugins contribute; a broken one is skipped with a warning, as a broken plugin is."""
    from .registry import commands, resolve

    for name, (plugin, target) in commands().items():
        if name in sub.choices:
            warnings.warn(f"plugin {plugin}: command '{name}' is a built-in command; ignored", stacklevel=2)
            continue
        try:
            verb = resolve(target)
        except (ImportError, AttributeError) as exc:
            warnings.warn(f"plugin {plugin}: command '{name}' ({target}) cannot be imported and is ignored: {exc}",
                          stacklevel=2)
            continue
        parser = sub.add_parser(name, help=verb.help)
        verb.arguments(parser)
        parser.set_defaults(func=verb.run)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also come after options (`run r.yaml --out d loop.rounds=3`).
    if extra:
        if hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:     # a worker of --nproc or torchrun
            from .distributed import join

            join()
        return args.func(args)
    except UserError as exc:
        for line in exc.lines():
            print(f"activelab: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("activelab: interrupted; labels given so far are saved (continue with `activelab resume`)",
              file=sys.stderr)
        return 130
    except RecursionError:
        print("activelab: error: input nested too deeply to read", file=sys.stderr)
        return 2
    except OSError as exc:
        # the environment refused (disk full, read-only folder, no permission): a user error, not a bug
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"activelab: error: {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:
        print(f"activelab: error: the label store: {exc}", file=sys.stderr)
        return 2


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EMFILE, errno.ENFILE,
                      errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EIO}


if __name__ == "__main__":
    sys.exit(main())
