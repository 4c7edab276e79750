"""A real round's scoring time before and after a change: `score_seconds` of a recipe, old code against new.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/round_scoring.py --before b0715f1 \
        [--recipe recipes/ceal_mnist.yaml] [--set loop.rounds=2 ...] [--repeats 2]

`--before REV` checks the revision out into a temporary git worktree and imports activelab from there (a folder
of links that maps the package onto that worktree's core/ and plugins/), so both versions run with the same
interpreter, the same installed libraries and the same data; the runs alternate (before, after, before, ...) so
load on a shared machine hits both alike. Each run is `activelab run RECIPE --out TMP -q` in a fresh process with
the given thread count; the table reports, per version, the median over runs of the summed `score_seconds` of
rounds 1.. (round 0 is chosen at random and scores nothing), and the total wall time. Writes the markdown table to
stdout and benchmarks/results/round_scoring.md, and benchmarks/results/round_scoring.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Runs `activelab run` with the package imported from SHIM (a folder whose `activelab` maps onto a checkout).
LAUNCH = """
import sys
sys.path.insert(0, sys.argv[1])
from activelab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def shim_for(checkout: Path, into: Path) -> Path:
    """A folder holding a package `activelab` made of links to ``checkout``'s core/*, with plugins/ as
    `activelab.plugins`: the layout pyproject.toml's package_dir gives the installed package."""
    package = into / "activelab"
    package.mkdir(parents=True)
    for entry in (checkout / "core").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "plugins").symlink_to(checkout / "plugins")
    return into


def one_run(shim: Path, recipe: str, overrides: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", LAUNCH, str(shim), "run", recipe, *overrides, "--out", f"{tmp}/run",
                        "-q"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if r.get("score_seconds") is not None]
    return {"score_seconds": sum(r["score_seconds"] for r in scored), "rounds_scored": len(scored), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="git revision of the old code")
    p.add_argument("--recipe", default="recipes/ceal_mnist.yaml")
    p.add_argument("--set", nargs="*", default=["loop.rounds=2"], help="dotted.key=value overrides for both runs")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = p.parse_args()

    after_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "core", "plugins"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            shims = {"before": shim_for(worktree, Path(tmp) / "shim-before"),
                     "after": shim_for(ROOT, Path(tmp) / "shim-after")}
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.repeats):
                for version in ("before", "after"):
                    runs[version].append(one_run(shims[version], args.recipe, args.set, args.threads))
                    print(f"{version}: {runs[version][-1]}", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)

    summary = {v: {"median_score_seconds": statistics.median(r["score_seconds"] for r in rs),
                   "median_wall_s": statistics.median(r["wall_s"] for r in rs), "runs": rs}
               for v, rs in runs.items()}
    revisions = {"before": args.before, "after": after_rev + ("+uncommitted" if dirty else "")}
    command = " ".join(["benchmarks/round_scoring.py", "--before", args.before, "--recipe", args.recipe, "--set",
                        *args.set])
    header = (f"`{command}`; {args.threads} thread(s), {args.repeats} runs per version, alternating; "
              f"{platform.machine()}, {os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.1f}")
    lines = [header, "", "| version | revision | scoring s (rounds 1.., median) | wall s (median) |",
             "|---|---|---:|---:|"]
    for v in ("before", "after"):
        s = summary[v]
        lines.append(f"| {v} | {revisions[v]} | {s['median_score_seconds']:.3f} | {s['median_wall_s']:.1f} |")
    ratio = summary["before"]["median_score_seconds"] / max(summary["after"]["median_score_seconds"], 1e-9)
    lines += ["", f"scoring time before / after: {ratio:.2f}x"]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "round_scoring.md").write_text(table)
    (RESULTS / "round_scoring.json").write_text(json.dumps(
        {"command": command, "recipe": args.recipe, "overrides": args.set, "threads": args.threads,
         "revisions": revisions, "ratio_before_over_after": ratio, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
