"""Time the demos end to end and the core scorers on one pool; writes two tables.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/timing.py [--recipe RECIPE ...] [--set key=value ...]
        [--threads 1] [--no-scorers] [--out-dir benchmarks/results]

Table 1: for each recipe (default: the three demos the docs time, recipes/ceal_digits.yaml,
recipes/miaod_digits.yaml and recipes/lossprediction_asr.yaml), wall time of `activelab run RECIPE` (process start
to exit, after an untimed one-round run of the same recipe that makes any generated data and fills the numba
cache, so one-off costs are not counted), the sums of the per-round fit and scoring
times it logged, and the final value of the task's primary metric. Table 2: seconds and items/s for each core
scorer over the digits pool (1,347 items), with a task fitted once on 200 labels; every scorer is timed in the same
process, one after another, on its second call (the first compiles or loads its numba kernels), so their ratios
hold even on a loaded machine. Writes ``timing.md`` and
``timing.json`` into ``--out-dir`` (default benchmarks/results, which the docs include), with the command, the
machine and the load average before and after; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ["recipes/ceal_digits.yaml", "recipes/miaod_digits.yaml", "recipes/lossprediction_asr.yaml"]


def time_demo(recipe: str, overrides: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:      # a first, one-round run makes any generated data and compiles
        subprocess.run([sys.executable, "-m", "activelab.cli", "run", recipe, *overrides, "loop.rounds=1",
                        "--out", f"{tmp}/warm", "-q"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "activelab.cli", "run", recipe, *overrides, "--out", f"{tmp}/run",
                        "-q"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
        metric = primary_metric(Path(f"{tmp}/run/recipe.yaml"))
    return {"recipe": recipe, "overrides": overrides, "wall_s": round(wall, 2),
            "fit_s": round(sum(r.get("fit_seconds") or 0 for r in rows), 2),
            "score_s": round(sum(r.get("score_seconds") or 0 for r in rows), 3), "rounds": len(rows),
            "metric": metric, "final": rows[-1][metric], "labels": rows[-1]["n_labeled"]}


def primary_metric(resolved_recipe: Path) -> str:
    import yaml

    from activelab import registry

    task = yaml.safe_load(resolved_recipe.read_text())["task"]
    return registry.load("task", task["name"], task.get("plugin")).primary_metric


def time_scorers(threads: int) -> list[tuple[str, float, int]]:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from activelab import registry
    from activelab.plugins.vision.classification import ClassificationTask
    from activelab.protocol import Context, Env, collect_scores

    task = ClassificationTask(ClassificationTask.Config(data={"kind": "digits"}), Env(seed=0, progress=False))
    ids = list(task.pool_ids())
    rng = np.random.default_rng(0)
    labelled = [ids[i] for i in rng.choice(len(ids), 200, replace=False)]
    labels = {i: task.true_label(i) for i in labelled}
    task.fit(labels, Context(round=0, seed=0, budget=20, labels=labels))
    candidates = [i for i in ids if i not in labels]
    ctx = Context(round=1, seed=0, budget=20, labels=labels)
    rows = []
    for name, params in [("random", {}), ("least_confidence", {}), ("margin", {}), ("entropy", {}),
                         ("bald", {"samples": 20}), ("qbc", {"members": "batchwise", "size": 10}),
                         ("qbc", {"members": "bootstrap", "size": 5}), ("egl", {}),
                         ("density", {"base": "entropy"}), ("kcenter", {})]:
        cls = registry.load("scorer", name)
        scorer = cls(cls.Config(**params), Env(seed=0, progress=False))
        collect_scores(scorer.score(task, candidates, ctx))      # untimed: compiles (or loads) its numba kernels
        started = time.perf_counter()
        scores = collect_scores(scorer.score(task, candidates, ctx))
        elapsed = time.perf_counter() - started
        assert len(scores) == len(candidates)
        label = name + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
        rows.append((label, elapsed, len(candidates)))
    return rows


def write(result: dict, out_dir: Path) -> str:
    lines = [f"Made by: `{result['command']}`; {result['threads']} thread(s); {result['machine']}; load average "
             f"{result['load_before']:.1f} before, {result['load_after']:.1f} after", "",
             "| recipe | rounds | labels | final primary metric | wall s | fit s (sum) | scoring s (sum) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for d in result["demos"]:
        name = " ".join([d["recipe"], *d["overrides"]])
        lines.append(f"| {name} | {d['rounds']} | {d['labels']} | {d['metric']} {d['final']:.3f} | "
                     f"{d['wall_s']:.1f} | {d['fit_s']:.1f} | {d['score_s']:.2f} |")
    if result["scorers"]:
        lines += ["", "Each core scorer over the digits pool, the task fitted once on 200 labels, one process:", "",
                  "| scorer | seconds | items/s |", "|---|---:|---:|"]
        lines += [f"| {r['scorer']} | {r['seconds']:.3f} | {r['items'] / r['seconds']:,.0f} |"
                  for r in result["scorers"]]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "timing.md").write_text(text)
    (out_dir / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", nargs="+", default=DEMOS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--no-scorers", action="store_true", help="only the recipes' table")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    result = {"command": " ".join(["OMP_NUM_THREADS=" + str(args.threads), ".venv/bin/python",
                                   "benchmarks/timing.py", *sys.argv[1:]]),
              "threads": args.threads, "load_before": os.getloadavg()[0],
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    result["demos"] = []
    for recipe in args.recipe:
        result["demos"].append(time_demo(recipe, args.set, args.threads))
        print(result["demos"][-1], file=sys.stderr, flush=True)
    result["scorers"] = [] if args.no_scorers else [
        {"scorer": label, "seconds": round(elapsed, 4), "items": n} for label, elapsed, n in time_scorers(args.threads)]
    result["load_after"] = os.getloadavg()[0]
    print(write(result, args.out_dir), end="")


if __name__ == "__main__":
    main()
