"""ASAL's nearest-neighbour step at scale: 1,000 queries against 1,000,000 x 128 float32 vectors, with the faiss
indexes the ``asal`` scorer builds (:func:`activelab.plugins.vision.asal.build_index`), on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asal_nn.py [--n 1000000] [--dim 128] [--queries 1000]
        [--nprobe 8 32 128] [--hnsw] [--threads 1] [--out-dir benchmarks/results] [--tiny]

Writes a markdown table to stdout and OUT_DIR/asal_nn.md, and OUT_DIR/asal_nn.json.

Data (numpy ``default_rng``, float32): the indexed vectors ~ N(0, I) (seed 0). Two query sets of 1,000: ``random``,
independent N(0, I) draws (seed 1: in 128 dimensions every point is nearly equidistant, the hardest case for an
approximate index), and ``near``, indexed vectors (drawn with seed 2) plus N(0, 0.25^2 I) noise (seed 3): what ASAL
asks, a generated sample close to some real item. Making the data is never timed.

Cases: ``exact`` (``IndexFlatL2``): build (add) and search (k = 1 and k = 10); ``asal match``: the scorer's unique
assignment (:func:`~activelab.plugins.vision.asal.match_nearest`) of the 1,000 queries with 10% of the vectors
labelled (never matched); ``ivf`` (``IndexIVFFlat``, 4 sqrt(N) = 4,000 lists, trained on 40 x nlist vectors):
build (train + add) and search for each ``--nprobe``; ``hnsw`` (``IndexHNSWFlat``, M = 32, efConstruction 40,
efSearch 64; with ``--hnsw``: its build takes minutes on one thread, and the scorer does not use it because a
multi-threaded HNSW build depends on thread timing). Recall@1: the fraction of queries whose first hit is the exact
index's. Each search is timed once after one warm-up search of 10 queries.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


CPU_SECONDS: list[float] = []     # the process's CPU time of each timed call, in order (the machine may be shared)


def timed(fn):
    began, cpu = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS.append(time.process_time() - cpu)
    return out, time.perf_counter() - began


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return rev + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--hnsw", action="store_true", help="also build and search an HNSW index (minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tiny", action="store_true", help="20,000 vectors: a check that the script runs")
    args = parser.parse_args(argv)
    if args.tiny:
        args.n = 20_000
    from activelab.plugins.vision.asal import build_index, default_nlist, match_nearest

    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    points = np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32)
    sets = {"random": np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)}
    near = points[np.random.default_rng(2).choice(args.n, size=args.queries, replace=False)]
    sets["near"] = near + 0.25 * np.random.default_rng(3).standard_normal(near.shape, dtype=np.float32)
    rows: list[dict] = []

    exact, build_s = timed(lambda: build_index(points, "exact"))
    rows.append({"index": "exact (IndexFlatL2)", "case": "build (add)", "seconds": build_s})
    truth = {}
    for name, q in sets.items():
        exact.search(q[:10], 1)
        (_, hits), s = timed(lambda: exact.search(q, 1))
        truth[name] = hits[:, 0]
        rows.append({"index": "exact (IndexFlatL2)", "case": f"search k=1, {name} queries", "seconds": s,
                     "recall_at_1": 1.0})
        _, s = timed(lambda: exact.search(q, 10))
        rows.append({"index": "exact (IndexFlatL2)", "case": f"search k=10, {name} queries", "seconds": s})
    allowed = np.random.default_rng(4).random(args.n) >= 0.1
    for name, q in sets.items():
        matched, s = timed(lambda: match_nearest(exact, q, allowed))
        unique = len(set(matched.tolist())) == len(matched) and bool(allowed[matched].all())
        rows.append({"index": "exact (IndexFlatL2)", "case": f"asal match (unique, 10% labelled), {name} queries",
                     "seconds": s, "valid": unique})

    nlist = default_nlist(args.n)
    ivf, build_s = timed(lambda: build_index(points, "ivf", nlist=nlist, seed=0))
    rows.append({"index": f"ivf (IndexIVFFlat, nlist {nlist})", "case": "build (train + add)", "seconds": build_s})
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        for name, q in sets.items():
            ivf.search(q[:10], 1)
            (_, hits), s = timed(lambda: ivf.search(q, 1))
            rows.append({"index": f"ivf (IndexIVFFlat, nlist {nlist})", "case": f"search k=1, nprobe {nprobe}, "
                         f"{name} queries", "seconds": s, "recall_at_1": float(np.mean(hits[:, 0] == truth[name]))})
    ivf.nprobe = 32
    for name, q in sets.items():
        matched, s = timed(lambda: match_nearest(ivf, q, allowed))
        rows.append({"index": f"ivf (IndexIVFFlat, nlist {nlist})", "case": f"asal match (unique, 10% labelled), "
                     f"nprobe 32, {name} queries", "seconds": s,
                     "valid": len(set(matched.tolist())) == len(matched) and bool(allowed[matched].all())})
    if args.hnsw:
        def build_hnsw():
            index = faiss.IndexHNSWFlat(args.dim, 32)
            index.hnsw.efConstruction = 40
            index.add(points)
            index.hnsw.efSearch = 64
            return index

        hnsw, build_s = timed(build_hnsw)
        rows.append({"index": "hnsw (IndexHNSWFlat, M 32)", "case": "build (add)", "seconds": build_s})
        for name, q in sets.items():
            hnsw.search(q[:10], 1)
            (_, hits), s = timed(lambda: hnsw.search(q, 1))
            rows.append({"index": "hnsw (IndexHNSWFlat, M 32)", "case": f"search k=1, efSearch 64, {name} queries",
                         "seconds": s, "recall_at_1": float(np.mean(hits[:, 0] == truth[name]))})

    total = time.perf_counter() - began
    for r, cpu in zip(rows, CPU_SECONDS):
        r["cpu_seconds"] = cpu
    meta = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asal_nn.py " + " ".join(argv or sys.argv[1:]),
            "n": args.n, "dim": args.dim, "queries": args.queries, "threads": args.threads,
            "faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "git": git_describe(), "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2), "total_seconds": round(total, 1)}
    lines = ["# ASAL nearest-neighbour search", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}; faiss {meta['faiss']}, numpy {meta['numpy']}, Python {meta['python']}; "
             f"git {meta['git']}; {args.threads} thread(s); load average {meta['load_average_before']} before, "
             f"{meta['load_average_after']} after; total {total / 60:.1f} min.", "",
             f"{args.queries:,} queries against {args.n:,} x {args.dim} float32 vectors ~ N(0, I). random queries: "
             "independent N(0, I) draws; near queries: indexed vectors plus N(0, 0.25^2 I) noise (a generated sample "
             "near a real item). Each search timed once after a 10-query warm-up. recall@1: first hit equal to the "
             "exact index's. asal match: the scorer's unique assignment with 10% of the vectors labelled (valid: "
             "every match distinct and unlabelled). seconds: wall clock; cpu s: the process's CPU time (on one thread, "
             "the wall time of an idle machine).", "",
             "| index | case | seconds | cpu s | recall@1 | valid |", "|---|---|---:|---:|---:|:---:|"]
    for r in rows:
        recall = f"{r['recall_at_1']:.3f}" if "recall_at_1" in r else ""
        valid = ("yes" if r["valid"] else "NO") if "valid" in r else ""
        lines.append(f"| {r['index']} | {r['case']} | {r['seconds']:.3g} | {r['cpu_seconds']:.3g} | {recall} | "
                     f"{valid} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "asal_nn.md").write_text(text)
    (args.out_dir / "asal_nn.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
