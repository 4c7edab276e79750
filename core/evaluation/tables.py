"""How a comparison's summary (:mod:`activelab.evaluation.statistics`) is shown: ``compare.csv`` rows, the
``compare.md`` tables and the ``compare.png`` plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from activelab.report import _pyplot, _save

from .statistics import ALPHA, INTERVAL


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per setting, strategy and round."""
    stats = ("mean", "std", "ci_low", "ci_high")
    return [{"setting": setting, "strategy": strategy, "round": rnd, "seeds": s["n_seeds"][k],
             **{x: s[x][k] for x in summary["x"]},
             **{f"{m}_{stat}": (s["metrics"][m][k] or {}).get(stat) for m in summary["metrics"] for stat in stats}}
            for setting, info in summary["settings"].items() for strategy, s in info["strategies"].items()
            for k, rnd in enumerate(s["rounds"])]


def _pm(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    return f"{c['mean']:.3f}" + (f" ± {c['ci_high'] - c['mean']:.3f}" if c["ci_high"] is not None else "")


def _matrix(p: dict[str, Any]) -> list[str]:
    names = p["strategies"]
    lines = ["| wins \\ loses | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {a} | " + " | ".join("" if i == j else f"{v:.2f}" for j, v in enumerate(p["matrix"][i])) + " |"
              for i, a in enumerate(names)]
    return lines + ["| losses (column sum) | " + " | ".join(f"{v:.2f}" for v in p["losses"]) + " |", ""]


def markdown(summary: dict[str, Any], title: str, command: str) -> str:
    metric, lower = summary["metric"], summary["lower_is_better"]
    text = [f"# {title}", "", f"Made by: `{command}`", "",
            f"Cells: mean ± half-width of the 95% {INTERVAL}; a cell without ± has one seed. {metric}: "
            f"{'lower' if lower else 'higher'} is better.", ""]
    for setting, info in summary["settings"].items():
        strategies = info["strategies"]
        text += [f"## {setting}", "", "seeds: " + ", ".join(f"{k} {len(s['seeds'])}" for k, s in strategies.items()),
                 ""]
        counts = sorted({n for s in strategies.values() for n in s["n_labeled"]})
        for m in summary["metrics"]:
            cell = {(k, n): c for k, s in strategies.items() for n, c in zip(s["n_labeled"], s["metrics"][m])}
            text += [f"| {m} @ labels | " + " | ".join(strategies) + " |", "|---:|" + "---:|" * len(strategies)]
            text += [f"| {n:g} | " + " | ".join(_pm(cell.get((k, n))) for k in strategies) + " |" for n in counts]
            text.append("")
        xs = summary["x"]
        unit = f" ({summary['cost_unit']})" if summary.get("cost_unit") else ""
        text += [f"Area under the budget curve of {metric} (per seed: trapezoid rule over labelled items"
                 + (f" or cost{unit}" if "cost" in xs else "") + ", divided by its range, i.e. "
                 f"the mean {metric} over the budget; mean ± 95% interval over seeds):", "",
                 "| strategy | " + " | ".join(f"AUC over {'labels' if x == 'n_labeled' else x}" for x in xs) + " |",
                 "|---|" + "---:|" * len(xs)]
        text += [f"| {k} | " + " | ".join(_pm(s["auc" if x == "n_labeled" else f"auc_{x}"]) for x in xs) + " |"
                 for k, s in strategies.items()]
        text.append("")
        if t := info["target"]:
            text += [f"Labels needed for the mean {metric} to reach {t['strategy']}'s final {t['score']:.3f} "
                     f"(at {t['n_labeled']:g} labels{'; lower is better' if lower else ''}):", "",
                     f"| strategy | labels | × {t['strategy']}'s |", "|---|---:|---:|"]
            for k, s in strategies.items():
                n, ratio = s["labels_to_reach"], s["ratio"]
                text.append(f"| {k} | not reached | |" if n is None else
                            f"| {k} | {n:g} | {'' if ratio is None else f'{ratio:.2f}x'} |")
            text.append("")
        text.append(f"Pairwise penalty matrix (Ash et al. 2020): at each label count a two-sided paired t-test over "
                    f"seeds (alpha {ALPHA}) on the difference in {metric}; a significant win adds 1/L (L = "
                    f"{(info['penalty'] or {}).get('label_counts', ['the label counts'])[0]}) to row winner, column "
                    f"loser.")
        text += [""] + (_matrix(info["penalty"]) if info["penalty"] else
                        ["Not computed: the paired t-test needs at least 2 seeds shared by two strategies.", ""])
    if len(summary["settings"]) > 1 and summary["penalty"]:
        text += [f"## All settings: penalty matrix summed over {len(summary['penalty']['label_counts'])} settings", ""]
        text += _matrix(summary["penalty"])
    return "\n".join(text)


def _axis(summary: dict[str, Any], x: str) -> str:
    """What an x axis counts: labelled items, or the cost in the task's unit (``cost_unit``, e.g. seconds of
    audio; compare.json files written before the unit was recorded say only "cost")."""
    if x == "n_labeled":
        return "labelled items"
    return f"cost: {summary['cost_unit']}" if x == "cost" and summary.get("cost_unit") else x


def plot_compare(summary: dict[str, Any], path: Path, x: str = "n_labeled") -> None:
    """One panel per setting, one curve per strategy: the mean over seeds, shaded by the 95% interval."""
    plt = _pyplot()
    settings = summary["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 4.5), squeeze=False)
    for ax, info in zip(axes[0], settings.values()):
        for strategy, s in info["strategies"].items():
            pts = [(v, c) for v, c in zip(s[x], s["metrics"][summary["metric"]]) if c]
            xs, mean = np.array([v for v, _ in pts]), np.array([c["mean"] for _, c in pts])
            ax.plot(xs, mean, marker="o", markersize=3, label=f"{strategy} (n={len(s['seeds'])})")
            low = np.array([c["mean"] if c["ci_low"] is None else c["ci_low"] for _, c in pts])
            high = np.array([c["mean"] if c["ci_high"] is None else c["ci_high"] for _, c in pts])
            ax.fill_between(xs, low, high, alpha=0.15)
        ax.legend()
    _save(plt, fig, axes[0], summary["metric"], list(settings), path, dpi=110, xlabel=_axis(summary, x))
