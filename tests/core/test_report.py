"""Comparison reports: when a strategy reaches random's final value, for accuracies and for error rates."""
from activelab.report import labels_to_reach


def table(metric, rows):
    return [{"strategy": s, "n_labeled": n, f"{metric}_mean": v} for s, n, v in rows]


def test_higher_is_better_by_default():
    rows = table("accuracy", [("random", 10, 0.5), ("random", 20, 0.7), ("entropy", 10, 0.6), ("entropy", 20, 0.8),
                              ("bald", 10, 0.4), ("bald", 20, 0.6)])
    assert labels_to_reach(rows, "accuracy", 0.7) == {"random": 20, "entropy": 20, "bald": None}
    assert labels_to_reach(rows, "accuracy", 0.6) == {"random": 20, "entropy": 10, "bald": 20}


def test_error_rates_reach_a_target_from_above():
    rows = table("wer", [("random", 100, 0.9), ("random", 200, 0.6), ("lossprediction", 100, 0.8),
                         ("lossprediction", 200, 0.5), ("least_confidence", 100, 0.95), ("least_confidence", 200, 0.7)])
    assert labels_to_reach(rows, "wer", 0.6, lower_is_better=True) == {
        "random": 200, "lossprediction": 200, "least_confidence": None}
    assert labels_to_reach(rows, "wer", 0.85, lower_is_better=True) == {
        "random": 200, "lossprediction": 100, "least_confidence": 200}
    # read as higher-is-better, a WER of 0.95 would wrongly "reach" 0.85 at once
    assert labels_to_reach(rows, "wer", 0.85)["least_confidence"] == 100
