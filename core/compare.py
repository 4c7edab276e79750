"""``activelab compare``: one recipe under several strategies and seeds, then a table and a plot.

Each (strategy, seed) is an ordinary run folder under ``OUT/<strategy>/seed_<s>``; a comparison that was
interrupted picks up where it stopped (finished runs are reused, unfinished ones resumed).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from . import hooks
from . import recipe as recipes
from .errors import UserError
from .loop import Runner
from .protocol import RunStatus
from .report import aggregate, labels_to_reach, markdown_table, plot_compare
from .run import RECIPE_FILE, create_run, resolved_recipe

LOOP_METRICS = frozenset({"round", "n_labeled", "n_queried", "fit_seconds", "score_seconds"})


def metric_names(task_cls: type) -> set[str] | None:
    """Every name a run of this task can have in its metrics rows: the loop's own plus the task's declared
    ``metrics`` (what ``evaluate`` and ``fit`` report); None when the task declares none."""
    declared = hooks.metrics(task_cls)
    if declared is None:
        return None
    return set(LOOP_METRICS) | set(declared)


def _check_metrics(wanted: list[str], known: set[str], base: recipes.Resolved, source: str) -> None:
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise UserError(f"--metrics: {', '.join(map(repr, unknown))} not reported by task "
                        f"'{base.recipe.task.name}' ({source}: {', '.join(sorted(known))})")


def compare(recipe_path: str, strategies: list[str], seeds: int, out: str | None,
            overrides: list[str], metrics: list[str] | None = None, progress: bool = True) -> Path:
    base = recipes.load(recipe_path, overrides)
    if seeds < 1:
        raise UserError("--seeds: must be >= 1")
    if not strategies:
        raise UserError("--strategies: give at least one strategy")
    out_dir = Path(out) if out else Path("runs") / f"compare-{base.recipe.name}"
    primary = getattr(base.classes["task"], "primary_metric", None)
    wanted = metrics or [primary]
    known = metric_names(base.classes["task"])
    if known is not None:
        _check_metrics(wanted, known, base, "it reports")
    # Validate every strategy up front, so a typo fails before hours of training.
    plans = []
    for strategy in strategies:
        extra = recipes.strategy_overrides(base, strategy)
        for s in range(seeds):
            data = recipes.apply_overrides(base.raw, {**extra, "seed": base.recipe.seed + s})
            data.pop("strategies", None)
            data["name"] = f"{base.recipe.name}-{strategy}"
            plans.append((strategy, s, recipes.validate(data, source=f"{recipe_path} (strategy {strategy})")))

    runs: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in strategies}
    for strategy, s, resolved in tqdm(plans, desc="compare", unit="run", disable=not progress):
        run_dir = out_dir / strategy / f"seed_{s}"
        if not (run_dir / RECIPE_FILE).exists():
            create_run(resolved, run_dir)
        elif yaml.safe_load((run_dir / RECIPE_FILE).read_text()) != resolved_recipe(resolved):
            raise UserError(f"{run_dir}: made by a different recipe or strategy; remove it or choose another --out")
        runner = Runner(run_dir, progress=False)
        try:
            if runner.run() != RunStatus.DONE:
                raise UserError(f"{run_dir}: the oracle paused this run; finish it with `activelab resume {run_dir}`")
            rows = runner.store.metrics()
            runs[strategy].append(rows)
        finally:
            runner.close()
        if known is None:  # a task that does not declare its metrics: check them on the first finished run
            known = {k for row in rows for k in row}
            _check_metrics(wanted, known, base, "its first run reports")

    table = aggregate(runs, wanted)
    (out_dir / "compare.json").write_text(json.dumps(table, indent=1))
    with open(out_dir / "compare.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=sorted({k for row in table for k in row}))
        writer.writeheader()
        writer.writerows(table)
    text = [f"# {base.recipe.name}: {', '.join(strategies)} over {seeds} seed(s)", "",
            f"mean ± standard deviation over seeds; recipe {recipe_path}"
            + (f" with {' '.join(overrides)}" if overrides else ""),
            "", markdown_table(table, wanted)]
    if "random" in strategies:
        finals = [r for r in table if r["strategy"] == "random"]
        target = max(finals, key=lambda r: r["n_labeled"]).get(f"{wanted[0]}_mean")
        if target is not None:
            lower = wanted[0] in hooks.lower_is_better(base.classes["task"])
            text.append(f"labels needed to reach random's final {wanted[0]} ({target:.3f}"
                        f"{', lower is better' if lower else ''}):")
            for strategy, n in labels_to_reach(table, wanted[0], target, lower).items():
                text.append(f"- {strategy}: {'not reached' if n is None else f'{n:g}'}")
            text.append("")
    (out_dir / "compare.md").write_text("\n".join(text))
    plot_compare(table, wanted[0], out_dir / "compare.png", title=base.recipe.name)
    return out_dir
