"""``activelab compare``: one recipe under several strategies and seeds, then tables, a JSON summary and plots.

Each (strategy, seed) is an ordinary run folder under ``OUT/<strategy>/seed_<s>``; a comparison that was
interrupted picks up where it stopped (finished runs are reused, unfinished ones resumed). ``compare --merge``
(:func:`merge`) writes the same outputs for finished runs made separately, so no table is aggregated by hand. The
statistics are those of :mod:`activelab.evaluation.statistics`. The verb comes from the core plugin's manifest.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from activelab import hooks, registry
from activelab import recipe as recipes
from activelab.cli import NPROC, Verb, nproc_checked
from activelab.distributed import launch
from activelab.errors import UserError
from activelab.loop import Runner
from activelab.protocol import RunStatus
from activelab.run import METRICS_FILE, RECIPE_FILE, create_run, resolved_recipe, status

from . import statistics, tables

LOOP_METRICS = frozenset({"round", "n_labeled", "n_queried", "fit_seconds", "score_seconds"})


def _check_metrics(wanted: list[str], known: set[str], base: recipes.Resolved, source: str) -> None:
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise UserError(f"--metrics: {', '.join(map(repr, unknown))} not reported by task "
                        f"'{base.recipe.task.name}' ({source}: {', '.join(sorted(known))})")


def compare(recipe_path: str, strategies: list[str], seeds: int, out: str | None,
            overrides: list[str], metrics: list[str] | None = None, progress: bool = True,
            target: str | None = None, nproc: int = 1, jobs: int = 1) -> Path:
    base = recipes.load(recipe_path, overrides)
    for flag, value in (("--seeds", seeds), ("--jobs", jobs)):
        if value < 1:
            raise UserError(f"{flag}: must be >= 1")
    if not strategies:
        raise UserError("--strategies: give at least one strategy")
    if target is not None and target not in strategies:
        raise UserError(f"--target-strategy: '{target}' is not one of --strategies")
    out_dir = Path(out) if out else Path("runs") / f"compare-{base.recipe.name}"
    wanted = metrics or [getattr(base.classes["task"], "primary_metric", None)]
    # every name a run can have in its metrics rows: the loop's own plus the task's declared ``metrics`` (what
    # ``evaluate`` and ``fit`` report); a task that declares none has them checked on its first finished run
    declared = hooks.metrics(base.classes["task"])
    if declared is not None:
        _check_metrics(wanted, LOOP_METRICS | declared, base, "it reports")
    # Validate every strategy up front, so a typo fails before hours of training.
    plans = []
    for strategy in strategies:
        extra = recipes.strategy_overrides(base, strategy)
        for s in range(seeds):
            data = recipes.apply_overrides(base.raw, {**extra, "seed": base.recipe.seed + s,
                                                      "name": f"{base.recipe.name}-{strategy}"})
            data.pop("strategies", None)
            plans.append((strategy, s, recipes.validate(data, source=f"{recipe_path} (strategy {strategy})")))

    todo = []
    for strategy, s, resolved in plans:
        run_dir = out_dir / strategy / f"seed_{s}"
        if not (run_dir / RECIPE_FILE).exists():
            create_run(resolved, run_dir)
        elif yaml.safe_load((run_dir / RECIPE_FILE).read_text()) != resolved_recipe(resolved):
            raise UserError(f"{run_dir}: made by a different recipe or strategy; remove it or choose another --out")
        todo.append((strategy, run_dir))
    if jobs > 1:
        _run_parallel([d for _, d in todo], jobs, nproc, progress)
    done = []
    for strategy, run_dir in tqdm(todo, desc="compare", unit="run", disable=not progress or jobs > 1):
        if jobs == 1 and nproc > 1:        # the run on nproc worker processes (activelab.distributed)
            code = launch(["resume", str(run_dir), "-q"], nproc, run_dir)
            if code:
                raise UserError(f"{run_dir}: the run stopped (exit code {code}); see above")
        elif jobs == 1:
            with contextlib.closing(Runner(run_dir, progress=False)) as runner:
                runner.run()
        if status(run_dir)["status"] != RunStatus.DONE:
            raise UserError(f"{run_dir}: the oracle paused this run; finish it with `activelab resume {run_dir}`")
        done.append(read_run(run_dir, strategy))
        if declared is None and len(done) == 1:
            _check_metrics(wanted, {k for row in done[0]["rows"] for k in row}, base, "its first run reports")
    command = _command([recipe_path, *overrides, "--strategies", ",".join(strategies), "--seeds", str(seeds),
                        "--out", str(out_dir)], metrics, target)
    return write_report(done, out_dir, wanted, base.classes["task"], command, base.recipe.name, target)


def _run_parallel(run_dirs: list[Path], jobs: int, nproc: int, progress: bool) -> None:
    """Run (or finish) each run folder in its own ``activelab resume`` process, ``jobs`` at a time.

    Each run is the same run folder a sequential compare makes, seeded by its own recipe, so the picks and scores
    do not depend on ``jobs``; only the wall-clock does. Each process inherits the environment (set
    ``OMP_NUM_THREADS`` so that jobs x threads fits the machine). The first failure stops the launching of more
    runs; those already running finish (a rerun resumes the rest), and the error names the run's folder.
    """
    import subprocess
    import time

    pending = [d for d in run_dirs if status(d)["status"] != RunStatus.DONE]
    running: dict[subprocess.Popen, Path] = {}
    failed: list[tuple[Path, int]] = []
    bar = tqdm(total=len(run_dirs), initial=len(run_dirs) - len(pending), desc="compare", unit="run",
               disable=not progress)
    try:
        while running or (pending and not failed):      # after a failure: no new run, wait for the others
            while pending and len(running) < jobs and not failed:
                run_dir = pending.pop(0)
                cmd = [sys.executable, "-m", "activelab", "resume", str(run_dir), "-q"]
                running[subprocess.Popen(cmd + (["--nproc", str(nproc)] if nproc > 1 else []))] = run_dir
            for proc in [p for p in running if p.poll() is not None]:
                run_dir = running.pop(proc)
                if proc.returncode:
                    failed.append((run_dir, proc.returncode))
                bar.update(1)
            time.sleep(0.2)
    finally:
        for proc in running:          # interrupted (Ctrl-C): the runs resume where they stopped
            proc.terminate()
        for proc in running:
            proc.wait()
        bar.close()
    if failed:
        run_dir, code = failed[0]
        more = f" ({len(failed) - 1} more failed)" if len(failed) > 1 else ""
        raise UserError(f"{run_dir}: the run stopped (exit code {code}){more}; see above; "
                        f"the same command resumes the comparison")


def _command(args: list[str], metrics: list[str] | None, target: str | None) -> str:
    """The command line that makes this comparison again (written into compare.md and compare.json)."""
    return shlex.join(["activelab", "compare", *args, *(["--metrics", ",".join(metrics)] if metrics else []),
                       *(["--target-strategy", target] if target else [])])


def read_run(run_dir: Path, strategy: str) -> dict[str, Any]:
    """A finished run as :func:`.statistics.summarise` reads it: its metrics rows (``metrics.jsonl``), seed, task
    and setting (the task name and the recipe name less the ``-<strategy>`` suffix compare gives it)."""
    state = status(run_dir)["status"]
    if state != RunStatus.DONE or not (run_dir / METRICS_FILE).is_file():
        raise UserError(f"{run_dir}: not a finished run (status {state}); finish it with `activelab resume "
                        f"{run_dir}`")
    try:
        recipe = yaml.safe_load((run_dir / RECIPE_FILE).read_text())
        rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
        name, task = recipe["name"], recipe["task"]["name"]
        base = name[:-len(strategy) - 1] if name.endswith(f"-{strategy}") else name
        return {"path": run_dir, "strategy": strategy, "seed": recipe.get("seed", 0), "task": task,
                "plugin": recipe["task"].get("plugin"), "setting": f"{task}/{base}",
                "rows": [r for r in rows if isinstance(r.get("round"), int) and isinstance(r.get("n_labeled"), int)]}
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise UserError(f"{run_dir}: unreadable run ({exc})") from None


def merge(dirs: list[str], out: str | None, metrics: list[str] | None = None, target: str | None = None) -> Path:
    """The outputs of :func:`compare` for runs made separately. Each folder is a compare output
    (``DIR/<strategy>/seed_<s>/``: the strategy is the folder's name) or one run folder (the strategy is the run
    folder's own name, or its parent's for a ``seed_<s>`` folder). Refused: an unfinished run, runs of another
    task, a metric a run lacks, and a second run of the same setting, strategy and seed (the same folder named
    twice is read once)."""
    if not out:
        raise UserError("--merge: give --out, the folder for the merged table and plot")
    runs: list[dict[str, Any]] = []
    for folder in map(Path, dirs):
        own = folder.resolve().parent.name if folder.resolve().name.startswith("seed_") else folder.resolve().name
        found = [(own, folder)] if (folder / RECIPE_FILE).is_file() else \
            [(p.parent.name, p) for p in sorted(folder.glob("*/seed_*")) if (p / RECIPE_FILE).is_file()]
        if not found:
            raise UserError(f"{folder}: neither a run folder nor a compare output (no {RECIPE_FILE}, no "
                            f"<strategy>/seed_<s>/ runs)")
        for strategy, path in found:
            run = read_run(path, strategy)
            twin = next((r for r in runs if (r["setting"], r["strategy"], r["seed"]) ==
                         (run["setting"], strategy, run["seed"])), None)
            if twin is not None and twin["path"].resolve() == path.resolve():
                continue
            if twin is not None:
                raise UserError(f"{path}: {run['setting']}, strategy {strategy}, seed {run['seed']} is already in "
                                f"the comparison ({twin['path']}); a run is never counted twice")
            if runs and (run["task"], run["plugin"]) != (runs[0]["task"], runs[0]["plugin"]):
                raise UserError(f"{path}: a run of task '{run['task']}', not '{runs[0]['task']}' as "
                                f"{runs[0]['path']}; merge runs of one task")
            runs.append(run)
    task_cls = registry.load("task", runs[0]["task"], runs[0]["plugin"])
    wanted = metrics or [getattr(task_cls, "primary_metric", None)]
    for run in runs:
        missing = [m for m in wanted if not any(m in r for r in run["rows"])]
        if missing:
            raise UserError(f"{run['path']}: reports no {', '.join(map(repr, missing))}; merge runs with the same "
                            f"metrics")
    return write_report(runs, Path(out), wanted, task_cls, _command(["--merge", *dirs, "--out", str(out)], metrics,
                                                                    target), f"merged: {', '.join(dirs)}", target)


def write_report(runs: list[dict[str, Any]], out_dir: Path, metrics: list[str], task_cls: type, command: str,
                 title: str, target: str | None = None) -> Path:
    """``compare.md``, ``compare.csv``, ``compare.json``, ``compare.png`` (and ``compare_cost.png`` when every
    metrics row has a ``cost``) into ``out_dir``."""
    if target is not None and target not in {r["strategy"] for r in runs}:
        raise UserError(f"--target-strategy: no strategy '{target}' in the comparison")
    summary = statistics.summarise(runs, metrics, metrics[0] in hooks.lower_is_better(task_cls), target)
    summary["command"] = command
    if "cost" in summary["x"] and isinstance(getattr(task_cls, "cost_unit", None), str):
        summary["cost_unit"] = task_cls.cost_unit             # what the cost axis counts, for tables and plots
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=1))
    table = tables.csv_rows(summary)
    with open(out_dir / "compare.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in table for k in row)))
        writer.writeheader()
        writer.writerows(table)
    (out_dir / "compare.md").write_text(tables.markdown(summary, title, command))
    for x in summary["x"]:
        tables.plot_compare(summary, out_dir / ("compare.png" if x == "n_labeled" else f"compare_{x}.png"), x)
    return out_dir


def _arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("recipe", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--strategies", help="comma-separated: names from the recipe's strategies, or scorers")
    c.add_argument("--seeds", type=int, default=5)
    c.add_argument("--metrics", help="comma-separated metrics for the table (default: the task's primary metric)")
    c.add_argument("--out", help="folder for the runs, table and plot (default runs/compare-<name>)")
    c.add_argument("--merge", nargs="+", metavar="DIR",
                   help="no recipe: merge finished runs made separately (compare outputs or run folders) into --out")
    c.add_argument("--target-strategy", help="labels-to-reach target: this strategy's final score (default random)")
    c.add_argument("-q", "--quiet", action="store_true")
    c.add_argument("--nproc", type=int, default=1, help=NPROC)
    c.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process (default 1); with --nproc N each uses N workers")


def _run(args: argparse.Namespace) -> int:
    if nproc_checked(args)[1] > 1:
        raise UserError("compare: not under torchrun; give --nproc N to run each of its runs on N processes")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    if args.merge is not None:
        if args.recipe or args.overrides or args.strategies:
            raise UserError("compare --merge: give run folders only, no recipe, overrides or --strategies")
        out = merge(args.merge, args.out, metrics, args.target_strategy)
    else:
        if not args.recipe or not args.strategies:
            raise UserError("compare: give a recipe and --strategies, or --merge DIR [DIR ...] --out OUT")
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        out = compare(args.recipe, strategies, args.seeds, args.out, args.overrides, metrics,
                      progress=not args.quiet, target=args.target_strategy, nproc=args.nproc,
                      jobs=args.jobs)
    print((out / "compare.md").read_text())
    print(f"tables: {out}/compare.md, {out}/compare.csv, {out}/compare.json; plot: {out}/compare.png",
          file=sys.stderr)
    return 0


COMPARE = Verb("run a recipe under several strategies and seeds (or --merge finished runs); write tables, "
               "compare.json and plots", _arguments, _run)
