"""Comparison statistics on known numbers: the t interval, the area under the budget curve, labels-to-reach (for
accuracies and for error rates), the pairwise penalty matrix (Ash et al. 2020) and the cost axis."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from activelab.evaluation import tables
from activelab.evaluation.compare import write_report
from activelab.evaluation.statistics import auc, interval, labels_to_reach, paired_better, penalty, summarise


def test_interval_is_the_student_t_interval_on_the_mean():
    values = [0.61, 0.65, 0.70, 0.58, 0.66]
    got = interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["mean"] == pytest.approx(0.64) and got["std"] == pytest.approx(np.std(values, ddof=1))
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["ci_high"] - got["mean"] == pytest.approx(2.7764451 * np.std(values, ddof=1) / math.sqrt(5))
    two = interval([1.0, 3.0])                                    # t(0.975, 1) = 12.706: a wide interval
    assert (two["ci_low"], two["ci_high"]) == (pytest.approx(2 - 12.7062047), pytest.approx(2 + 12.7062047))
    assert interval([0.5]) == {"mean": 0.5, "std": None, "ci_low": None, "ci_high": None, "n": 1}


def test_auc_is_the_trapezoid_over_the_label_range():
    # (10 * (0.5 + 0.7) / 2 + 20 * (0.7 + 0.8) / 2) / (40 - 10) = (6 + 15) / 30
    assert auc([10, 20, 40], [0.5, 0.7, 0.8]) == pytest.approx(0.7)
    assert auc([40, 10, 20], [0.8, 0.5, 0.7]) == pytest.approx(0.7)         # order of the points does not matter
    assert auc([10, 30], [0.4, 0.4]) == pytest.approx(0.4)                  # a flat curve: its value
    assert auc([25], [0.9]) == 0.9


def test_labels_to_reach_higher_and_lower_is_better():
    assert labels_to_reach([10, 20, 30], [0.5, 0.7, 0.8], 0.7) == 20
    assert labels_to_reach([10, 20, 30], [0.5, 0.6, 0.65], 0.7) is None
    assert labels_to_reach([100, 200], [0.8, 0.5], 0.6, lower_is_better=True) == 200
    assert labels_to_reach([100, 200], [0.95, 0.9], 0.85, lower_is_better=True) is None
    # read as higher-is-better, a WER of 0.95 would wrongly "reach" 0.85 at once
    assert labels_to_reach([100, 200], [0.95, 0.9], 0.85) == 100


def runs(setting, strategy, curves, seeds=None, cost=None):
    """Fabricated finished runs: ``curves[k]`` is seed k's score per round; 10 labels a round from 10."""
    return [{"setting": setting, "strategy": strategy, "seed": seed, "path": None,
             "rows": [{"round": r, "n_labeled": 10 + 10 * r, "wer": v, **({"cost": cost[r]} if cost else {})}
                      for r, v in enumerate(curve)]}
            for seed, curve in zip(seeds or range(len(curves)), curves)]


def test_labels_to_reach_randoms_final_error_rate_and_the_ratio():
    fabricated = (runs("t/a", "random", [[0.9, 0.7, 0.5, 0.4]] * 3)
                  + runs("t/a", "lossprediction", [[0.9, 0.6, 0.4, 0.3]] * 3)
                  + runs("t/a", "least_confidence", [[0.95, 0.8, 0.7, 0.6]] * 3))
    summary = summarise(fabricated, ["wer"], lower_is_better=True)
    info = summary["settings"]["t/a"]
    assert info["target"] == {"strategy": "random", "score": pytest.approx(0.4), "n_labeled": 40}
    got = {k: (s["labels_to_reach"], s["ratio"]) for k, s in info["strategies"].items()}
    assert got == {"random": (40, 1.0), "lossprediction": (30, 0.75), "least_confidence": (None, None)}
    # another target; read as higher-is-better every strategy "reaches" a WER at once
    other = summarise(fabricated, ["wer"], lower_is_better=True, target="least_confidence")["settings"]["t/a"]
    assert other["strategies"]["random"]["labels_to_reach"] == 30
    assert summarise(fabricated, ["wer"])["settings"]["t/a"]["strategies"]["least_confidence"]["labels_to_reach"] == 10


def noisy(rng, base, shift, seeds=5, rounds=4, noise=0.002):
    """Seed k's curve: a seed effect shared by every strategy (0.03 k: larger than the shift, so only a test
    paired by seed sees the shift), the shift, and a little noise."""
    return [[base + 0.03 * k + 0.05 * r + shift + rng.normal(0, noise) for r in range(rounds)] for k in range(seeds)]


def test_penalty_matrix_one_strategy_better_everywhere_and_ties():
    rng = np.random.default_rng(0)
    good, bad = noisy(rng, 0.5, 0.05), noisy(rng, 0.5, 0.0)
    tie = [[v + (0.01 if k % 2 else -0.01) * (k < 4) for v in c] for k, c in enumerate(bad)]  # +-0.01, mean 0
    summary = summarise(runs("t/a", "good", good) + runs("t/a", "bad", bad) + runs("t/a", "tie", tie), ["wer"])
    p = summary["settings"]["t/a"]["penalty"]
    assert p["strategies"] == ["good", "bad", "tie"] and p["label_counts"] == [4]
    matrix = np.array(p["matrix"])
    assert matrix[0, 1] == pytest.approx(1.0) and matrix[1, 0] == 0          # better at every label count
    assert matrix[1, 2] == matrix[2, 1] == 0                                 # symmetric differences: a tie
    assert p["losses"] == pytest.approx(matrix.sum(axis=0).tolist()) and p["losses"][0] == 0
    # lower is better (an error rate): the same numbers now say "bad" wins
    flipped = np.array(summarise(runs("t/a", "good", good) + runs("t/a", "bad", bad), ["wer"],
                                 lower_is_better=True)["settings"]["t/a"]["penalty"]["matrix"])
    assert flipped[1, 0] == pytest.approx(1.0) and flipped[0, 1] == 0


def test_penalty_counts_only_significant_rounds_and_sums_over_settings():
    rng = np.random.default_rng(1)
    good, bad = noisy(rng, 0.5, 0.05), noisy(rng, 0.5, 0.0)
    # better over the first two label counts, an exact tie (differences +-0.01, mean 0) over the last two
    half = [c[:2] + [v + (0.01 if k % 2 else -0.01) * (k < 4) for v in b[2:]]
            for k, (c, b) in enumerate(zip(good, bad))]
    fabricated = runs("t/a", "good", half) + runs("t/a", "bad", bad) + runs("t/b", "bad", bad) + \
        runs("t/b", "good", good)
    summary = summarise(fabricated, ["wer"])
    a, b = (np.array(summary["settings"][s]["penalty"]["matrix"]) for s in ("t/a", "t/b"))
    assert a[0, 1] == pytest.approx(0.5)                       # two of four label counts
    assert summary["settings"]["t/b"]["penalty"]["strategies"] == ["bad", "good"] and b[1, 0] == pytest.approx(1)
    total = summary["penalty"]
    assert total["strategies"] == ["good", "bad"] and total["label_counts"] == [4, 4]
    assert np.array(total["matrix"]) == pytest.approx(np.array([[0, 1.5], [0, 0]]))
    assert total["losses"] == pytest.approx([0, 1.5])


def test_the_paired_t_test():
    assert paired_better([1, 2, 3], [0, 1, 2]) == 1           # a constant difference is significant
    assert paired_better([1, 2, 3], [1, 2, 3]) == 0           # identical runs never are
    assert paired_better([0.50, 0.52, 0.49], [0.51, 0.50, 0.50]) == 0
    a, b = [0.8, 0.82, 0.79, 0.81, 0.80], [0.7, 0.71, 0.69, 0.72, 0.70]
    assert stats.ttest_rel(a, b).pvalue < 0.05 and paired_better(a, b) == 1 and paired_better(b, a) == -1


def test_one_seed_has_no_penalty_matrix_and_says_so(tmp_path):
    class Task:
        primary_metric = "wer"
        lower_is_better = ("wer",)

    one = runs("t/a", "random", [[0.9, 0.5]]) + runs("t/a", "entropy", [[0.5, 0.4]])
    assert penalty([{"a": {0: {0: 1.0}}, "b": {0: {0: 0.5}}}]) is None
    assert penalty([{"a": {0: {0: 1.0, 1: 0.9}}, "b": {0: {0: 0.5, 1: 0.4}}}])["matrix"] == [[0, 1], [0, 0]]
    write_report(one, tmp_path, ["wer"], Task, "activelab compare x", "x")
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert summary["settings"]["t/a"]["penalty"] is None and summary["penalty"] is None
    text = (tmp_path / "compare.md").read_text()
    assert "Not computed: the paired t-test needs at least 2 seeds" in text and "`activelab compare x`" in text
    assert summary["settings"]["t/a"]["strategies"]["entropy"]["ratio"] == pytest.approx(0.5)   # 10 of 20 labels


def test_cost_is_reported_when_every_row_has_it_and_silent_otherwise(tmp_path):
    class Task:
        primary_metric = "wer"

    with_cost = runs("t/a", "random", [[0.5, 0.7, 0.8]] * 2, cost=[0, 10, 40]) + \
        runs("t/a", "entropy", [[0.5, 0.8, 0.8]] * 2, cost=[0, 20, 30])
    write_report(with_cost, tmp_path / "cost", ["wer"], Task, "c", "c")
    summary = json.loads((tmp_path / "cost" / "compare.json").read_text())
    random = summary["settings"]["t/a"]["strategies"]["random"]
    assert summary["x"] == ["n_labeled", "cost"] and random["cost"] == [0, 10, 40]
    assert random["auc_cost"]["mean"] == pytest.approx((10 * 1.2 / 2 + 30 * 1.5 / 2) / 40)
    assert random["auc"]["mean"] == pytest.approx((0.6 + 0.75) / 2)
    assert (tmp_path / "cost" / "compare_cost.png").stat().st_size > 1000
    assert "AUC over cost" in (tmp_path / "cost" / "compare.md").read_text()
    assert "cost" in (tmp_path / "cost" / "compare.csv").read_text().splitlines()[0].split(",")

    assert "cost_unit" not in summary                           # the task does not say what its cost counts

    Task.cost_unit = "seconds of audio"
    write_report(with_cost, tmp_path / "unit", ["wer"], Task, "c", "c")
    summary = json.loads((tmp_path / "unit" / "compare.json").read_text())
    assert summary["cost_unit"] == "seconds of audio" and tables._axis(summary, "cost") == "cost: seconds of audio"
    assert "over labelled items or cost (seconds of audio)" in (tmp_path / "unit" / "compare.md").read_text()
    assert tables._axis(summary, "n_labeled") == "labelled items"

    with_cost[0]["rows"][1].pop("cost")                        # one row without a cost: no cost axis at all
    write_report(with_cost, tmp_path / "plain", ["wer"], Task, "c", "c")
    summary = json.loads((tmp_path / "plain" / "compare.json").read_text())
    assert summary["x"] == ["n_labeled"] and "auc_cost" not in summary["settings"]["t/a"]["strategies"]["random"]
    assert not (tmp_path / "plain" / "compare_cost.png").exists() and (tmp_path / "plain" / "compare.png").exists()
    assert "cost" not in (tmp_path / "plain" / "compare.md").read_text()


def test_the_learning_curve_marks_where_each_stopping_criterion_is_first_met(tmp_path, monkeypatch):
    from activelab import report

    rows = [{"round": 0, "n_labeled": 10, "accuracy": 0.5, "stop_met": []},
            {"round": 1, "n_labeled": 15, "accuracy": 0.6, "stop_met": ["expected_error"]},
            {"round": 2, "n_labeled": 20, "accuracy": 0.7, "stop_met": ["expected_error", "max_uncertainty"],
             "stopped_by": "max_uncertainty"}]
    assert report.stops(rows) == {"expected_error": 15, "max_uncertainty": 20}
    lines = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline",
                        lambda self, x, **kw: lines.append((x, kw["label"])) or original(self, x, **kw))
    report.plot_learning_curve(rows, "accuracy", tmp_path / "curve.png")
    assert lines == [(15, "expected_error met"), (20, "max_uncertainty met (stopped)")]
    assert (tmp_path / "curve.png").stat().st_size > 1000
