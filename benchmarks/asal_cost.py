"""Append ASAL's cost per round to <results>.md and <results>.json (called by benchmarks/asal.sh).

    python benchmarks/asal_cost.py RUNS_OF_THE_COMPARISON RESULTS_STEM

Reads every run's metrics.jsonl (score and fit seconds) and ASAL's <run>/asal/cost.jsonl (its own split).
"""
import json
import sys
from pathlib import Path

import numpy as np

out, results = Path(sys.argv[1]), Path(sys.argv[2])


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def stat(values):
    values = [v for v in values if v is not None]
    return {"mean": float(np.mean(values)), "max": float(np.max(values)), "n": len(values)} if values else None


def cell(s):
    return "" if s is None else f"{s['mean']:.3g} (max {s['max']:.3g})"


cost = {"strategies": {}, "asal": {}}
asal_rows = []
for strategy in sorted(p.name for p in out.iterdir() if p.is_dir()):
    scores, no_gan, fits = [], [], []
    for run in sorted((out / strategy).glob("seed_*")):
        by_round = {r["round"]: r for r in lines(run / "asal" / "cost.jsonl")}     # a rescored round: its last line
        asal_rows += list(by_round.values())
        for r in lines(run / "metrics.jsonl"):
            fits.append(r.get("fit_seconds"))
            if r["round"] > 0 and r.get("score_seconds") is not None:
                scores.append(r["score_seconds"])
                no_gan.append(r["score_seconds"] - by_round.get(r["round"], {}).get("gan_seconds", 0.0))
    cost["strategies"][strategy] = {"score_seconds": stat(scores), "score_seconds_without_gan_training": stat(no_gan),
                                    "fit_seconds": stat(fits)}
per_round = ["sample_seconds", "optimise_seconds", "embed_seconds", "search_seconds"]
cost["asal"] = {"gan_training_seconds_per_run": stat([r["gan_seconds"] for r in asal_rows if r["gan_seconds"] > 0]),
                "index_build_seconds_per_run": stat([r["index_seconds"] for r in asal_rows if r["index_seconds"] > 0]),
                **{p: stat([r[p] for r in asal_rows]) for p in per_round},
                "rounds": len(asal_rows), "index": sorted({r["index"] for r in asal_rows})}
md = ["", "## Cost per round", "",
      "Wall-clock seconds in each run's process (one CPU thread; the networks on the run's torch device, a GPU "
      "where the machine has one), mean over rounds 1-9 and seeds (max in brackets). score: the query step (the "
      "loop's score_seconds: scoring and selecting); fit: training the classifier.", "",
      "| strategy | score s / round | score s / round, GAN training excluded | fit s / round |",
      "|---|---:|---:|---:|"]
for name, c in cost["strategies"].items():
    md.append(f"| {name} | {cell(c['score_seconds'])} | {cell(c['score_seconds_without_gan_training'])} | "
              f"{cell(c['fit_seconds'])} |")
a = cost["asal"]
md += ["", f"ASAL's query step split ({a['rounds']} rounds, faiss {', '.join(a['index'])}): the DCGAN is trained "
       "once per run, in the run's first ASAL round (the row below is per run, not per round); every round then "
       "samples and classifies the generated images, embeds the kept ones, and searches the index (built once per "
       "run over the pool's features).", "",
       "| part | seconds |", "|---|---:|",
       f"| GAN training (once per run) | {cell(a['gan_training_seconds_per_run'])} |",
       f"| sample + classify generated images / round | {cell(a['sample_seconds'])} |",
       f"| latent optimisation / round | {cell(a['optimise_seconds'])} |",
       f"| embed generated images / round | {cell(a['embed_seconds'])} |",
       f"| build the faiss index (once per run) | {cell(a['index_build_seconds_per_run'])} |",
       f"| nearest-neighbour search / round | {cell(a['search_seconds'])} |"]
with open(f"{results}.md", "a") as fh:
    fh.write("\n".join(md) + "\n")
data = json.loads(Path(f"{results}.json").read_text())
data["cost_per_round"] = cost
Path(f"{results}.json").write_text(json.dumps(data, indent=1) + "\n")
