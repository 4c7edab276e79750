"""The conformance kit, for the core's own tests and for third-party plugin authors.

- ``ScorerConformance``, ``SelectorConformance``, ``StoppingConformance``, ``OracleConformance``,
  ``TaskConformance``: pytest-style classes
  with the standard checks. Subclass one in a test module under a ``Test*`` name and give it a factory::

      from activelab.testing import ScorerConformance

      class TestMyScorer(ScorerConformance):
          covers = ("myplugin", "scorer", "mine")      # the component of your manifest these checks cover
          def make_scorer(self):
              return MyScorer(MyScorer.Config(), Env())

  Scorer and oracle checks run against a :class:`~activelab.testing.toy.ToyTask` unless ``make_task`` is
  overridden. The base classes are not collected themselves (their names do not start with ``Test``).

- ``covers = (plugin, kind, name)``: the registered component a subclass checks. The kit then also checks that
  the registry loads that component (its hooks pass registration) and that the factory builds an instance of it;
  activelab's own test suite requires one covering class for every component of its built-in plugins.
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import ValidationError

from activelab import hooks, registry
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    MC,
    MC_DROPOUT,
    PROBS,
    Candidates,
    Context,
    Env,
    ItemId,
    Label,
    Oracle,
    Picks,
    Quit,
    Scorer,
    Selector,
    Skip,
    StoppingCriterion,
    Task,
    Undo,
    Verdict,
    collect_scores,
    rng_for,
)

from .toy import ToyTask


# ------------------------------------------------------------------------------------------- helpers
def make_context(labels: Mapping[ItemId, Any] | None = None, round: int = 1, seed: int = 0, budget: int = 5) -> Context:
    return Context(round=round, seed=seed, budget=budget, labels=dict(labels or {}), progress=False)


def true_labels(task: Task, ids: Sequence[ItemId]) -> dict[ItemId, Any]:
    return {i: task.true_label(i) for i in ids}


@lru_cache(maxsize=4)
def _toy_state(n_labels: int, seed: int) -> dict[str, Any]:
    task = ToyTask(env=Env(seed=seed))
    task.fit(true_labels(task, task.pool_ids()[:n_labels]), make_context(round=0, seed=seed))
    return task.state_dict()


def fitted_toy_task(n_labels: int = 20, seed: int = 0) -> ToyTask:
    """A fresh :class:`ToyTask` trained on the first ``n_labels`` pool items (trained once per process)."""
    task = ToyTask(env=Env(seed=seed))
    task.load_state_dict(_toy_state(n_labels, seed))
    return task


def predictions(task: Task, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> dict[str, np.ndarray]:
    """``task.predict``'s chunks joined along the item axis (axis 1 under ``mc``)."""
    axis = 0 if mc is None else 1
    chunks = list(task.predict(ids, set(want), mc=mc))
    return {k: np.concatenate([c[k] for c in chunks], axis=axis) for k in want} if chunks else {}


def _assert_config_forbids_extras(component: Any) -> None:
    config_cls = getattr(type(component), "Config", None)
    assert config_cls is not None, f"{type(component).__name__} has no Config class"
    try:
        config_cls.model_validate({"surely_not_a_field": 1})
    except ValidationError:
        return
    raise AssertionError(f"{type(component).__name__}.Config accepts unknown fields (use extra='forbid')")


class _Covers:
    """``covers = (plugin, kind, name)``: the registered component this conformance class checks."""

    covers: tuple[str, str, str] | None = None
    _kind = ""

    def _make_component(self) -> Any:
        raise NotImplementedError

    def test_covers_the_component_it_names(self):
        if self.covers is None:
            return
        plugin, kind, name = self.covers
        assert kind == self._kind, f"{type(self).__name__} checks a {self._kind}, not a {kind}"
        component = registry.load(kind, name, plugin)     # hooks checked as when a recipe names it
        assert isinstance(self._make_component(), component), f"the factory does not build {self.covers}"


# ------------------------------------------------------------------------------------------- conformance
class ScorerConformance(_Covers):
    """Standard checks for a scorer. Define ``make_scorer``; override ``make_task`` for another task."""

    _kind = "scorer"
    n_labels = 20
    n_candidates = 70

    def _make_component(self) -> Any:
        return self.make_scorer()

    def make_scorer(self) -> Scorer:
        raise NotImplementedError

    def make_task(self) -> Task:
        return fitted_toy_task(self.n_labels)

    def setting(self, task: Task) -> tuple[Candidates, Context]:
        """The first ``n_candidates`` unlabelled items, as the loop gives them: positions into ``pool_ids``."""
        ids = list(task.pool_ids())
        labels = true_labels(task, ids[: self.n_labels])
        rows = [r for r, i in enumerate(ids) if i not in labels][: self.n_candidates]
        return Candidates(ids, rows), make_context(labels, round=1, seed=7)

    def test_positions_and_ids_score_alike(self):
        """The same candidates as positions (what the loop passes) and as a plain list of ids score the same."""
        task = self.make_task()
        candidates, ctx = self.setting(task)
        as_rows = collect_scores(self.make_scorer().score(task, candidates, ctx))
        as_ids = collect_scores(self.make_scorer().score(task, list(candidates), ctx))
        np.testing.assert_allclose(as_rows, as_ids, rtol=1e-9, atol=0)

    def test_is_a_scorer_with_a_strict_config(self):
        scorer = self.make_scorer()
        assert isinstance(scorer, Scorer)
        _assert_config_forbids_extras(scorer)

    def test_task_provides_what_it_needs(self):
        assert set(self.make_scorer().needs) <= set(self.make_task().outputs)

    def test_one_finite_score_per_candidate(self):
        task = self.make_task()
        candidates, ctx = self.setting(task)
        scores = collect_scores(self.make_scorer().score(task, candidates, ctx))
        assert scores.shape == (len(candidates),)
        assert np.all(np.isfinite(scores))

    def test_same_context_same_scores(self):
        runs = []
        for _ in range(2):
            task = self.make_task()
            candidates, ctx = self.setting(task)
            runs.append(collect_scores(self.make_scorer().score(task, candidates, ctx)))
        np.testing.assert_array_equal(runs[0], runs[1])

    def test_empty_candidates(self):
        task = self.make_task()
        _, ctx = self.setting(task)
        assert collect_scores(self.make_scorer().score(task, [], ctx)).shape == (0,)

    def test_scoring_leaves_the_model_as_it_was(self):
        task = self.make_task()
        candidates, ctx = self.setting(task)
        want = set(task.outputs) & {PROBS, EMBEDDINGS}
        before = predictions(task, candidates, want)
        collect_scores(self.make_scorer().score(task, candidates, ctx))
        after = predictions(task, candidates, want)
        for name in want:
            np.testing.assert_array_equal(before[name], after[name])


class SelectorConformance(_Covers):
    """Standard checks for a selector. Define ``make_selector``; ``scores`` makes the scores it is given."""

    _kind = "selector"
    n_items = 40
    n_labels = 10
    k = 6

    def make_selector(self) -> Selector:
        raise NotImplementedError

    def _make_component(self) -> Any:
        return self.make_selector()

    def scores(self, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        """Random non-negative scores in chunks of 7 (a stream, as scorers give them)."""
        values = rng_for(99, len(candidates)).random(len(candidates))
        for start in range(0, len(values), 7):
            yield values[start:start + 7]

    def setting(self) -> tuple[Candidates, Context]:
        ids = [f"item{i}" for i in range(self.n_items)]
        labels = {i: 0 for i in ids[: self.n_labels]}
        return Candidates(ids, range(self.n_labels, self.n_items)), make_context(labels, round=2, seed=3, budget=self.k)

    def choose(self, k: int | None = None, informed: bool = True) -> tuple[list[ItemId], list[ItemId], Context]:
        available, ctx = self.setting()
        selector = self.make_selector()
        candidates = selector.candidates(available, ctx)
        scores = self.scores(candidates, ctx) if informed else None
        return candidates, selector.select(candidates, scores, self.k if k is None else k, ctx), ctx

    def check(self, candidates: Sequence[ItemId], chosen: list[ItemId], ctx: Context, k: int) -> None:
        repeats = self.make_selector().allows_repeats
        if isinstance(chosen, Picks) and chosen.positions is not None:   # positions and scores agree with the ids
            assert [candidates[int(p)] for p in chosen.positions] == list(chosen), "Picks.positions != the ids"
            if chosen.scores is not None:
                assert len(chosen.scores) == len(chosen), "Picks.scores: one score per pick"
        assert set(chosen) <= set(candidates), "selected a non-candidate"
        assert not set(chosen) & set(ctx.labels), "selected a labelled item"
        assert len(chosen) <= k
        if not repeats:
            assert len(set(chosen)) == len(chosen), "selected an item twice"
            assert len(chosen) <= len(candidates)

    def test_is_a_selector_with_a_strict_config(self):
        selector = self.make_selector()
        assert isinstance(selector, Selector)
        assert isinstance(selector.allows_repeats, bool)
        _assert_config_forbids_extras(selector)

    def test_candidates_are_available_items(self):
        available, ctx = self.setting()
        candidates = self.make_selector().candidates(available, ctx)
        assert set(candidates) <= set(available) and len(set(candidates)) == len(candidates)

    def test_selection_is_valid(self):
        for informed in (True, False):
            candidates, chosen, ctx = self.choose(informed=informed)
            self.check(candidates, chosen, ctx, self.k)
            assert chosen, "selected nothing from a non-empty pool"

    def test_same_context_same_selection(self):
        for informed in (True, False):
            assert self.choose(informed=informed)[:2] == self.choose(informed=informed)[:2]

    def test_k_larger_than_the_pool(self):
        k = self.n_items * 3
        for informed in (True, False):
            candidates, chosen, ctx = self.choose(k=k, informed=informed)
            self.check(candidates, chosen, ctx, k)

    def test_k_zero(self):
        for informed in (True, False):
            assert self.choose(k=0, informed=informed)[1] == []

    def test_empty_candidates(self):
        _, ctx = self.setting()
        selector = self.make_selector()
        assert selector.candidates([], ctx) == []
        assert list(selector.select([], iter([np.zeros(0)]), self.k, ctx)) == []
        assert list(selector.select([], None, self.k, ctx)) == []


class StoppingConformance(_Covers):
    """Standard checks for a stopping criterion. Define ``make_criterion``; override ``make_task`` for another task."""

    _kind = "stopping"
    n_labels = 20

    def _make_component(self):
        return self.make_criterion()

    def make_criterion(self) -> StoppingCriterion:
        raise NotImplementedError

    def make_task(self):
        return fitted_toy_task(self.n_labels)

    def setting(self, task, round=1):
        ids = list(task.pool_ids())
        labels = true_labels(task, ids[: self.n_labels])
        return Candidates(ids, np.arange(self.n_labels, len(ids))), make_context(labels, round=round, seed=7)

    def two_rounds(self, criterion, task):
        """Round 0 then round 1 on the same model, the state passed through JSON as the loop stores it."""
        unlabelled, ctx0 = self.setting(task, round=0)
        first = criterion.update(task, unlabelled, None, ctx0)
        state = json.loads(json.dumps(first.state, allow_nan=False))
        return first, criterion.update(task, unlabelled, state, self.setting(task, round=1)[1])

    def test_is_a_stopping_criterion_with_a_strict_config(self):
        criterion = self.make_criterion()
        assert isinstance(criterion, StoppingCriterion)
        assert isinstance(criterion.end_loop, bool)
        _assert_config_forbids_extras(criterion)

    def test_task_provides_what_it_needs(self):
        assert set(self.make_criterion().needs) <= set(self.make_task().outputs)

    def test_verdicts_are_json_and_reproducible(self):
        runs = [self.two_rounds(self.make_criterion(), self.make_task()) for _ in range(2)]
        for verdict in runs[0]:
            assert isinstance(verdict, Verdict) and isinstance(verdict.met, bool)
            assert verdict.values and all(k.startswith("stop_") for k in verdict.values)
            json.dumps({"values": verdict.values, "state": verdict.state}, allow_nan=False)
        assert runs[0] == runs[1]

    def test_positions_and_ids_judge_alike(self):
        """The unlabelled items as positions (what the loop passes) and as a plain list of ids judge the same."""
        task = self.make_task()
        unlabelled, ctx = self.setting(task)
        state = None
        for r in range(2):
            as_rows = self.make_criterion().update(task, unlabelled, state, ctx)
            as_ids = self.make_criterion().update(task, list(unlabelled), state, ctx)
            assert as_rows.values.keys() == as_ids.values.keys() and as_rows.met == as_ids.met
            for key, value in as_rows.values.items():
                assert value == as_ids.values[key] if value is None else np.isclose(value, as_ids.values[key])
            state = as_rows.state

    def test_judging_leaves_the_model_as_it_was(self):
        task = self.make_task()
        unlabelled, _ = self.setting(task)
        before = predictions(task, unlabelled, {PROBS, EMBEDDINGS})
        self.two_rounds(self.make_criterion(), task)
        after = predictions(task, unlabelled, {PROBS, EMBEDDINGS})
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])


class OracleConformance(_Covers):
    """Standard checks for an oracle. Define ``make_oracle``; override ``make_task`` for another task."""

    _kind = "oracle"

    def make_oracle(self) -> Oracle:
        raise NotImplementedError

    def _make_component(self) -> Any:
        return self.make_oracle()

    def make_task(self) -> Task:
        return ToyTask()

    def some_items(self, task: Task) -> list[ItemId]:
        """What the oracle is asked about (a synthesis task's generators may repeat: one per sample)."""
        return list(task.pool_ids())[5:25]

    def ask(self, items: Sequence[ItemId] | None = None) -> tuple[Task, list[ItemId], list[Any]]:
        task = self.make_task()
        items = self.some_items(task) if items is None else list(items)
        return task, items, list(self.make_oracle().label(task, items, make_context(round=1, seed=5)))

    def test_is_an_oracle_with_a_strict_config(self):
        oracle = self.make_oracle()
        assert isinstance(oracle, Oracle)
        _assert_config_forbids_extras(oracle)

    def test_answers_only_requested_items(self):
        task, items, answers = self.ask()
        synthesis = hooks.query_type(task) == "synthesis"     # answers are new items "<generator>@<round>"
        for answer in answers:
            assert isinstance(answer, (Label, Skip, Undo, Quit))
            if not isinstance(answer, Quit):
                assert (answer.item_id.rsplit("@", 1)[0] if synthesis else answer.item_id) in items

    def test_labels_are_valid_and_json(self):
        task, _, answers = self.ask()
        for answer in answers:
            if isinstance(answer, Label):
                task.check_label(answer.item_id, answer.value)
                json.dumps(answer.value)

    def test_reproducible(self):
        assert self.ask()[2] == self.ask()[2]

    def test_nothing_asked_nothing_labelled(self):
        assert not [a for a in self.ask([])[2] if isinstance(a, Label)]


class TaskConformance(_Covers):
    """Standard checks for a task. Define ``make_task`` (small and fast); override ``initial_labels`` and
    ``garbage_labels`` where the defaults do not fit."""

    _kind = "task"

    def make_task(self) -> Task:
        raise NotImplementedError

    def _make_component(self) -> Any:
        return self.make_task()

    def initial_labels(self, task: Task) -> dict[ItemId, Any]:
        return true_labels(task, list(task.pool_ids())[:20])

    def garbage_labels(self) -> list[Any]:
        return [None, object(), "\x00 surely not a label \x00", {"surely": ["not", "a", "label"]}]

    def fitted(self) -> Task:
        task = self.make_task()
        task.fit(self.initial_labels(task), make_context(round=0, seed=1))
        return task

    def some_ids(self, task: Task) -> list[ItemId]:
        return list(task.pool_ids())[:50]

    def wants(self, task: Task) -> set[str]:
        return set(task.outputs) & {PROBS, EMBEDDINGS}

    def test_is_a_task(self):
        task = self.make_task()
        assert isinstance(task, Task)
        assert hooks.query_type(task) in ("pool", "synthesis")
        assert isinstance(task.primary_metric, str) and all(isinstance(o, str) for o in task.outputs)

    def test_pool_ids_are_unique_strings(self):
        ids = list(self.make_task().pool_ids())
        assert ids and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)

    def test_predict_chunks_align_with_ids(self):
        task = self.fitted()
        ids = self.some_ids(task)
        want = self.wants(task)
        total = 0
        for chunk in task.predict(ids, want):
            assert set(want) <= set(chunk)
            sizes = {len(chunk[name]) for name in want}
            assert len(sizes) == 1, f"outputs of one chunk disagree on its length: {sizes}"
            total += sizes.pop()
            if PROBS in want:
                assert np.all(chunk[PROBS] >= 0) and np.allclose(chunk[PROBS].sum(-1), 1.0, atol=1e-4)
        assert total == len(ids)
        assert all(len(v) == 0 for chunk in task.predict([], want) for v in chunk.values())

    def test_mc_outputs_have_a_leading_sample_axis(self):
        task = self.fitted()
        ids = self.some_ids(task)
        want = self.wants(task)
        modes = ["dropout", "batchwise"] if MC_DROPOUT in task.outputs else []
        if BOOTSTRAP in task.outputs:
            fit_bootstrap = hooks.fit_bootstrap(task)
            assert fit_bootstrap is not None, "a task with the BOOTSTRAP output needs the fit_bootstrap hook"
            fit_bootstrap(self.initial_labels(task), 3, 0)
            modes.append("bootstrap")
        for mode in modes:
            out = predictions(task, ids, want, MC(samples=3, mode=mode, seed=4))
            again = predictions(task, ids, want, MC(samples=3, mode=mode, seed=4))
            for name in want:
                assert out[name].shape[:2] == (3, len(ids)), (mode, name, out[name].shape)
                np.testing.assert_array_equal(out[name], again[name])

    def test_fit_is_deterministic(self):
        a, b = self.fitted(), self.fitted()
        ids = self.some_ids(a)
        for name, value in predictions(a, ids, self.wants(a)).items():
            np.testing.assert_array_equal(value, predictions(b, ids, self.wants(b))[name])
        assert a.evaluate() == b.evaluate()

    def test_state_dict_round_trip_reproduces_predictions(self):
        a = self.fitted()
        buffer = io.BytesIO()
        torch.save(a.state_dict(), buffer)        # checkpoints go through torch.save
        buffer.seek(0)
        b = self.make_task()
        b.load_state_dict(torch.load(buffer, weights_only=False))
        ids = self.some_ids(a)
        for name, value in predictions(a, ids, self.wants(a)).items():
            np.testing.assert_array_equal(value, predictions(b, ids, self.wants(b))[name])
        assert a.evaluate() == b.evaluate()

    def test_evaluate_reports_the_primary_metric(self):
        task = self.fitted()
        metrics = task.evaluate()
        assert np.isfinite(float(metrics[task.primary_metric]))
        declared = hooks.metrics(task)
        if declared is not None:  # what `compare --metrics` checks names against before any run
            assert task.primary_metric in declared
            assert set(metrics) <= set(declared), f"evaluate() reports undeclared {set(metrics) - set(declared)}"
            stats = task.fit(self.initial_labels(task), make_context(round=0, seed=1))
            assert set(stats) <= set(declared), f"fit() reports undeclared {set(stats) - set(declared)}"

    def test_labels(self):
        task = self.make_task()
        for item in list(task.pool_ids())[:10]:
            value = task.check_label(item, task.true_label(item))
            assert task.check_label(item, value) == value
            json.dumps(value)
            corrupt = hooks.corrupt_label(task)
            if corrupt is not None:
                task.check_label(item, corrupt(value, rng_for(0, item)))
            for garbage in self.garbage_labels():
                try:
                    task.check_label(item, garbage)
                except ValueError:
                    continue
                raise AssertionError(f"check_label accepted {garbage!r}")
        try:
            task.true_label("\x00 no such item \x00")
        except KeyError:
            pass
        else:
            raise AssertionError("true_label of an unknown item must raise KeyError")

    def test_describe(self):
        task = self.make_task()
        assert isinstance(task.describe(list(task.pool_ids())[0]), Mapping)

    def test_optional_labelling_hooks(self):
        """``suggest`` gives one valid canonical label (or None) per item; ``label_schema`` is a known kind."""
        task = self.fitted()
        ids = self.some_ids(task)[:10]
        suggest = hooks.suggest(task)
        if suggest is not None:
            hints = list(suggest(ids))
            assert len(hints) == len(ids)
            for item, hint in zip(ids, hints):
                if hint is not None:
                    assert task.check_label(item, hint) == hint
                    json.dumps(hint)
        label_schema = hooks.label_schema(task)
        if label_schema is not None:
            kind = label_schema()
            assert kind.get("type") in ("choices", "rectangles", "text"), kind
            if kind["type"] != "text":
                names = kind.get("choices" if kind["type"] == "choices" else "classes")
                assert names and all(isinstance(n, str) for n in names), kind
