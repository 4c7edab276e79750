"""Stopping criteria (issue 16, item 4): each fires on a planted plateau and not before, kappa is sklearn's, the
loop records the values every round and ends early (status done) when a criterion with ``end_loop`` is met, and a
paused or killed run reports exactly what an uninterrupted one does."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from activelab import recipe as recipes
from activelab.loop import Runner
from activelab.protocol import EMBEDDINGS, PROBS, Candidates
from activelab.run import create_run, status
from activelab.store import LabelStore
from activelab.strategies.stopping import (
    ExpectedError,
    MaxUncertainty,
    OverallUncertainty,
    StabilizingPredictions,
    cohen_kappa,
    normalised_entropy,
    stop_set,
)
from activelab.testing import StoppingConformance, make_context
from activelab.testing.toy import ToyTask


# ------------------------------------------------------------------------------------------- conformance
class TestStabilizingPredictionsConformance(StoppingConformance):
    covers = ("core", "stopping", "stabilizing_predictions")

    def make_criterion(self):
        return StabilizingPredictions(StabilizingPredictions.Config(stop_set=100, window=1))


class TestMaxUncertaintyConformance(StoppingConformance):
    covers = ("core", "stopping", "max_uncertainty")

    def make_criterion(self):
        return MaxUncertainty(MaxUncertainty.Config(sample=50))


class TestOverallUncertaintyConformance(StoppingConformance):
    covers = ("core", "stopping", "overall_uncertainty")

    def make_criterion(self):
        return OverallUncertainty()


class TestExpectedErrorConformance(StoppingConformance):
    covers = ("core", "stopping", "expected_error")

    def make_criterion(self):
        return ExpectedError(ExpectedError.Config(end_loop=True))


# ------------------------------------------------------------------------------------------- planted tasks
class Planted:
    """A task whose predictions the test sets (``probs``, one row per pool item), in chunks of 7."""

    outputs = frozenset({PROBS})

    def __init__(self, probs):
        self.probs = np.asarray(probs, dtype=np.float64)

    def pool_ids(self):
        return [str(i) for i in range(len(self.probs))]

    def predict(self, ids, want, mc=None):
        rows = ids.rows if isinstance(ids, Candidates) else np.array([int(i) for i in ids], dtype=np.int64)
        for start in range(0, len(rows), 7):
            yield {PROBS: self.probs[rows[start:start + 7]]}


def one_hot(labels, n_classes=3, confidence=0.9):
    labels = np.asarray(labels)
    probs = np.full((len(labels), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def judge(criterion, rounds, unlabelled=None):
    """The verdicts of ``criterion`` over rounds of planted probabilities, its state passed on through JSON."""
    task, state, out = Planted(rounds[0]), None, []
    for r, probs in enumerate(rounds):
        task.probs = np.asarray(probs, dtype=np.float64)
        ids = Candidates(task.pool_ids()) if unlabelled is None else unlabelled
        verdict = criterion.update(task, ids, state, make_context(round=r, seed=5))
        state = json.loads(json.dumps(verdict.state, allow_nan=False))
        out.append(verdict)
    return out


# ------------------------------------------------------------------------------------------- kappa
@pytest.mark.parametrize("n_classes, n", [(2, 10), (3, 200), (10, 1000), (5, 7)])
def test_kappa_matches_sklearn(n_classes, n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        a = rng.integers(n_classes, size=n)
        b = np.where(rng.random(n) < 0.7, a, rng.integers(n_classes, size=n))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    b = (a + 1) % n_classes                       # never agree
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa(a, a) == 1.0


def test_kappa_of_two_constant_labellings():
    """sklearn's kappa is NaN when both labellings are one and the same class; two such models agree: 1."""
    same = np.zeros(20, dtype=int)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")            # sklearn warns that kappa is undefined (which warning: by version)
        assert np.isnan(cohen_kappa_score(same, same))
        assert cohen_kappa(same, same + 1) == pytest.approx(cohen_kappa_score(same, same + 1))   # 0: chance level
    assert cohen_kappa(same, same) == 1.0
    with pytest.raises(ValueError, match="same, non-empty"):
        cohen_kappa([0, 1], [0])


def test_stop_set_is_drawn_once_from_the_seed():
    rows = stop_set(10_000, 2000, seed=4)
    assert len(rows) == len(set(rows.tolist())) == 2000 and np.all(np.diff(rows) > 0) and rows.max() < 10_000
    np.testing.assert_array_equal(rows, stop_set(10_000, 2000, seed=4))
    assert not np.array_equal(rows, stop_set(10_000, 2000, seed=5))
    np.testing.assert_array_equal(stop_set(50, 2000, seed=4), np.arange(50))   # a small pool: all of it


# ------------------------------------------------------------------------------------------- planted plateaus
def test_stabilizing_predictions_fires_when_predictions_stop_changing():
    rng = np.random.default_rng(0)
    a0, a1, a2 = (rng.integers(3, size=60) for _ in range(3))
    rounds = [one_hot(a) for a in (a0, a1, a2, a2, a2, a2)]       # the predictions stop changing after round 2
    verdicts = judge(StabilizingPredictions(), rounds)
    kappas = [v.values["stop_kappa"] for v in verdicts]
    assert kappas[0] is None
    assert kappas[1] == pytest.approx(cohen_kappa_score(a0, a1))
    assert kappas[2] == pytest.approx(cohen_kappa_score(a1, a2))
    assert kappas[3:] == [1.0, 1.0, 1.0]
    means = [v.values["stop_kappa_mean"] for v in verdicts]
    assert means[:3] == [None, None, None]                     # window 3: three kappas first (rounds 1..3)
    assert means[3] == pytest.approx((kappas[1] + kappas[2] + 1) / 3) and means[4] == pytest.approx((kappas[2] + 2) / 3)
    assert [v.met for v in verdicts] == [False] * 5 + [True]   # only once the whole window agrees
    assert "mean kappa 1.0000 >= 0.99 over the last 3 rounds" in verdicts[5].reason


def test_stabilizing_predictions_threshold_and_window():
    rng = np.random.default_rng(1)
    base = rng.integers(3, size=200)
    flipped = [base.copy() for _ in range(4)]
    for r, labels in enumerate(flipped):          # fewer and fewer predictions change from round to round
        labels[: 40 // (r + 1)] = (labels[: 40 // (r + 1)] + r + 1) % 3
    verdicts = judge(StabilizingPredictions(StabilizingPredictions.Config(threshold=0.85, window=1)),
                     [one_hot(f) for f in flipped])
    kappas = [v.values["stop_kappa"] for v in verdicts]
    expected = [None] + [cohen_kappa_score(x, y) for x, y in zip(flipped, flipped[1:])]
    assert kappas[1:] == pytest.approx(expected[1:])
    assert [v.met for v in verdicts] == [k is not None and k >= 0.85 for k in kappas]
    assert any(v.met for v in verdicts) and not verdicts[1].met


def test_stabilizing_predictions_uses_only_its_stop_set():
    """Predictions outside the stop set may change at will: the criterion does not see them."""
    rng = np.random.default_rng(2)
    labels = rng.integers(3, size=300)
    rows = stop_set(300, 40, seed=5)
    outside = np.setdiff1d(np.arange(300), rows)
    rounds = []
    for r in range(4):
        moved = labels.copy()
        moved[outside] = (moved[outside] + r) % 3
        rounds.append(one_hot(moved))
    verdicts = judge(StabilizingPredictions(StabilizingPredictions.Config(stop_set=40)), rounds)
    assert [v.values["stop_kappa"] for v in verdicts] == [None, 1.0, 1.0, 1.0]
    assert [v.met for v in verdicts] == [False, False, False, True]
    assert len(verdicts[0].state["predictions"]) == 40


def blend(confidence_left, n_items=40, n_classes=4):
    """Predictions that are uniform with weight ``confidence_left`` and certain otherwise, per item."""
    labels = np.arange(n_items) % n_classes
    weight = np.broadcast_to(np.asarray(confidence_left, dtype=np.float64), (n_items,))[:, None]
    return (1 - weight) * np.eye(n_classes)[labels] + weight / n_classes


@pytest.mark.parametrize("cls, key, measure, threshold", [
    (MaxUncertainty, "stop_max_uncertainty", lambda p: normalised_entropy(p).max(), 0.1),
    (OverallUncertainty, "stop_overall_uncertainty", lambda p: normalised_entropy(p).mean(), 0.05),
    (ExpectedError, "stop_expected_error", lambda p: (1 - p.max(axis=1)).mean(), 0.05),
])
def test_uncertainty_criteria_fire_once_the_pool_is_certain(cls, key, measure, threshold):
    rounds = [blend(w) for w in (0.9, 0.5, 0.2, 0.05, 0.01, 0.001)]    # uncertainty falls, then plateaus
    verdicts = judge(cls(), rounds)
    values = [v.values[key] for v in verdicts]
    assert values == pytest.approx([measure(p) for p in rounds])
    assert all(a > b for a, b in zip(values, values[1:]))
    fired = [v.met for v in verdicts]
    assert fired == [value < threshold for value in values]
    first = fired.index(True)
    assert 0 < first < len(rounds) - 1 and all(fired[first:])          # not before the plateau, and from then on
    assert verdicts[first].state is None and "< " in verdicts[first].reason


def test_max_uncertainty_waits_for_the_last_uncertain_item():
    """One item stays uncertain while the rest become certain: overall uncertainty and the expected error fire,
    maximum uncertainty does not."""
    stuck = np.full(40, 0.001)
    stuck[17] = 0.9
    rounds = [blend(0.5), blend(stuck)]
    assert [v.met for v in judge(MaxUncertainty(), rounds)] == [False, False]
    assert [v.met for v in judge(OverallUncertainty(), rounds)] == [False, True]
    assert [v.met for v in judge(ExpectedError(), rounds)] == [False, True]
    unnormalised = judge(MaxUncertainty(MaxUncertainty.Config(normalise=False)), rounds)
    nats = normalised_entropy(rounds[1][17]) * np.log(4)
    assert unnormalised[1].values["stop_max_uncertainty"] == pytest.approx(nats)


def test_pool_criteria_look_at_the_unlabelled_items_only():
    probs = blend(np.where(np.arange(40) < 20, 0.9, 0.001))      # the first 20 (labelled, say) are uncertain
    task = Planted(probs)
    unlabelled = Candidates(task.pool_ids(), np.arange(20, 40))
    verdict = OverallUncertainty().update(task, unlabelled, None, make_context(round=1))
    assert verdict.values["stop_overall_uncertainty"] == pytest.approx(normalised_entropy(probs[20:]).mean())
    assert verdict.met
    empty = MaxUncertainty().update(task, Candidates(task.pool_ids(), []), None, make_context(round=1))
    assert empty.values == {"stop_max_uncertainty": None} and not empty.met


def test_a_sample_is_seeded_per_round():
    task = Planted(blend(np.linspace(0, 1, 40)))
    criterion = ExpectedError(ExpectedError.Config(sample=10))
    ids = Candidates(task.pool_ids())
    values = [criterion.update(task, ids, None, make_context(round=r, seed=2)).values["stop_expected_error"]
              for r in (1, 1, 2)]
    assert values[0] == values[1] != values[2]
    picked = criterion.items(ids, make_context(round=1, seed=2))
    assert len(picked) == 10 and set(picked) <= set(ids)
    assert values[0] == pytest.approx((1 - task.probs[picked.rows].max(axis=1)).mean())


# ------------------------------------------------------------------------------------------- recipes
TOY = {
    "name": "toy-stop",
    "seed": 3,
    "task": {"name": "toy"},
    "scorer": {"name": "entropy"},
    "loop": {"rounds": 6, "initial": 10, "batch": 5},
}


@pytest.mark.parametrize("stopping, message", [
    ([{"name": "nope"}], r"stopping\.0\.name: stopping 'nope' not found"),
    ([{"name": "max_uncertainty"}, {"name": "kappa"}], r"stopping\.1\.name: "),
    ([{"name": "max_uncertainty", "params": {"threshold": -1}}], r"stopping\.0\.params\.threshold: must be >= 0"),
    ([{"name": "stabilizing_predictions", "params": {"windw": 2}}], r"stopping\.0\.params\.windw: unknown key"),
    ([{"name": "expected_error"}, {"name": "expected_error"}], r"stopping\.1\.name: 'expected_error' is given twice"),
    ({"name": "expected_error"}, r"stopping: "),
    ([{"params": {}}], r"stopping\.0\.name: required"),
])
def test_recipe_validation_names_the_field(stopping, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.validate({**TOY, "stopping": stopping})


def test_a_criterion_needs_the_task_probabilities(monkeypatch):
    monkeypatch.setattr(ToyTask, "outputs", frozenset({EMBEDDINGS}))
    with pytest.raises(recipes.RecipeError, match=r"stopping\.0\.name: stopping criterion 'overall_uncertainty' "
                                                  r"needs probs, which task 'toy' does not provide"):
        recipes.validate({**TOY, "stopping": [{"name": "overall_uncertainty"}]})


def test_recipes_without_stopping_are_unchanged():
    resolved = recipes.validate(TOY)
    assert resolved.recipe.stopping == [] and resolved.stopping == []
    assert "stopping" not in resolved.classes


def test_the_run_folder_pins_every_default():
    resolved = recipes.validate({**TOY, "stopping": [{"name": "stabilizing_predictions", "params": {"window": 2}}]})
    assert resolved.recipe.stopping[0].params == {"end_loop": False, "threshold": 0.99, "window": 2, "stop_set": 2000}
    cls, config = resolved.stopping[0]
    assert cls is StabilizingPredictions and config.window == 2


# ------------------------------------------------------------------------------------------- the loop
REPORTED = {**TOY, "stopping": [{"name": "stabilizing_predictions", "params": {"window": 2, "threshold": 0.9}},
                                {"name": "max_uncertainty"}, {"name": "expected_error", "params": {"sample": 50}}]}


def ending(data=REPORTED, name="stabilizing_predictions"):
    """``data`` with the criterion ``name`` ending the loop."""
    return {**data, "stopping": [{**s, "params": {**s.get("params", {}), "end_loop": s["name"] == name}}
                                 for s in data["stopping"]]}


def finish(run_dir, **kw):
    runner = Runner(run_dir, progress=False, **kw)
    try:
        return runner.run(), runner.store.metrics()
    finally:
        runner.close()


def strip(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The criteria only reported (none ends the loop): every round runs."""
    run_dir = create_run(recipes.validate(REPORTED), tmp_path_factory.mktemp("ref") / "run")
    outcome, rows = finish(run_dir)
    assert outcome == "done" and [r["round"] for r in rows] == list(range(7))
    return rows


def first_met(rows, name="stabilizing_predictions"):
    return next(r["round"] for r in rows if name in r["stop_met"])


def test_values_are_reported_every_round(reference):
    for row in reference:
        assert {"stop_kappa", "stop_kappa_mean", "stop_max_uncertainty", "stop_expected_error", "stop_met"} <= set(row)
        assert "stopped_by" not in row
        assert row["stop_met"] == [n for n, met in (
            ("stabilizing_predictions", row["stop_kappa_mean"] is not None and row["stop_kappa_mean"] >= 0.9),
            ("max_uncertainty", row["stop_max_uncertainty"] < 0.1),
            ("expected_error", row["stop_expected_error"] < 0.05)) if met]
    assert reference[0]["stop_kappa"] is None and reference[1]["stop_kappa_mean"] is None
    assert all(isinstance(r["stop_kappa"], float) for r in reference[1:])
    assert 2 <= first_met(reference) < 6    # the threshold is met inside the run: the tests below mean something


def test_a_criterion_that_ends_the_loop_stops_the_run_done(tmp_path, reference, capsys):
    stop = first_met(reference)
    run_dir = create_run(recipes.validate(ending()), tmp_path / "run")
    outcome, rows = finish(run_dir)
    assert outcome == "done" and status(run_dir)["status"] == "done"
    assert [r["round"] for r in rows] == list(range(stop + 1))           # nothing after the round it was met
    assert rows[-1]["stopped_by"] == "stabilizing_predictions"
    assert all("stopped_by" not in r for r in rows[:-1])
    # the stop changed nothing before it: same labels, same models, same values
    assert strip(rows[:-1]) == strip(reference[:stop])
    assert {k: v for k, v in strip(rows)[-1].items() if k != "stopped_by"} == strip(reference)[stop]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == rows
    assert f"round {stop}: stopping criterion 'stabilizing_predictions' is met (mean kappa" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / f"round_{stop}.pt").exists()      # pruned up to the last round, not beyond
    store = LabelStore(run_dir / "labels.sqlite", create=False)
    try:
        assert store.batch(stop + 1) is None
    finally:
        store.close()
    assert finish(run_dir) == ("done", rows)                             # resuming a finished run changes nothing


class QuitsAfter:
    """Answers from the ground truth, then quits after n answers (a person stepping away)."""

    def __init__(self, n):
        self.n = n

    def label(self, task, items, ctx):
        from activelab.protocol import Label, Quit

        for item in items:
            if self.n == 0:
                yield Quit("lunch")
                return
            self.n -= 1
            yield Label(item, task.true_label(item), annotator="person")


def test_a_paused_run_reports_the_same_values(tmp_path, reference):
    run_dir = create_run(recipes.validate(REPORTED), tmp_path / "run")
    assert finish(run_dir, oracle_override=QuitsAfter(22))[0] == "paused"       # inside round 3's batch
    outcome, rows = finish(run_dir)
    assert outcome == "done" and strip(rows) == strip(reference)


class Killed(Exception):
    pass


def test_a_run_killed_between_the_criteria_and_the_metrics_reports_the_same_values(tmp_path, reference, monkeypatch):
    """Killed after round 3's criteria stored their state and before its metrics row: the resumed run judges
    round 3 again from round 2's state (a kappa against round 2's model, not against itself)."""
    run_dir = create_run(recipes.validate(REPORTED), tmp_path / "run")
    original = LabelStore.add_metrics

    def dies_at_round_3(self, round, record):
        if round == 3:
            raise Killed
        original(self, round, record)

    monkeypatch.setattr(LabelStore, "add_metrics", dies_at_round_3)
    with pytest.raises(Killed):
        finish(run_dir)
    store = LabelStore(run_dir / "labels.sqlite", create=False)
    try:
        assert sorted(store.get_state("stopping")) == ["2", "3"]      # round 3's state was written
    finally:
        store.close()
    monkeypatch.setattr(LabelStore, "add_metrics", original)
    outcome, rows = finish(run_dir)
    assert outcome == "done" and strip(rows) == strip(reference)


def test_a_run_killed_after_its_stopping_round_finishes_done(tmp_path, reference, monkeypatch):
    """Killed after the stopping round's metrics were committed, before the run was marked done: resuming ends it
    there, without opening another batch."""
    stop = first_met(reference)
    run_dir = create_run(recipes.validate(ending()), tmp_path / "run")

    original = Runner.write_reports

    def dies_once_stopped(self):
        if self.store.metrics()[-1].get("stopped_by"):
            raise Killed
        original(self)

    monkeypatch.setattr(Runner, "write_reports", dies_once_stopped)
    with pytest.raises(Killed):
        finish(run_dir)
    monkeypatch.undo()
    assert status(run_dir)["status"] == "interrupted"
    outcome, rows = finish(run_dir)
    assert outcome == "done" and [r["round"] for r in rows] == list(range(stop + 1))
    assert rows[-1]["stopped_by"] == "stabilizing_predictions"
