"""The statistics of ``activelab compare``: one JSON-ready summary of finished runs.

A comparison is a list of finished runs, each ``{"setting", "strategy", "seed", "rows"}`` (``rows``: the run's
metrics rows). A *setting* is one experiment (a task on one dataset under one recipe); within it, rounds with the
same index are pooled over seeds, and strategies are paired by seed. :func:`summarise` turns the runs into one
JSON-ready object (``compare.json``); :mod:`activelab.evaluation.tables` renders it.

Statistics, all over seeds: the mean, the sample standard deviation and the 95% Student t interval on the mean
(n - 1 degrees of freedom); the area under the budget curve of each seed (trapezoid rule over labelled items,
divided by the label range: the mean score over the budget); the labels a strategy needs for its mean to reach
the target strategy's final mean; and the pairwise penalty matrix of Ash et al. 2020 ("Deep Batch Active Learning
by Diverse, Uncertain Gradient Lower Bounds", ICLR; section "Pairwise comparisons"): for strategies i and j and
each label count (round) of a setting, a two-sided paired t-test over seeds on ``score_i - score_j`` at alpha =
0.05; when i is significantly better, ``P[i, j] += 1 / L`` (L: the setting's number of label counts), so a row
says how often a strategy wins, a column how often it loses, and several settings sum.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

LEVEL, ALPHA = 0.95, 0.05
INTERVAL = "Student t interval on the mean over seeds (n - 1 degrees of freedom)"


def interval(values) -> dict[str, Any] | None:
    """Mean, sample standard deviation and the 95% Student t interval on the mean of ``values`` (std and
    interval None for one value; None for none)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if not len(v):
        return None
    out: dict[str, Any] = {"mean": float(v.mean()), "std": None, "ci_low": None, "ci_high": None, "n": len(v)}
    if len(v) > 1:
        out["std"] = float(v.std(ddof=1))
        half = float(stats.t.ppf((1 + LEVEL) / 2, len(v) - 1)) * out["std"] / math.sqrt(len(v))
        out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out


def auc(xs, ys) -> float:
    """Area under ``ys`` over ``xs`` (trapezoid rule) divided by the range of ``xs``: the mean score over the
    budget (the score itself for a single point)."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    span = xs[-1] - xs[0]
    return float(ys.mean()) if span == 0 else float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / span)


def labels_to_reach(xs, means, target: float, lower_is_better: bool = False) -> float | None:
    """The smallest x whose mean reaches ``target`` (at least it; at most it for an error rate such as WER when
    ``lower_is_better``); None if never."""
    hits = [x for x, m in zip(xs, means) if m is not None and (m <= target if lower_is_better else m >= target)]
    return min(hits) if hits else None


def paired_better(a, b) -> int:
    """Two-sided paired t-test (alpha 0.05) on ``a - b`` over pairs: 1 if a is significantly higher, -1 if lower,
    0 if not significant (identical pairs never are; a constant non-zero difference always is)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    sd = d.std(ddof=1)
    if sd == 0:
        return int(np.sign(d.mean()))
    p = 2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(len(d))), len(d) - 1)
    return int(np.sign(d.mean())) if p < ALPHA else 0


def penalty(settings: list[dict[str, dict[int, dict[Any, float]]]], lower_is_better: bool = False
            ) -> dict[str, Any] | None:
    """The pairwise penalty matrix summed over settings, each given as ``scores[strategy][round][seed]``:
    ``matrix[i][j]`` is the number of settings' worth of label counts at which strategy i beat j (rows win,
    columns lose; a fraction for one setting); ``losses`` are the column sums. None when no two strategies share
    two seeds at any round (the test is undefined)."""
    names = list(dict.fromkeys(n for scores in settings for n in scores))
    matrix, counts, tested = np.zeros((len(names), len(names))), [], False
    for scores in settings:
        rounds = sorted({r for by_round in scores.values() for r in by_round})
        counts.append(len(rounds))
        for r, (a, b) in itertools.product(rounds, itertools.permutations(scores, 2)):
            sa, sb = scores[a].get(r, {}), scores[b].get(r, {})
            seeds = [seed for seed in sa if seed in sb]
            if len(seeds) > 1:
                tested = True
                sign = paired_better([sa[x] for x in seeds], [sb[x] for x in seeds])
                matrix[names.index(a), names.index(b)] += (sign == (-1 if lower_is_better else 1)) / len(rounds)
    return {"strategies": names, "matrix": matrix.tolist(), "losses": matrix.sum(axis=0).tolist(),
            "label_counts": counts} if tested else None


def _finite(row: dict[str, Any], key: str) -> bool:
    return isinstance(row.get(key), (int, float)) and math.isfinite(row[key])


def summarise(runs: list[dict[str, Any]], metrics: list[str], lower_is_better: bool = False,
              target: str | None = None) -> dict[str, Any]:
    """Everything ``compare.json`` holds; the statistics of :mod:`this module <activelab.evaluation.statistics>` on
    ``metrics[0]``, mean and interval per round for every metric. ``target``: the strategy whose final mean the
    others must reach (default ``random`` when present)."""
    metric, xs = metrics[0], ["n_labeled"] + (["cost"] if all(_finite(r, "cost") for u in runs for r in u["rows"])
                                               else [])
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        groups[run["setting"]][run["strategy"]].append(run)
    settings, every = {}, []
    for name, by_strategy in groups.items():
        out, scores = {}, {}
        for strategy, seeds in by_strategy.items():
            rounds = sorted({r["round"] for u in seeds for r in u["rows"]})
            at = [[(u["seed"], r) for u in seeds for r in u["rows"] if r["round"] == rnd] for rnd in rounds]
            s = out[strategy] = {"seeds": [u["seed"] for u in seeds], "rounds": rounds, "n_seeds": list(map(len, at)),
                                 **{x: [float(np.mean([r[x] for _, r in rows])) for rows in at] for x in xs},
                                 "metrics": {m: [interval([r[m] for _, r in rows if _finite(r, m)]) for rows in at]
                                             for m in metrics}}
            for x in xs:
                per_seed = [auc(*zip(*pts)) for u in seeds
                            if (pts := [(r[x], r[metric]) for r in u["rows"] if _finite(r, metric)])]
                s["auc" if x == "n_labeled" else f"auc_{x}"] = {**interval(per_seed), "per_seed": per_seed} \
                    if per_seed else None
            scores[strategy] = {rnd: {seed: r[metric] for seed, r in rows if _finite(r, metric)}
                                for rnd, rows in zip(rounds, at)}
        goal = target or "random"
        final = [(x, c["mean"]) for x, c in zip(out[goal]["n_labeled"], out[goal]["metrics"][metric]) if c] \
            if goal in out else []
        reach = {"strategy": goal, "score": final[-1][1], "n_labeled": final[-1][0]} if final else None
        for s in out.values():
            n = reach and labels_to_reach(s["n_labeled"], [c and c["mean"] for c in s["metrics"][metric]],
                                          reach["score"], lower_is_better)
            s["labels_to_reach"], s["ratio"] = n, n / reach["n_labeled"] if n is not None and reach["n_labeled"] \
                else None
        settings[name] = {"strategies": out, "target": reach, "penalty": penalty([scores], lower_is_better)}
        every.append(scores)
    return {"metric": metric, "metrics": metrics, "lower_is_better": lower_is_better, "confidence": LEVEL,
            "interval": INTERVAL, "x": xs, "settings": settings,
            "penalty": penalty(every, lower_is_better)}
