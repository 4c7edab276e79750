"""A run's learning curve (``learning_curve.png``, redrawn after every round), and the plotting helpers the
comparison's plots share (:mod:`activelab.evaluation`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(rows: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> None:
    """Metric against labelled items for one run; a dashed line where each stopping criterion is first met."""
    points = [(r["n_labeled"], r[metric]) for r in rows if isinstance(r.get(metric), (int, float))]
    if not points:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker="o")
    first = stops(rows)
    for i, (name, n) in enumerate(first.items()):
        ax.axvline(n, linestyle="--", color=f"C{i + 1}", label=f"{name} met" + (" (stopped)" if any(
            r.get("stopped_by") == name for r in rows) else ""))
    if first:
        ax.legend(fontsize=8)
    tmp = path.with_name(path.stem + ".tmp.png")
    _save(plt, fig, [ax], metric, [title], tmp, dpi=100)
    tmp.replace(path)


def stops(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each stopping criterion met in ``rows`` and the label count of the round where it was first met."""
    first: dict[str, float] = {}
    for r in rows:
        for name in r.get("stop_met") or ():
            first.setdefault(name, r["n_labeled"])
    return first


def _save(plt, fig, axes, metric: str, titles: list[str], path: Path, dpi: int, xlabel: str = "labelled items"):
    for ax, title in zip(axes, titles):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
