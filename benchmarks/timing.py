"""Time demos end to end and the core scorers on one pool; prints two tables.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/timing.py [--recipe recipes/ceal_digits.yaml ...] [--threads 1]
        [--no-scorers]

Table 1: for each recipe, wall time of `activelab run RECIPE` (process start to exit), the sums of the per-round
fit and scoring times it logged, and the final value of the task's primary metric. Table 2: seconds and items/s
for each core scorer over the digits pool (1,347 items), with a task fitted once on 200 labels; every scorer is
timed in the same process, one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_demo(recipe: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "activelab.cli", "run", recipe, "--out", f"{tmp}/run", "-q"],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
        metric = primary_metric(Path(f"{tmp}/run/recipe.yaml"))
    return {"wall": wall, "fit": sum(r.get("fit_seconds", 0) for r in rows),
            "score": sum(r.get("score_seconds", 0) for r in rows), "rounds": len(rows),
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
        started = time.perf_counter()
        scores = collect_scores(scorer.score(task, candidates, ctx))
        elapsed = time.perf_counter() - started
        assert len(scores) == len(candidates)
        label = name + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
        rows.append((label, elapsed, len(candidates)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--recipe", nargs="+", default=["recipes/ceal_digits.yaml"])
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--no-scorers", action="store_true", help="only the recipes' table")
    args = p.parse_args()
    print(f"threads: {args.threads}; load average before: {os.getloadavg()[0]:.1f}\n")
    print("| recipe | rounds | labels | final primary metric | wall s | fit s (sum) | scoring s (sum) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for recipe in args.recipe:
        demo = time_demo(recipe, args.threads)
        print(f"| {recipe} | {demo['rounds']} | {demo['labels']} | {demo['metric']} {demo['final']:.3f} | "
              f"{demo['wall']:.1f} | {demo['fit']:.1f} | {demo['score']:.2f} |", flush=True)
    if args.no_scorers:
        return
    print("\n| scorer | seconds | items/s |")
    print("|---|---:|---:|")
    for label, elapsed, n in time_scorers(args.threads):
        print(f"| {label} | {elapsed:.3f} | {n / elapsed:,.0f} |")


if __name__ == "__main__":
    main()
