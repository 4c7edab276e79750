"""Labelling cost: the task's label_cost hook, the loop's cumulative ``cost`` column, and PerCost selection."""
import numpy as np
import pytest

from activelab import hooks
from activelab import recipe as recipes
from activelab.errors import UserError
from activelab.loop import Runner
from activelab.protocol import Candidates, Env, collect_scores
from activelab.run import create_run
from activelab.strategies.cost import PerCost
from activelab.strategies.uncertainty import entropy, margin
from activelab.testing import ScorerConformance, fitted_toy_task, make_context, predictions
from activelab.testing.toy import ToyTask


class TestPerCostConformance(ScorerConformance):
    covers = ("core", "scorer", "per_cost")

    def make_scorer(self):
        return PerCost(PerCost.Config(base="entropy"), Env())


class TestPerCostMarginConformance(ScorerConformance):
    covers = ("core", "scorer", "per_cost")

    def make_scorer(self):
        return PerCost(PerCost.Config(base="margin", power=0.5), Env())


def setting(n=60):
    task = fitted_toy_task(20)
    ids = list(task.pool_ids())
    return task, Candidates(ids, range(20, 20 + n)), make_context({}, budget=5)


def test_scores_are_information_per_unit_of_cost():
    task, cands, ctx = setting()
    probs = predictions(task, cands, {"probs"})["probs"]
    cost = 1.0 + np.arange(20, 80) % 3
    got = collect_scores(PerCost(PerCost.Config(base="entropy")).score(task, cands, ctx))
    np.testing.assert_allclose(got, entropy(probs) / cost, rtol=1e-5)
    got = collect_scores(PerCost(PerCost.Config(base="margin", power=2.0)).score(task, cands, ctx))
    np.testing.assert_allclose(got, (margin(probs) + 1.0) / cost ** 2, rtol=1e-5, atol=1e-7)
    # power 0: the base ranking itself
    flat = collect_scores(PerCost(PerCost.Config(base="entropy", power=0.0)).score(task, cands, ctx))
    np.testing.assert_allclose(flat, entropy(probs), rtol=1e-5)


def test_cheap_items_win_at_equal_information():
    task, cands, ctx = setting()
    scores = collect_scores(PerCost(PerCost.Config(base="random")).score(task, cands, ctx))
    base = ctx.rng("random").random(len(cands))
    np.testing.assert_allclose(scores * (1.0 + np.arange(20, 80) % 3), base)


def test_a_task_without_costs_is_refused_in_one_line():
    class NoCost(ToyTask):
        label_cost = None

    task = NoCost()
    ids = list(task.pool_ids())
    with pytest.raises(UserError, match="declares no label_cost"):
        PerCost().score(task, ids[:5], make_context())


def test_non_positive_costs_are_refused():
    class Free(ToyTask):
        def label_cost(self, ids, labels=None):
            return np.zeros(len(ids))

    task = Free()
    with pytest.raises(UserError, match="costs must be positive"):
        PerCost().score(task, list(task.pool_ids())[:5], make_context())


def test_config_checks_the_base_and_its_params():
    with pytest.raises(ValueError, match="base_params for base 'qbc'"):
        PerCost.Config(base="qbc", base_params={"bogus": 1})
    with pytest.raises(UserError):
        PerCost.Config(base="no-such-scorer")
    with pytest.raises(ValueError, match="cannot wrap itself"):
        PerCost.Config(base="per_cost")


def test_the_loop_records_what_the_labels_cost(tmp_path):
    data = {"name": "toy-cost", "seed": 1, "task": {"name": "toy"}, "loop": {"rounds": 2, "initial": 6, "batch": 4},
            "scorer": {"name": "per_cost", "params": {"base": "entropy"}}}
    run_dir = create_run(recipes.validate(data), tmp_path / "run")
    runner = Runner(run_dir, progress=False)
    try:
        assert runner.run() == "done"
        rows = runner.store.metrics()
        labels = runner.store.labels()
        task = runner.task
    finally:
        runner.close()
    assert hooks.cost_unit(task) == "seconds"
    positions = [task.items.position(i) for i in labels]
    assert rows[-1]["cost"] == pytest.approx(float(np.sum(1.0 + np.array(positions) % 3)))
    assert [r["n_labeled"] for r in rows] == [6, 10, 14]
    assert rows[0]["cost"] < rows[1]["cost"] < rows[2]["cost"]
