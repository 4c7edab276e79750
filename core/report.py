"""Learning-curve reports: one run's curve, and the table + plot of ``activelab compare``."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(rows: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> None:
    """Metric against labelled items for one run."""
    points = [(r["n_labeled"], r[metric]) for r in rows if isinstance(r.get(metric), (int, float))]
    if not points:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o")
    tmp = path.with_name(path.stem + ".tmp.png")
    _save(plt, fig, ax, metric, title, tmp, dpi=100)
    tmp.replace(path)


def _save(plt, fig, ax, metric: str, title: str, path: Path, dpi: int) -> None:
    ax.set_xlabel("labelled items")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def aggregate(runs: dict[str, list[list[dict[str, Any]]]], metrics: Iterable[str]) -> list[dict[str, Any]]:
    """``runs[strategy] = [rows of seed 1, rows of seed 2, ...]`` -> one row per (strategy, round) with the mean
    and standard deviation (over seeds) of each metric and of n_labeled."""
    table = []
    for strategy, seeds in runs.items():
        by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for rows in seeds:
            for row in rows:
                by_round[row["round"]].append(row)
        for rnd in sorted(by_round):
            group = by_round[rnd]
            out: dict[str, Any] = {"strategy": strategy, "round": rnd, "seeds": len(group),
                                   "n_labeled": float(np.mean([g["n_labeled"] for g in group]))}
            for m in metrics:
                vals = [g[m] for g in group if isinstance(g.get(m), (int, float)) and not math.isnan(g[m])]
                if vals:
                    out[f"{m}_mean"] = float(np.mean(vals))
                    out[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            table.append(out)
    return table


def labels_to_reach(table: list[dict[str, Any]], metric: str, target: float,
                    lower_is_better: bool = False) -> dict[str, float | None]:
    """For each strategy, the smallest label count whose mean metric reaches ``target`` (at least it, or at most
    it for an error rate such as WER when ``lower_is_better``); None if never."""
    out: dict[str, float | None] = {}
    for row in table:
        s = row["strategy"]
        out.setdefault(s, None)
        val = row.get(f"{metric}_mean")
        reached = val is not None and (val <= target if lower_is_better else val >= target)
        if reached and (out[s] is None or row["n_labeled"] < out[s]):
            out[s] = row["n_labeled"]
    return out


def markdown_table(table: list[dict[str, Any]], metrics: list[str]) -> str:
    """Rows = label counts, columns = strategies, cells = mean ± std of each metric."""
    strategies = list(dict.fromkeys(r["strategy"] for r in table))
    counts = sorted({r["n_labeled"] for r in table})
    cell = {(r["strategy"], r["n_labeled"]): r for r in table}
    lines = []
    for m in metrics:
        lines.append(f"| {m} @ labels | " + " | ".join(strategies) + " |")
        lines.append("|---:|" + "---:|" * len(strategies))
        for n in counts:
            vals = []
            for s in strategies:
                r = cell.get((s, n))
                vals.append(f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}" if r and f"{m}_mean" in r else "")
            lines.append(f"| {n:g} | " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_compare(table: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> None:
    """One curve per strategy (mean over seeds, shaded ± one standard deviation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in table):
        rows = [r for r in table if r["strategy"] == strategy and f"{metric}_mean" in r]
        xs = np.array([r["n_labeled"] for r in rows])
        mean = np.array([r[f"{metric}_mean"] for r in rows])
        std = np.array([r[f"{metric}_std"] for r in rows])
        ax.plot(xs, mean, marker="o", markersize=3, label=f"{strategy} (n={rows[0]['seeds'] if rows else 0})")
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    ax.legend()
    _save(plt, fig, ax, metric, title, path, dpi=110)
