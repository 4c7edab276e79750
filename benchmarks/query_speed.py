"""The query step on a large pool, activelab against the peer libraries, each case in a fresh process.

    bash benchmarks/setup_peers.sh          # once: .cache/bench-venv with activelab (-e .), torch 2.14.1 and the
                                            # peers pinned in benchmarks/requirements-peers.txt
    .cache/bench-venv/bin/python benchmarks/query_speed.py [--repeats 5] [--cap-seconds 60] [--threads 1 all]
        [--workloads entropy margin ...] [--libraries activelab numpy ...] [--tiny] [--out-dir benchmarks/results]

Writes a markdown table to stdout and OUT_DIR/query_speed.md, and OUT_DIR/query_speed.json (one object per case
under "cases"). Without the peers venv (any python with activelab) the peer rows say "not installed".

Workloads (float32 data made with numpy's default_rng(seed), cached under .cache/query_speed/; making or loading
it is never timed):

- entropy, margin, least_confidence: top-1000 of 1,000,000 x 10 probabilities, each row drawn from Dirichlet(1)
  (uniform on the simplex).
- bald: top-1000 of 100,000 items x 20 MC samples x 10 classes. Per item a mean m ~ 0.9 Dirichlet(1) + 0.1/10 and a
  concentration a ~ log-uniform [2, 200]; each sample ~ Dirichlet(a m), so items range from agreeing to disagreeing.
- kcenter_mixture: greedy k-center, 1,000 picks from 100,000 x 128 embeddings of which the first 1,000 are labelled
  (candidates = the other 99,000); a mixture of 50 Gaussians (centres ~ N(0, 2^2 I), unequal weights
  ~ Dirichlet(2), per-cluster spread ~ U[0.5, 1.5]), as penultimate-layer features cluster by class.
- kcenter_isotropic: the same with one isotropic N(0, I) cloud (nearly equal distances everywhere: many near-ties).

Each (library, workload, threads) case runs in its own process (this script with --case): load the data, convert
it to the library's own layout (untimed), one warm-up call (imports, JIT compilation), then the median of
--repeats timed calls. A call is the whole query: arrays in memory -> the k picked item positions. Threads: 1
(OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1 and torch.set_num_threads(1)) and all (os.cpu_count()). Extra peak memory:
peak RSS during a timed call (VmHWM, reset before it by writing 5 to /proc/self/clear_refs) minus RSS just before
it, read after gc and malloc_trim (glibc keeps freed blocks resident, and a call reusing them would look free), the
largest over the repeats. Overlap: |picks & reference picks| / k, the reference being the float64 numpy
computation for the uncertainty workloads and the float32 numpy farthest-first traversal for k-center.

Slow cases: a first call still running after --cap-seconds is killed and reported as a lower bound (">= cap"),
and that peer is not run again with more threads (--rerun-capped does); the numpy reference is never capped (the
overlaps need its picks). A first call over --single-seconds is not repeated (its time is the result, marked single
run; not for activelab, whose first call compiles or loads its kernels); otherwise the repeats are cut to fit
--case-budget seconds (at least one after the warm-up; three for activelab). A process whose RSS passes
--mem-limit-mb is killed and reported so. A peer that is not importable (setup_peers.sh records why it did not
install) gets a row with the error.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
UNCERTAINTY = ("entropy", "margin", "least_confidence")
WORKLOADS = (*UNCERTAINTY, "bald", "kcenter_mixture", "kcenter_isotropic")
PEERS = ("modal", "baal", "small-text", "scikit-activeml")
LIBRARIES = ("activelab", "numpy", "read", *PEERS)
#: how each library is named in the tables
LABEL = {"activelab": "activelab", "numpy": "numpy reference", "read": "one read (np.sum)", "modal": "modAL",
         "baal": "baal", "small-text": "small-text", "scikit-activeml": "scikit-activeml"}
DIST = {"activelab": "activelab", "modal": "modAL-python", "baal": "baal", "small-text": "small-text",
        "scikit-activeml": "scikit-activeml"}
MODULE = {"modal": "modAL", "baal": "baal", "small-text": "small_text", "scikit-activeml": "skactiveml"}

FULL = {"n": 1_000_000, "classes": 10, "k": 1000, "bald_n": 100_000, "samples": 20, "emb_n": 100_000, "dim": 128,
        "labelled": 1000, "clusters": 50}
TINY = {"n": 2000, "classes": 10, "k": 50, "bald_n": 2000, "samples": 20, "emb_n": 2000, "dim": 128,
        "labelled": 100, "clusters": 50}

#: what each library calls for each workload ("n/a": the library has no such query)
API = {
    "activelab": {w: f"TopK().select over {c}().score(task, candidates, ctx)" for w, c in
                  [("entropy", "Entropy"), ("margin", "Margin"), ("least_confidence", "LeastConfidence"),
                   ("bald", "BALD"), ("kcenter_mixture", "KCenterGreedy"), ("kcenter_isotropic", "KCenterGreedy")]},
    "numpy": {"entropy": "float64 -sum p log p, argpartition", "margin": "float64 p1 - p2, argpartition",
              "least_confidence": "float64 1 - max p, argpartition", "bald": "float64 H[mean p] - mean H[p]",
              "kcenter_mixture": "float32 d = min(d, sqrt(((x - x[i])**2).sum(1))) per pick",
              "kcenter_isotropic": "float32 d = min(d, sqrt(((x - x[i])**2).sum(1))) per pick"},
    "read": {w: "np.sum over the input array" for w in WORKLOADS},
    "modal": {"entropy": "modAL.uncertainty.entropy_sampling", "margin": "modAL.uncertainty.margin_sampling",
              "least_confidence": "modAL.uncertainty.uncertainty_sampling"},
    "baal": {"entropy": "baal.active.heuristics.Entropy", "margin": "baal.active.heuristics.Margin",
             "least_confidence": "baal.active.heuristics.Certainty", "bald": "baal.active.heuristics.BALD"},
    "small-text": {"entropy": "PredictionEntropy().query", "margin": "BreakingTies().query",
                   "least_confidence": "LeastConfidence().query", "bald": "BALD(dropout_samples=20).query",
                   "kcenter_mixture": "greedy_coreset(euclidean)", "kcenter_isotropic": "greedy_coreset(euclidean)"},
    "scikit-activeml": {"entropy": "UncertaintySampling(method='entropy').query(fit_clf=False)",
                        "margin": "UncertaintySampling(method='margin_sampling').query(fit_clf=False)",
                        "least_confidence": "UncertaintySampling(method='least_confident').query(fit_clf=False)",
                        "bald": "GreedyBALD(sample_predictions_method_name='sample_proba').query",
                        "kcenter_mixture": "CoreSet().query", "kcenter_isotropic": "CoreSet().query"},
}


# ------------------------------------------------------------------------------------------------- data
def sizes(tiny: bool) -> dict[str, int]:
    return TINY if tiny else FULL


def make(workload: str, s: dict[str, int]) -> np.ndarray:
    """The workload's input array (float32), from default_rng(SEED) and the sizes alone."""
    rng = np.random.default_rng([SEED, WORKLOADS.index(workload)])
    if workload in UNCERTAINTY:
        return rng.dirichlet(np.ones(s["classes"]), size=s["n"]).astype(np.float32)
    if workload == "bald":
        n, c, t = s["bald_n"], s["classes"], s["samples"]
        mean = 0.9 * rng.dirichlet(np.ones(c), size=n) + 0.1 / c
        conc = np.exp(rng.uniform(np.log(2.0), np.log(200.0), size=n))
        out = np.empty((t, n, c), dtype=np.float32)
        for i in range(t):
            g = rng.standard_gamma(conc[:, None] * mean)
            out[i] = g / g.sum(axis=1, keepdims=True)
        return out
    n, d = s["emb_n"], s["dim"]
    if workload == "kcenter_isotropic":
        return rng.standard_normal((n, d), dtype=np.float32)
    centres = rng.normal(0.0, 2.0, size=(s["clusters"], d))
    weights = rng.dirichlet(np.full(s["clusters"], 2.0))
    spread = rng.uniform(0.5, 1.5, size=s["clusters"])
    cluster = rng.choice(s["clusters"], size=n, p=weights)
    return (centres[cluster] + spread[cluster, None] * rng.standard_normal((n, d))).astype(np.float32)


def load(workload: str, tiny: bool, cache: Path) -> np.ndarray:
    """``make``'s array, cached as .npy (the uncertainty workloads share one file)."""
    s = sizes(tiny)
    name = "probs" if workload in UNCERTAINTY else workload
    path = cache / f"{name}-{'tiny' if tiny else 'full'}-seed{SEED}.npy"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, make(UNCERTAINTY[0] if workload in UNCERTAINTY else workload, s))
        os.replace(tmp, path)
    return np.load(path)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first, ties to the lower position."""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


# ------------------------------------------------------------------------------------------- the cases
# Each builder takes (workload, data, sizes) and returns a zero-argument callable that runs one whole query and
# returns the picked positions as pool rows. Everything a library needs before a query (a wrapped classifier, the
# data in its layout) is made by the builder, outside the timed call.
Query = Callable[[], np.ndarray]


def build_read(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    return lambda: np.atleast_1d(np.sum(data))[:0].astype(np.int64)


def build_numpy(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    k = s["k"]
    if workload in UNCERTAINTY or workload == "bald":
        def query() -> np.ndarray:
            p = data.astype(np.float64)
            if workload == "entropy":
                scores = -np.sum(p * np.log(np.maximum(p, np.finfo(np.float64).tiny)), axis=1)
            elif workload == "margin":
                top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
                scores = top2[:, 0] - top2[:, 1]
            elif workload == "least_confidence":
                scores = 1.0 - p.max(axis=1)
            else:
                def h(q: np.ndarray) -> np.ndarray:
                    return -np.sum(q * np.log(np.maximum(q, np.finfo(np.float64).tiny)), axis=-1)
                scores = h(p.mean(axis=0)) - h(p).mean(axis=0)
            return top_k(scores, k)
        return query
    m = s["labelled"]

    def kcenter() -> np.ndarray:
        x = data[m:]
        # distance to the nearest labelled point: float64 |a|^2 + |b|^2 - 2ab in blocks (accurate, BLAS-fast)
        x64 = x.astype(np.float64)
        sq = np.square(x64).sum(axis=1)
        d = np.full(len(x), np.inf)
        for start in range(0, m, 256):
            lab = data[start:min(start + 256, m)].astype(np.float64)
            d2 = sq[:, None] + np.square(lab).sum(axis=1)[None, :] - 2.0 * (x64 @ lab.T)
            d = np.minimum(d, np.sqrt(np.maximum(d2, 0.0)).min(axis=1))
        del x64, d2
        d = d.astype(np.float32)
        picks = np.empty(k, dtype=np.int64)
        # the per-pick update d = min(d, sqrt(((x - x[i])**2).sum(1))), in row blocks that stay in cache (each
        # row's arithmetic, and so every float32 value, is the same as on the whole array at once)
        block = 4096
        buf = np.empty((block, x.shape[1]), dtype=np.float32)
        dist = np.empty(block, dtype=np.float32)
        for step in range(k):
            i = int(np.argmax(d))
            picks[step] = i
            xi = x[i].copy()
            for start in range(0, len(x), block):
                rows = x[start:start + block]
                b, e = buf[:len(rows)], dist[:len(rows)]
                np.subtract(rows, xi, out=b)
                np.square(b, out=b)
                np.sum(b, axis=1, out=e)
                np.sqrt(e, out=e)
                np.minimum(d[start:start + block], e, out=d[start:start + block])
            d[i] = -np.inf        # picked (its distance is 0; -inf keeps ties at 0 from picking it twice)
        return picks + m
    return kcenter


class ArrayTask:
    """What a plugin task does for a query: maps item ids to rows of its arrays and yields them in blocks."""

    primary_metric = "accuracy"

    def __init__(self, probs: np.ndarray | None = None, mc_probs: np.ndarray | None = None,
                 emb: np.ndarray | None = None, n: int = 0):
        from activelab.protocol import EMBEDDINGS, MC_DROPOUT, PROBS
        from activelab.torchkit.items import ItemIndex

        self.outputs = {PROBS, EMBEDDINGS, MC_DROPOUT}
        self.probs, self.mc_probs, self.emb = probs, mc_probs, emb
        self.items = ItemIndex(str(i) for i in range(n))

    def pool_ids(self):
        return self.items.ids

    def predict(self, ids, want, mc=None):
        from activelab.protocol import EMBEDDINGS, PROBS

        for block in self.items.blocks(ids, 65536):
            if mc is not None:
                yield {PROBS: self.mc_probs[:, block]}
            else:
                yield {k: arr[block] for k, arr in ((PROBS, self.probs), (EMBEDDINGS, self.emb))
                       if k in want and arr is not None}


def build_activelab(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    from activelab.protocol import Candidates, Context
    from activelab.strategies.diversity import KCenterGreedy
    from activelab.strategies.selectors import TopK
    from activelab.strategies.uncertainty import BALD, Entropy, LeastConfidence, Margin

    k = s["k"]
    if workload in UNCERTAINTY:
        task = ArrayTask(probs=data, n=len(data))
        scorer = {"entropy": Entropy, "margin": Margin, "least_confidence": LeastConfidence}[workload]()
        first, labels = 0, {}
    elif workload == "bald":
        task = ArrayTask(mc_probs=data, n=data.shape[1])
        scorer = BALD(BALD.Config(samples=data.shape[0]))
        first, labels = 0, {}
    else:
        task = ArrayTask(emb=data, n=len(data))
        scorer = KCenterGreedy()
        first = s["labelled"]
        labels = {item: 0 for item in task.pool_ids()[:first]}
    # the unlabelled rows in increasing order, as the pool gives them, built once outside the timed call as the pool
    # builds them once per round (small-text's index arrays are built outside its timed call too)
    ids = task.pool_ids()
    candidates = Candidates(ids, np.arange(first, len(ids)), increasing=True)

    def query() -> np.ndarray:
        ctx = Context(round=1, seed=0, budget=k, labels=labels, progress=False)
        picks = TopK().select(candidates, scorer.score(task, candidates, ctx), k, ctx)
        return np.asarray(picks.positions, dtype=np.int64) + first
    return query


class _Proba:
    """A fitted classifier whose predict_proba returns precomputed probabilities (what modAL and small-text call)."""

    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def fit(self, *args, **kwargs):
        return self

    def predict_proba(self, X, dropout_sampling=None):
        return self.probs


def build_modal(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    if workload not in UNCERTAINTY:
        raise NotImplementedError
    from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
    from sklearn.base import BaseEstimator

    class Precomputed(BaseEstimator):
        def __init__(self, probs=None):
            self.probs = probs

        def fit(self, X, y=None):
            return self

        def predict_proba(self, X):
            return self.probs

    clf = Precomputed(data)
    strategy = {"entropy": entropy_sampling, "margin": margin_sampling,
                "least_confidence": uncertainty_sampling}[workload]
    # X is the pool the classifier predicts on; the wrapped classifier ignores it and returns the probabilities
    return lambda: np.asarray(strategy(clf, data, n_instances=s["k"])[0], dtype=np.int64)


def build_baal(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    if workload not in UNCERTAINTY and workload != "bald":
        raise NotImplementedError
    from baal.active.heuristics import BALD, Certainty, Entropy, Margin

    heuristic = {"entropy": Entropy, "margin": Margin, "least_confidence": Certainty, "bald": BALD}[workload]()
    # baal's layout: [n_sample, n_classes, n_iterations]
    x = np.ascontiguousarray(data.transpose(1, 2, 0)) if workload == "bald" else data
    return lambda: np.asarray(heuristic(x)[:s["k"]], dtype=np.int64)


def build_small_text(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    k = s["k"]
    if workload in UNCERTAINTY or workload == "bald":
        from small_text.query_strategies import BALD, BreakingTies, LeastConfidence, PredictionEntropy

        # small-text's dropout-sampled predict_proba returns [n_samples, n_dropout_samples, n_classes]
        probs = np.ascontiguousarray(data.transpose(1, 0, 2)) if workload == "bald" else data
        strategy = {"entropy": PredictionEntropy, "margin": BreakingTies, "least_confidence": LeastConfidence,
                    "bald": lambda: BALD(dropout_samples=data.shape[0])}[workload]()
        clf = _Proba(probs)
        unlabelled = np.arange(len(probs))
        labelled = np.zeros(0, dtype=np.int64)
        return lambda: np.asarray(strategy.query(clf, probs, unlabelled, labelled, np.zeros(0), n=k), dtype=np.int64)
    from small_text.query_strategies.coresets import greedy_coreset

    m = s["labelled"]
    # greedy_coreset's picks index the unlabelled rows but join the labelled ones as rows of x: it is only right
    # when the unlabelled rows come first, so they do here (the labelled 1,000 moved to the end)
    x = np.concatenate([data[m:], data[:m]])
    unlabelled, labelled = np.arange(len(data) - m), np.arange(len(data) - m, len(data))
    return lambda: np.asarray(greedy_coreset(x, unlabelled, labelled, k, distance_metric="euclidean",
                                             normalized=False), dtype=np.int64) + m


def build_skactiveml(workload: str, data: np.ndarray, s: dict[str, int]) -> Query:
    from skactiveml.base import SkactivemlClassifier

    k = s["k"]

    class Precomputed(SkactivemlClassifier):
        """Fitted already: predict_proba / sample_proba return the precomputed probabilities."""

        def __init__(self, probs=None, mc=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.probs, self.mc = probs, mc

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X):
            return self.probs

        def sample_proba(self, X):
            return self.mc

    if workload in UNCERTAINTY:
        from skactiveml.pool import UncertaintySampling

        clf = Precomputed(probs=data, classes=np.arange(data.shape[1]))
        clf.classes_ = np.arange(data.shape[1])
        method = {"entropy": "entropy", "margin": "margin_sampling", "least_confidence": "least_confident"}[workload]
        strategy = UncertaintySampling(method=method, random_state=0)
        y = np.full(len(data), np.nan)
        # X is the pool the classifier predicts on (the classifier ignores it): the probabilities themselves
        return lambda: np.asarray(strategy.query(data, y, clf, fit_clf=False, batch_size=k), dtype=np.int64)
    if workload == "bald":
        from skactiveml.pool import GreedyBALD

        n = data.shape[1]
        clf = Precomputed(mc=data, classes=np.arange(data.shape[2]))
        clf.classes_ = np.arange(data.shape[2])
        strategy = GreedyBALD(sample_predictions_method_name="sample_proba", random_state=0)
        X, y = np.zeros((n, 1), dtype=np.float32), np.full(n, np.nan)
        return lambda: np.asarray(strategy.query(X, y, clf, fit_ensemble=False, batch_size=k), dtype=np.int64)
    from skactiveml.pool import CoreSet

    m = s["labelled"]
    y = np.full(len(data), np.nan)
    y[:m] = 0
    strategy = CoreSet(random_state=0)
    return lambda: np.asarray(strategy.query(data, y, batch_size=k), dtype=np.int64)


BUILD = {"activelab": build_activelab, "numpy": build_numpy, "read": build_read, "modal": build_modal,
         "baal": build_baal, "small-text": build_small_text, "scikit-activeml": build_skactiveml}
JIT = {"activelab"}          # compiles on first use: always timed after a warm-up, never from a single run


def supported(library: str, workload: str) -> bool:
    return library in ("activelab", "numpy", "read") or workload in API[library]


# --------------------------------------------------------------------------------------------- the child
def rss_mb(field: str = "VmRSS", pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def settle() -> None:
    """Give freed memory back to the OS before a baseline is read: glibc keeps freed blocks under its (adaptive, up
    to 32 MB) mmap threshold resident, so without this a call that reuses them would show no extra memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def emit(**event: Any) -> None:
    print("@@" + json.dumps(event), flush=True)


def run_case(args: argparse.Namespace) -> None:
    """One case in this (fresh) process; events go to stdout as @@{json} lines for the parent."""
    library, workload, threads = args.case
    threads = int(threads)
    if library in ("activelab", "baal"):
        import torch  # both import torch anyway; pin its threads before the first use

        torch.set_num_threads(threads)
    s = sizes(args.tiny)
    data = load(workload, args.tiny, Path(args.cache_dir))
    query = BUILD[library](workload, data, s)
    emit(event="ready", rss_mb=rss_mb())
    settle()
    before = rss_mb()
    can_reset = reset_peak()
    started = time.perf_counter()
    picks = query()
    first = time.perf_counter() - started
    first_peak = rss_mb("VmHWM") - before
    emit(event="warm", seconds=first)
    if first >= args.single_seconds and library not in JIT:
        times, peak, single = [first], first_peak, True
    else:
        times, peak, single = [], 0.0, False
        least = 3 if library in JIT else 1          # the first call compiled: its time says nothing
        repeats = min(args.repeats, max(least, int(args.case_budget // max(first, 1e-9))))
        del picks
        for _ in range(repeats):
            picks = None
            settle()
            before = rss_mb()
            reset_peak()
            started = time.perf_counter()
            picks = query()
            times.append(time.perf_counter() - started)
            peak = max(peak, rss_mb("VmHWM") - before)
    emit(event="result", times=times, first_s=first, single_run=single,
         extra_peak_mb=peak if can_reset else float("nan"), picks=np.asarray(picks, dtype=np.int64).tolist())


# -------------------------------------------------------------------------------------------- the parent
def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("activelab", "numpy", "numba", "torch", "scipy", "scikit-learn", *DIST.values()):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    mem = None
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)     # tracked files changed since the commit (this script's own output is not)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "avx2": " avx2" in flags, "avx512f": " avx512f" in flags,
            "mem_gib": mem, "platform": platform.platform(), "python": platform.python_version(),
            "git": commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
            "load_average_before": round(os.getloadavg()[0], 2)}


def peer_install_errors() -> dict[str, str]:
    """What benchmarks/setup_peers.sh recorded for peers it could not install (next to this python's venv)."""
    path = Path(sys.prefix) / ".peer-errors"
    errors = {}
    if path.exists():
        for line in path.read_text().splitlines():
            req, _, why = line.partition("\t")
            name = req.split("==")[0].strip().lower()
            for lib, dist in DIST.items():
                if dist.lower() == name:
                    errors[lib] = f"{req} did not install: {why.strip()}"
    return errors


def watch(proc: subprocess.Popen, library: str, events: dict, ready_at: list, started: float,
          args: argparse.Namespace) -> str | None:
    """Wait for the case, killing it past the cap, the memory limit or an overall limit; returns why it was killed."""
    while proc.poll() is None:
        time.sleep(0.05)
        try:
            rss = rss_mb("VmRSS", str(proc.pid))
        except (OSError, ValueError):
            continue
        now = time.perf_counter()
        killed = None
        if rss > args.mem_limit_mb:
            killed = f"killed: RSS over the {args.mem_limit_mb:.0f} MB limit"
        elif ready_at and "warm" not in events and now - ready_at[0] > args.cap_seconds and library != "numpy":
            killed = "cap"
        elif now - started > args.cap_seconds * 3 + args.case_budget + 300:
            killed = "killed: the case ran past its overall time limit"
        if killed:
            proc.kill()
            if ready_at and killed != "cap":
                killed += f" ({now - ready_at[0]:.1f} s into the query)"
            return killed
    return None


def launch(library: str, workload: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh process, enforcing the cap and the memory limit; returns its row."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                        "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")}}
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, __file__, "--case", library, workload, str(threads), "--repeats", str(args.repeats),
           "--cache-dir", args.cache_dir, "--single-seconds", str(args.single_seconds),
           "--case-budget", str(args.case_budget)] + (["--tiny"] if args.tiny else [])
    row: dict[str, Any] = {"library": library, "workload": workload, "threads": threads, "median_s": None,
                           "extra_peak_mb": None, "overlap": None, "lower_bound": False, "single_run": False,
                           "repeats": 0, "error": None}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    events: dict[str, dict] = {}
    ready_at: list[float] = []
    err: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout:
            if line.startswith("@@"):
                event = json.loads(line[2:])
                events[event["event"]] = event
                if event["event"] == "ready":
                    ready_at.append(time.perf_counter())

    def read_stderr() -> None:
        err.extend(proc.stderr)

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    killed = None
    try:
        killed = watch(proc, library, events, ready_at, started, args)
    finally:
        if proc.poll() is None:          # interrupted (Ctrl-C, SIGTERM): take the case down with us
            proc.kill()
    proc.wait()
    for t in readers:
        t.join(timeout=5)
    now = time.perf_counter()
    row["wall_s"] = round(now - started, 2)
    if killed == "cap":
        row.update(median_s=float(args.cap_seconds), lower_bound=True,
                   note=f"first call still running after {args.cap_seconds:g} s: killed (lower bound)")
    elif killed:
        row["error"] = killed
    elif "result" not in events:
        tail = [line.rstrip() for line in err if line.strip()]
        row["error"] = (tail[-1] if tail else f"exit status {proc.returncode}")[:300]
    else:
        res = events["result"]
        row.update(median_s=float(np.median(res["times"])), times_s=res["times"], first_call_s=res["first_s"],
                   single_run=res["single_run"], repeats=len(res["times"]),
                   extra_peak_mb=None if res["extra_peak_mb"] != res["extra_peak_mb"] else res["extra_peak_mb"],
                   picks=res["picks"])
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`", "",
             "Machine: {cpu}, {cpu_count} CPUs (AVX2: {avx2}, AVX-512: {avx512f}), {mem_gib} GiB; Python {python}; "
             "git {git}; load average {load_average_before} before, {load_average_after} after; "
             "total {total_minutes} min.".format(**meta["machine"]), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + ".", "",
             "Data (numpy default_rng, seed 0, float32): " + "; ".join(f"{w}: {d}" for w, d in meta["data"].items())
             + ".", "",
             f"Median of up to {meta['repeats']} timed calls after a warm-up (fewer where they would pass "
             f"{meta['case_budget_s']:g} s; activelab at least 3), each case in a fresh process; threads 1 and all "
             f"({os.cpu_count()}). Extra peak MB: the largest over the timed calls of peak RSS (VmHWM, reset before "
             "the call) minus RSS just before it (after gc and malloc_trim, so memory the allocator kept from an "
             "earlier call is not counted as free). Overlap: |picks & reference picks| / k (reference: float64 "
             "numpy for the uncertainty workloads, float32 numpy farthest-first for k-center). Ratio: median / the "
             "fastest peer's median for the same workload and threads (below 1 = faster than every peer; '<= X' "
             f"where every peer passed the cap). '>= X': the first call was killed after the {meta['cap_seconds']:g} "
             f"s cap (a lower bound); '†': one call only (the first took over {meta['single_seconds']:g} s); n/a: "
             "the library has no such query.", "",
             "| workload | library | threads | median s | extra peak MB | overlap | ratio vs fastest peer |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("na"):
            cells = ["n/a", "", "", ""]
        elif r.get("skipped"):
            cells = [r["skipped"], "", "", ""]
        elif r["error"]:
            cells = [f"error: {r['error']}", "", "", ""]
        else:
            mark = ">= " if r["lower_bound"] else ""
            dagger = " †" if r["single_run"] else ""
            cells = [f"{mark}{r['median_s']:.3g}{dagger}",
                     "" if r["extra_peak_mb"] is None else f"{r['extra_peak_mb']:.0f}",
                     "" if r["overlap"] is None else f"{r['overlap']:.3f}",
                     "" if r.get("ratio") is None else
                     f"{ {'lower': '>= ', 'upper': '<= '}.get(r['ratio_bound'], '')}{r['ratio']:.3g}"]
        threads = ("–" if r["threads"] is None else
                   "all" if r["threads"] == os.cpu_count() and r["threads"] != 1 else str(r["threads"]))
        lines.append(f"| {r['workload']} | {LABEL[r['library']]} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DATA_NOTE = {
    "entropy": "top-{k} of {n:,} x {classes} probabilities, rows ~ Dirichlet(1)",
    "margin": "the same probabilities", "least_confidence": "the same probabilities",
    "bald": "top-{k} of {bald_n:,} items x {samples} MC samples x {classes} classes, sample ~ Dirichlet(a m) with "
            "m ~ 0.9 Dirichlet(1) + 0.1/{classes}, a ~ log-uniform [2, 200]",
    "kcenter_mixture": "{k} picks from {emb_n:,} x {dim} embeddings, the first {labelled:,} labelled; a mixture of "
                       "{clusters} Gaussians (centres ~ N(0, 4 I), weights ~ Dirichlet(2), spread ~ U[0.5, 1.5])",
    "kcenter_isotropic": "{k} picks from {emb_n:,} x {dim} isotropic N(0, I) embeddings, the first {labelled:,} "
                         "labelled",
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts; 'all' = os.cpu_count()")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median reported)")
    p.add_argument("--cap-seconds", type=float, default=60.0, help="kill a first call still running after this")
    p.add_argument("--single-seconds", type=float, default=5.0,
                   help="a first call slower than this is the result (not repeated); not for JIT-compiled code")
    p.add_argument("--case-budget", type=float, default=10.0, help="cut the repeats to fit this many seconds")
    p.add_argument("--rerun-capped", action="store_true",
                   help="run a peer again with more threads after its first call passed the cap (default: skip)")
    p.add_argument("--mem-limit-mb", type=float, default=10240.0, help="kill a case whose RSS passes this")
    p.add_argument("--tiny", action="store_true", help="small sizes (CI): 2,000 rows, k=50")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--cache-dir", default=str(ROOT / ".cache" / "query_speed"))
    p.add_argument("--case", nargs=3, metavar=("LIBRARY", "WORKLOAD", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        return run_case(args)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # so a running case is killed with us
    t0 = time.perf_counter()
    threads = sorted({os.cpu_count() if t == "all" else int(t) for t in args.threads})
    meta: dict[str, Any] = {"command": shlex.join([Path(sys.executable).relative_to(ROOT).as_posix()
                                                   if Path(sys.executable).is_relative_to(ROOT) else sys.executable,
                                                   "benchmarks/query_speed.py", *(argv or sys.argv[1:])]),
                            "machine": machine(), "versions": versions(), "repeats": args.repeats,
                            "cap_seconds": args.cap_seconds, "single_seconds": args.single_seconds,
                            "case_budget_s": args.case_budget, "mem_limit_mb": args.mem_limit_mb, "seed": SEED,
                            "sizes": sizes(args.tiny), "api": {LABEL[k]: v for k, v in API.items()}}
    s = sizes(args.tiny)
    meta["data"] = {w: DATA_NOTE[w].format(**s) for w in args.workloads}
    for w in args.workloads:                 # make the cached data once, before any case
        load(w, args.tiny, Path(args.cache_dir))
    install_errors = peer_install_errors()
    order = ["numpy"] + [lib for lib in LIBRARIES if lib != "numpy"]     # the reference first: overlaps need it
    rows: list[dict] = []
    for workload in args.workloads:
        reference: set[int] | None = None
        capped: dict[str, int] = {}             # peers whose first call passed the cap: not run again
        for n_threads in threads:
            for library in order:
                if library not in args.libraries and not (library == "numpy" and reference is None):
                    continue
                base = {"library": library, "workload": workload, "threads": n_threads, "median_s": None,
                        "extra_peak_mb": None, "overlap": None, "lower_bound": False, "single_run": False,
                        "repeats": 0, "error": None, "api": API[library].get(workload)}
                if not supported(library, workload):
                    if n_threads == threads[0]:          # one n/a row per library and workload
                        rows.append({**base, "threads": None, "na": True})
                    continue
                if library in PEERS:
                    if library in install_errors:
                        rows.append({**base, "error": install_errors[library]})
                        continue
                    if importlib.util.find_spec(MODULE[library]) is None:     # (an import would cost seconds)
                        rows.append({**base, "error": f"not installed here (no module {MODULE[library]}); run bash "
                                                      "benchmarks/setup_peers.sh, then .cache/bench-venv/bin/python"})
                        continue
                if library in capped and not args.rerun_capped:
                    rows.append({**base, "skipped": f"not run: the first call with {capped[library]} thread(s) "
                                                    f"passed the {args.cap_seconds:g} s cap"})
                    continue
                print(f"[{time.perf_counter() - t0:6.0f} s] {workload} / {library} / {n_threads} thread(s)",
                      file=sys.stderr, flush=True)
                row = {**base, **launch(library, workload, n_threads, args), "api": base["api"]}
                if row["lower_bound"]:
                    capped.setdefault(library, n_threads)
                picks = row.pop("picks", None)
                if library == "numpy" and picks is not None and reference is None:
                    reference = set(picks)
                if picks is not None and reference is not None and library != "read":
                    row["overlap"] = len(reference & set(picks)) / s["k"]
                if library == "numpy" and library not in args.libraries:
                    continue                 # run for the overlaps only
                rows.append(row)
    for row in rows:                           # ratio vs the fastest peer of the same workload and threads
        same = [r for r in rows if r["library"] in PEERS and r["workload"] == row["workload"]
                and r["threads"] == row["threads"] and r["median_s"] is not None]
        done = [r["median_s"] for r in same if not r["lower_bound"]]
        row["fastest_peer_s"] = min(done) if done else None
        row["ratio"], row["ratio_bound"] = None, None
        if row["median_s"] is None:
            continue
        if done:
            row["ratio"] = row["median_s"] / min(done)
            row["ratio_bound"] = "lower" if row["lower_bound"] else None
        elif same and not row["lower_bound"]:     # every peer passed the cap: the ratio is at most this
            row["ratio"], row["ratio_bound"] = row["median_s"] / args.cap_seconds, "upper"
    meta["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
    meta["machine"]["total_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    table = markdown(rows, meta)
    print(table)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "query_speed.md").write_text("# Query speed\n\n" + table)
    (out / "query_speed.json").write_text(json.dumps({**meta, "cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
