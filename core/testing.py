"""The conformance kit, for the core's own tests and for third-party plugin authors.

- :class:`ToyTask`: a complete, tiny :class:`~activelab.protocol.Task` (Gaussian blobs, an MLP with dropout), fast
  enough for unit tests and the loop's end-to-end tests, and a worked example of the protocol.
- ``ScorerConformance``, ``SelectorConformance``, ``OracleConformance``, ``TaskConformance``: pytest-style classes
  with the standard checks. Subclass one in a test module under a ``Test*`` name and give it a factory::

      from activelab.testing import ScorerConformance

      class TestMyScorer(ScorerConformance):
          def make_scorer(self):
              return MyScorer(MyScorer.Config(), Env())

  Scorer and oracle checks run against a :class:`ToyTask` unless ``make_task`` is overridden. The base classes
  are not collected themselves (their names do not start with ``Test``).
"""
from __future__ import annotations

import io
import json
from functools import lru_cache
from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from .dropout import derive_seed, mc_dropout
from .protocol import (BOOTSTRAP, EMBEDDINGS, MC, MC_DROPOUT, PROBS, Context, Env, ItemId, Label, Oracle, Quit,
                       Scorer, Selector, Skip, Task, Undo, collect_scores, rng_for)


# ------------------------------------------------------------------------------------------- the toy task
class ToyNet(nn.Module):
    """Two hidden layers with dropout; ``forward`` returns ``(logits, embedding)``, the embedding being the input
    of the linear head (what last-layer scorers such as EGL assume)."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


class ToyTask:
    """Classify Gaussian blobs (``sklearn.datasets.make_blobs``, centres evenly on a circle) with a small MLP.

    Item ids are ``"0" .. str(n_items - 1)``; a separate test split is used by :meth:`evaluate`. :meth:`fit`
    trains a fresh network full-batch for ``epochs`` Adam steps, seeded by ``(ctx.seed, ctx.round)``, so it is
    deterministic. :meth:`predict` yields chunks of ``chunk_size`` items, so chunking is always exercised.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_items: int = Field(300, ge=4, description="unlabelled pool size")
        n_test: int = Field(200, ge=1, description="held-out items for evaluate()")
        n_features: int = Field(2, ge=1)
        n_classes: int = Field(4, ge=2)
        radius: float = Field(2.5, gt=0.0, description="the blob centres lie evenly on a circle of this radius")
        cluster_std: float = Field(1.0, gt=0.0, description="spread of each blob")
        hidden: int = Field(32, ge=1)
        dropout: float = Field(0.2, ge=0.0, lt=1.0)
        epochs: int = Field(60, ge=0, description="full-batch Adam steps per fit")
        lr: float = Field(0.03, gt=0.0)
        chunk_size: int = Field(64, ge=1, description="items per predict() chunk")
        data_seed: int = 0

    outputs: Collection[str] = frozenset({PROBS, EMBEDDINGS, MC_DROPOUT, BOOTSTRAP})
    primary_metric = "accuracy"
    metrics = ("accuracy", "n_train", "train_accuracy")
    query_type = "pool"

    def __init__(self, config: Config | None = None, env: Env | None = None):
        from sklearn.datasets import make_blobs

        self.config = cfg = config or self.Config()
        self.env = env or Env()
        angle = 2 * np.pi * np.arange(cfg.n_classes) / cfg.n_classes
        centres = np.zeros((cfg.n_classes, cfg.n_features))
        centres[:, 0] = cfg.radius * np.cos(angle)
        centres[:, 1 % cfg.n_features] += cfg.radius * np.sin(angle)
        x, y = make_blobs(n_samples=cfg.n_items + cfg.n_test, centers=centres, cluster_std=cfg.cluster_std,
                          random_state=cfg.data_seed)
        x = (x - x[: cfg.n_items].mean(0)) / (x[: cfg.n_items].std(0) + 1e-8)
        self.device = torch.device(self.env.device)
        self.x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        self.y = torch.as_tensor(y, dtype=torch.long, device=self.device)
        self._ids = [str(i) for i in range(cfg.n_items)]
        self._index = {item: i for i, item in enumerate(self._ids)}
        self.model = self._train(derive_seed(self.env.seed, "toy-init"), [], [])
        self.members: list[ToyNet] = []

    # ------------------------------------------------------------------ training
    def _train(self, seed: int, idx: Sequence[int], targets: Sequence[int]) -> ToyNet:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ToyNet(cfg.n_features, cfg.hidden, cfg.n_classes, cfg.dropout).to(self.device)
            if len(idx):
                x, y = self.x[list(idx)], torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
                opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
                model.train()
                for _ in range(cfg.epochs):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x)[0], y).backward()
                    opt.step()
        return model.eval()

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[list[int], list[int]]:
        items = sorted(labels, key=lambda i: self._index[i])          # independent of the labels' order
        return [self._index[i] for i in items], [int(labels[i]) for i in items]

    def pool_ids(self) -> Sequence[ItemId]:
        return list(self._ids)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        idx, targets = self._labelled(labels)
        self.model = self._train(derive_seed(ctx.seed, ctx.round, "toy-fit"), idx, targets)
        self.members = []                       # a committee of the previous model's round is stale now
        if not idx:
            return {"n_train": 0}
        with torch.inference_mode():
            hits = self.model(self.x[idx])[0].argmax(1).cpu() == torch.tensor(targets)
        return {"n_train": len(idx), "train_accuracy": float(hits.float().mean())}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` committee members, member b on a bootstrap resample of the labels drawn with
        ``rng_for(seed, "bootstrap", b)``; :meth:`predict` with ``MC(mode="bootstrap")`` then uses them."""
        idx, targets = self._labelled(labels)
        self.members = []
        for b in range(size):
            take = rng_for(seed, "bootstrap", b).integers(len(idx), size=len(idx)) if idx else np.zeros(0, int)
            self.members.append(self._train(derive_seed(seed, "bootstrap-init", b),
                                            [idx[t] for t in take], [targets[t] for t in take]))

    # ------------------------------------------------------------------ inference
    def predict(self, ids: Sequence[ItemId], want: Collection[str], mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        rows = [self._index[i] for i in ids]
        if mc is not None and mc.mode == "bootstrap" and mc.samples > len(self.members):
            raise ValueError(f"MC(mode='bootstrap', samples={mc.samples}) but fit_bootstrap made {len(self.members)} members")
        step = self.config.chunk_size
        for n, start in enumerate(range(0, len(rows), step)):
            x = self.x[rows[start:start + step]]
            with torch.inference_mode():
                if mc is None:
                    passes = [self.model(x)]
                elif mc.mode == "bootstrap":
                    passes = [member(x) for member in self.members[: mc.samples]]
                else:
                    with mc_dropout(self.model, mc.mode, mc.seed, chunk=n) as drop:
                        passes = [self.model(x) for _ in drop.members(mc.samples)]
                out = {PROBS: torch.stack([p[0] for p in passes]).softmax(-1),
                       EMBEDDINGS: torch.stack([p[1] for p in passes])}
            yield {k: (v if mc is not None else v[0]).cpu().numpy() for k, v in out.items() if k in want}

    def evaluate(self) -> Mapping[str, float]:
        n = self.config.n_items
        with torch.inference_mode():
            pred = self.model(self.x[n:])[0].argmax(1)
        return {"accuracy": float((pred == self.y[n:]).float().mean())}

    # ------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> int:
        return int(self.y[self._index[item_id]])

    def check_label(self, item_id: ItemId, value: Any) -> int:
        if item_id not in self._index:
            raise ValueError(f"unknown item {item_id!r}")
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"label must be a class number 0..{self.config.n_classes - 1}, got {value!r}")
        if not 0 <= int(value) < self.config.n_classes:
            raise ValueError(f"label must be a class number 0..{self.config.n_classes - 1}, got {value}")
        return int(value)

    def label_schema(self) -> dict[str, Any]:
        return {"type": "choices", "choices": [str(c) for c in range(self.config.n_classes)]}

    def suggest(self, ids: Sequence[ItemId]) -> list[int]:
        """The model's most probable class per item."""
        return [int(c) for chunk in self.predict(ids, {PROBS}) for c in chunk[PROBS].argmax(1)]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> int:
        """A wrong class, uniformly among the others."""
        c = self.config.n_classes
        return (int(value) + 1 + int(rng.integers(c - 1))) % c

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        point = [round(float(v), 3) for v in self.x[self._index[item_id]].tolist()]
        return {"text": f"point {item_id} at {point}: which blob (0..{self.config.n_classes - 1})?", "features": point}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        copy = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        return {"model": copy(self.model), "members": [copy(m) for m in self.members]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def build(weights: Mapping[str, torch.Tensor]) -> ToyNet:
            cfg = self.config
            model = ToyNet(cfg.n_features, cfg.hidden, cfg.n_classes, cfg.dropout).to(self.device)
            model.load_state_dict(weights)
            return model.eval()

        self.model = build(state["model"])
        self.members = [build(w) for w in state.get("members", [])]


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


def predictions(task: Task, ids: Sequence[ItemId], want: Collection[str], mc: MC | None = None) -> dict[str, np.ndarray]:
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


# ------------------------------------------------------------------------------------------- conformance
class ScorerConformance:
    """Standard checks for a scorer. Define ``make_scorer``; override ``make_task`` for another task."""

    n_labels = 20
    n_candidates = 70

    def make_scorer(self) -> Scorer:
        raise NotImplementedError

    def make_task(self) -> Task:
        return fitted_toy_task(self.n_labels)

    def setting(self, task: Task) -> tuple[list[ItemId], Context]:
        ids = list(task.pool_ids())
        labels = true_labels(task, ids[: self.n_labels])
        return [i for i in ids if i not in labels][: self.n_candidates], make_context(labels, round=1, seed=7)

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


class SelectorConformance:
    """Standard checks for a selector. Define ``make_selector``; ``scores`` makes the scores it is given."""

    n_items = 40
    n_labels = 10
    k = 6

    def make_selector(self) -> Selector:
        raise NotImplementedError

    def scores(self, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        """Random non-negative scores in chunks of 7 (a stream, as scorers give them)."""
        values = rng_for(99, len(candidates)).random(len(candidates))
        for start in range(0, len(values), 7):
            yield values[start:start + 7]

    def setting(self) -> tuple[list[ItemId], Context]:
        ids = [f"item{i}" for i in range(self.n_items)]
        labels = {i: 0 for i in ids[: self.n_labels]}
        return [i for i in ids if i not in labels], make_context(labels, round=2, seed=3, budget=self.k)

    def choose(self, k: int | None = None, informed: bool = True) -> tuple[list[ItemId], list[ItemId], Context]:
        available, ctx = self.setting()
        selector = self.make_selector()
        candidates = selector.candidates(available, ctx)
        scores = self.scores(candidates, ctx) if informed else None
        return candidates, selector.select(candidates, scores, self.k if k is None else k, ctx), ctx

    def check(self, candidates: list[ItemId], chosen: list[ItemId], ctx: Context, k: int) -> None:
        repeats = self.make_selector().allows_repeats
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


class OracleConformance:
    """Standard checks for an oracle. Define ``make_oracle``; override ``make_task`` for another task."""

    def make_oracle(self) -> Oracle:
        raise NotImplementedError

    def make_task(self) -> Task:
        return ToyTask()

    def ask(self, items: Sequence[ItemId] | None = None) -> tuple[Task, list[ItemId], list[Any]]:
        task = self.make_task()
        items = list(task.pool_ids())[5:25] if items is None else list(items)
        return task, items, list(self.make_oracle().label(task, items, make_context(round=1, seed=5)))

    def test_is_an_oracle_with_a_strict_config(self):
        oracle = self.make_oracle()
        assert isinstance(oracle, Oracle)
        _assert_config_forbids_extras(oracle)

    def test_answers_only_requested_items(self):
        task, items, answers = self.ask()
        for answer in answers:
            assert isinstance(answer, (Label, Skip, Undo, Quit))
            if not isinstance(answer, Quit):
                assert answer.item_id in items

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


class TaskConformance:
    """Standard checks for a task. Define ``make_task`` (small and fast); override ``initial_labels`` and
    ``garbage_labels`` where the defaults do not fit."""

    def make_task(self) -> Task:
        raise NotImplementedError

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
        assert task.query_type in ("pool", "synthesis")
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
            task.fit_bootstrap(self.initial_labels(task), 3, 0)
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
        declared = getattr(task, "metrics", None)
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
            if hasattr(task, "corrupt_label"):
                task.check_label(item, task.corrupt_label(value, rng_for(0, item)))
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
        if hasattr(task, "suggest"):
            hints = list(task.suggest(ids))
            assert len(hints) == len(ids)
            for item, hint in zip(ids, hints):
                if hint is not None:
                    assert task.check_label(item, hint) == hint
                    json.dumps(hint)
        if hasattr(task, "label_schema"):
            kind = task.label_schema()
            assert kind.get("type") in ("choices", "rectangles", "text"), kind
            if kind["type"] != "text":
                names = kind.get("choices" if kind["type"] == "choices" else "classes")
                assert names and all(isinstance(n, str) for n in names), kind
