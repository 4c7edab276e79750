"""The loop end to end on the toy task: run folder contents, determinism, pause and resume."""
import json

import numpy as np
import pytest
import yaml

from activelab import recipe as recipes
from activelab.loop import Runner
from activelab.protocol import Candidates, Env, Label, Quit, collect_scores
from activelab.run import create_run, status
from activelab.strategies.diversity import KCenterGreedy
from activelab.testing import make_context
from activelab.testing.toy import ToyTask

TOY = {
    "name": "toy-entropy",
    "seed": 3,
    "task": {"name": "toy"},
    "scorer": {"name": "entropy"},
    "loop": {"rounds": 3, "initial": 10, "batch": 5},
}


def start(tmp_path, data=TOY, name="run"):
    return create_run(recipes.validate(data), tmp_path / name)


def finish(run_dir, **kw):
    runner = Runner(run_dir, progress=False, **kw)
    try:
        return (runner.run(), runner.store.metrics(),
                [runner.store.batch(r) for r in range(data_rounds(runner) + 1)], runner.store.labels())
    finally:
        runner.close()


def data_rounds(runner):
    return runner.recipe.loop.rounds


def test_run_folder_holds_recipe_labels_metrics_checkpoints_and_curve(tmp_path):
    run_dir = start(tmp_path)
    outcome, metrics, batches, labels = finish(run_dir)
    assert outcome == "done"
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert [m["n_labeled"] for m in metrics] == [10, 15, 20, 25]
    assert all("accuracy" in m for m in metrics)
    assert len(labels) == 25
    # every queried item was labelled exactly once; batches never overlap
    queried = [i for items, _ in batches for i in items]
    assert sorted(queried) == sorted(labels) and len(set(queried)) == len(queried)
    assert batches[0][1] is None and all(len(s) == 5 for _, s in batches[1:])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1, 2, 3]
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["loop"]["rounds"] == 3 and resolved["selector"]["name"] == "topk"
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["round_2.pt", "round_3.pt"]  # keep_checkpoints = 2
    assert status(run_dir)["status"] == "done"


def test_same_seed_gives_the_same_queries_and_metrics(tmp_path):
    a = finish(start(tmp_path, name="a"))
    b = finish(start(tmp_path, name="b"))
    assert a[2] == b[2]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]  # noqa: E731
    assert strip(a[1]) == strip(b[1])
    c = finish(start(tmp_path, {**TOY, "seed": 4}, name="c"))
    assert c[2] != a[2]


class QuitsAfter:
    """Answers from the ground truth, then quits after n answers (a person stepping away)."""

    def __init__(self, n):
        self.n = n

    def label(self, task, items, ctx):
        for item in items:
            if self.n == 0:
                yield Quit("lunch")
                return
            self.n -= 1
            yield Label(item, task.true_label(item), annotator="person")


def test_quit_mid_batch_pauses_and_resume_asks_only_what_is_left(tmp_path):
    reference = finish(start(tmp_path, name="ref"))
    run_dir = start(tmp_path, name="paused")
    outcome = finish(run_dir, oracle_override=QuitsAfter(13))  # 10 initial + 3 of round 1's 5
    assert outcome[0] == "paused"
    info = status(run_dir)
    assert info == {**info, "status": "paused", "round": 1, "labels": 13, "outstanding": 2, "batch_size": 5}
    outcome = finish(run_dir)
    assert outcome[0] == "done"
    assert outcome[2] == reference[2]          # same queries as the uninterrupted run
    assert outcome[3] == reference[3]          # same labels, none lost or doubled


def test_recipe_overrides_and_strategies(tmp_path):
    data = {**TOY, "strategies": {"rand": {"scorer.name": "random"}}}
    resolved = recipes.validate(recipes.apply_overrides(data, ["loop.rounds=1", "scorer.name=margin"]))
    assert resolved.recipe.loop.rounds == 1 and resolved.recipe.scorer.name == "margin"
    assert recipes.strategy_overrides(resolved, "rand") == {"scorer.name": "random"}
    assert recipes.strategy_overrides(resolved, "bald") == {"scorer": {"name": "bald", "params": {}}}
    with pytest.raises(Exception, match="neither defined"):
        recipes.strategy_overrides(resolved, "nonsense")


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    run_dir = start(tmp_path)
    first = Runner(run_dir, progress=False)
    try:
        with pytest.raises(Exception, match="another activelab process"):
            Runner(run_dir, progress=False)
    finally:
        first.close()
    Runner(run_dir, progress=False).close()  # free again once the first closed


class UndoesOnce:
    """Labels the first item wrongly, undoes it, then answers everything correctly (a person correcting)."""

    def __init__(self):
        self.undone = False

    def label(self, task, items, ctx):
        from activelab.protocol import Undo

        for item in items:
            if not self.undone and ctx.round == 1:
                self.undone = True
                yield Label(item, (task.true_label(item) + 1) % 4, annotator="person")
                yield Undo(item, annotator="person")
            yield Label(item, task.true_label(item), annotator="person")


def test_undo_in_process_matches_the_uninterrupted_run(tmp_path):
    reference = finish(start(tmp_path, name="ref"))
    undone = finish(start(tmp_path, name="undo"), oracle_override=UndoesOnce())
    assert undone[0] == "done"
    assert undone[2] == reference[2] and undone[3] == reference[3]


# ------------------------------------------------------------------------------------------ cold start
COLD = {**TOY, "name": "toy-cold", "cold_start": {"name": "kcenter", "params": {}}}


def test_cold_start_scorer_chooses_the_first_batch(tmp_path):
    """With ``cold_start``, round 0 is the cold-start scorer's top-k on the untrained model (its scores are
    recorded), not a random draw; later rounds use the recipe's scorer as before."""

    outcome, _, batches, _ = finish(start(tmp_path, COLD))
    assert outcome == "done"
    items, scores = batches[0]
    task = ToyTask(ToyTask.Config(), Env(seed=COLD["seed"]))     # the untrained model of round 0
    ids = list(task.pool_ids())
    expected = collect_scores(KCenterGreedy().score(task, Candidates(ids, range(len(ids))),
                                                    make_context({}, round=0, seed=COLD["seed"], budget=10)))
    order = np.argsort(-expected, kind="stable")[:10]
    assert items == [ids[i] for i in order]
    assert scores is not None and len(scores) == 10
    random_first = finish(start(tmp_path, TOY, name="random"))[2][0][0]
    assert items != random_first


def test_cold_start_resumes_to_the_same_run(tmp_path):
    reference = finish(start(tmp_path, COLD, name="ref"))
    run_dir = start(tmp_path, COLD, name="paused")
    assert finish(run_dir, oracle_override=QuitsAfter(4))[0] == "paused"      # inside the cold-start batch
    outcome = finish(run_dir)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]  # noqa: E731
    assert outcome[0] == "done" and outcome[2:] == reference[2:]
    assert strip(outcome[1]) == strip(reference[1])


@pytest.mark.parametrize("spec, message", [
    ({"name": "nope"}, "cold_start.name"),
    ({"name": "kcenter", "params": {"bogus": 1}}, "cold_start.params.bogus"),
    ({"name": "entropy"}, None),
])
def test_cold_start_is_validated_like_the_scorer(spec, message):
    data = {**TOY, "cold_start": spec}
    if message is None:
        recipes.validate(data)
        return
    with pytest.raises(recipes.RecipeError, match=message.replace(".", r"\.")):
        recipes.validate(data)


def test_old_recipes_without_cold_start_are_unchanged():
    assert recipes.validate(TOY).recipe.cold_start is None
