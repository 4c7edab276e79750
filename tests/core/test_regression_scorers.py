"""The regression scorers (emcm, committee_variance, gsx): conformance on a small linear regression task, the
measures against hand-computed values, planted cases each must rank first, and the recipe errors."""
from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping, Sequence

import numpy as np
import pytest

from activelab import recipe as recipes
from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    PREDICTIONS,
    Candidates,
    Env,
    ItemId,
    collect_scores,
    rng_for,
)
from activelab.strategies.diversity import k_center_scores
from activelab.strategies.regression import EMCM, CommitteeVariance, GSx, committee_variance, emcm
from activelab.testing import ScorerConformance, make_context


# ------------------------------------------------------------------------------------------- a linear task
class LinearTask:
    """Ridge regression ``f(x) = w . x + b`` on ``x`` in R^3 (numpy, instant): ``embeddings`` and ``features`` are
    ``x`` itself (the input of the linear last layer), ``predictions`` its values; bootstrap members are ridge fits
    on resamples. Chunks of 16 items, so chunking is exercised. Enough of the Task protocol for scorers."""

    outputs: Collection[str] = frozenset({PREDICTIONS, EMBEDDINGS, FEATURES, BOOTSTRAP})
    primary_metric = "rmse"

    def __init__(self, n: int = 120, seed: int = 0):
        rng = rng_for(seed, "linear-task")
        self.x = rng.normal(size=(n, 3))
        self.y = self.x @ np.array([2.0, -1.0, 0.5]) + 0.3 + 0.5 * rng.normal(size=n)
        self.ids = [str(i) for i in range(n)]
        self.index = {i: p for p, i in enumerate(self.ids)}
        self.coef = np.zeros(4)
        self.members: list[np.ndarray] = []

    def pool_ids(self) -> Sequence[ItemId]:
        return self.ids

    def true_label(self, item_id: ItemId) -> float:
        return float(self.y[self.index[item_id]])

    def _rows(self, ids: Sequence[ItemId]) -> np.ndarray:
        return ids.rows if isinstance(ids, Candidates) else np.array([self.index[i] for i in ids], dtype=np.int64)

    def _ridge(self, rows: np.ndarray, y: np.ndarray) -> np.ndarray:
        a = np.hstack([self.x[rows], np.ones((len(rows), 1))])
        return np.linalg.solve(a.T @ a + 1e-3 * np.eye(4), a.T @ y)

    def fit(self, labels: Mapping[ItemId, Any], ctx=None) -> dict:
        rows = self._rows(sorted(labels))
        self.coef = self._ridge(rows, np.array([labels[i] for i in sorted(labels)]))
        self.members = []
        return {}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        ids = sorted(labels)
        rows, y = self._rows(ids), np.array([labels[i] for i in ids])
        draws = [rng_for(seed, "linear-bootstrap", m).integers(len(ids), size=len(ids)) for m in range(size)]
        self.members = [self._ridge(rows[d], y[d]) for d in draws]

    def predict(self, ids: Sequence[ItemId], want: Collection[str], mc: MC | None = None) -> Iterator[dict]:
        if mc is not None and (mc.mode != "bootstrap" or mc.samples > len(self.members)):
            raise ValueError(f"cannot serve {mc}")
        rows = self._rows(ids)
        for start in range(0, len(rows), 16):
            x = self.x[rows[start:start + 16]]
            coefs = [self.coef] if mc is None else self.members[:mc.samples]
            values = np.stack([x @ c[:3] + c[3] for c in coefs])
            out = {PREDICTIONS: values[0] if mc is None else values,
                   EMBEDDINGS: x if mc is None else np.broadcast_to(x, (len(coefs), *x.shape)), FEATURES: x}
            yield {k: v for k, v in out.items() if k in want}


def fitted_linear(n_labels: int = 20) -> LinearTask:
    task = LinearTask()
    task.fit({i: task.true_label(i) for i in task.pool_ids()[:n_labels]})
    return task


class _OnLinearTask(ScorerConformance):
    def make_task(self):
        return fitted_linear(self.n_labels)


# ------------------------------------------------------------------------------------------- conformance
class TestEMCMConformance(_OnLinearTask):
    covers = ("core", "scorer", "emcm")

    def make_scorer(self):
        return EMCM(EMCM.Config(size=3), Env())


class TestEMCMWithoutBiasConformance(_OnLinearTask):
    covers = ("core", "scorer", "emcm")

    def make_scorer(self):
        return EMCM(EMCM.Config(size=4, bias=False), Env())


class TestCommitteeVarianceConformance(_OnLinearTask):
    covers = ("core", "scorer", "committee_variance")

    def make_scorer(self):
        return CommitteeVariance(CommitteeVariance.Config(size=3), Env())


class TestGSxConformance(_OnLinearTask):
    covers = ("core", "scorer", "gsx")

    def make_scorer(self):
        return GSx(GSx.Config(), Env())


class TestGSxEmbeddingsConformance(_OnLinearTask):
    covers = ("core", "scorer", "gsx")

    def make_scorer(self):
        return GSx(GSx.Config(space="embeddings"), Env())


# ------------------------------------------------------------------------------------------- the measures
def test_emcm_by_hand():
    # f = 1, members 0 and 3: |1 - 0| = 1, |1 - 3| = 2, mean 1.5 (not |1 - mean| = 0.5); h = (3, 4): |(h, 1)| = sqrt 26
    value = emcm(np.array([1.0]), np.array([[3.0, 4.0]]), np.array([[0.0], [3.0]]))
    np.testing.assert_allclose(value, [1.5 * np.sqrt(26.0)])
    np.testing.assert_allclose(emcm(np.array([1.0]), np.array([[3.0, 4.0]]), np.array([[0.0], [3.0]]), bias=False),
                               [7.5])
    # two outputs: the residual's Euclidean norm, |(1, 0) - (4, 4)| = 5, |(1, 0) - (1, 0)| = 0: mean 2.5; |h| = 0
    value = emcm(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]]), np.array([[[4.0, 4.0]], [[1.0, 0.0]]]))
    np.testing.assert_allclose(value, [2.5])


def test_emcm_ranks_the_largest_planted_model_change_first():
    """Four candidates of a linear model f = w . h + b. Only the product of the committee's spread and the gradient
    norm ranks them: the biggest disagreement (item 1) has a tiny gradient, the biggest gradient (item 2) a tiny
    disagreement, item 0 has neither, item 3 a fair share of both and the largest expected change."""
    f = np.array([0.0, 0.0, 0.0, 0.0])
    members = np.array([[0.1, 10.0, 0.05, 2.0],
                        [-0.1, -10.0, -0.05, -2.0]])                   # |f - f_k| = 0.1, 10, 0.05, 2
    h = np.array([[1.0, 0.0], [0.1, 0.0], [60.0, 0.0], [0.0, 5.0]])   # |(h, 1)| = 1.4, 1.0, 60.0, 5.1
    scores = emcm(f, h, members)
    assert int(np.argmax(scores)) == 3
    assert list(np.argsort(-scores)) == [3, 1, 2, 0]
    assert int(np.argmax(committee_variance(members))) == 1        # variance alone asks about item 1
    assert int(np.argmax(np.linalg.norm(h, axis=1))) == 2           # the gradient alone about item 2


def test_committee_variance_by_hand():
    np.testing.assert_allclose(committee_variance(np.array([[1.0, 2.0, 5.0], [3.0, 2.0, -5.0]])), [1.0, 0.0, 25.0])
    # two outputs: the variances add (1 + 4)
    np.testing.assert_allclose(committee_variance(np.array([[[0.0, 0.0]], [[2.0, 4.0]]])), [5.0])


# ------------------------------------------------------------------------------------------- the scorers on a task
class PlantedTask:
    """Serves planted arrays: the model's ``predictions`` and ``embeddings``, and (after ``fit_bootstrap``) the
    members' predictions, in chunks of 2. Checks that EMCM asks the model for f and h and the committee for f_k."""

    outputs = frozenset({PREDICTIONS, EMBEDDINGS, BOOTSTRAP})

    def __init__(self, f, h, members):
        self.f, self.h, self.member_values = np.asarray(f), np.asarray(h), np.asarray(members)
        self.ids = [f"item{i}" for i in range(len(self.f))]
        self.calls: list[tuple] = []
        self.trained = 0

    def pool_ids(self):
        return self.ids

    def fit_bootstrap(self, labels, size, seed):
        self.calls.append(("fit_bootstrap", dict(labels), size))
        self.trained = size

    def predict(self, ids, want, mc=None):
        rows = np.array([self.ids.index(i) for i in ids])
        self.calls.append(("predict", frozenset(want), None if mc is None else (mc.mode, mc.samples)))
        if mc is not None:
            assert mc.mode == "bootstrap" and mc.samples <= self.trained
        for start in range(0, len(rows), 2):
            r = rows[start:start + 2]
            if mc is None:
                yield {PREDICTIONS: self.f[r], EMBEDDINGS: self.h[r]}
            else:
                yield {PREDICTIONS: self.member_values[:mc.samples, r],
                       EMBEDDINGS: np.zeros((mc.samples, len(r), self.h.shape[1]))}   # members' h are not g(x)


def test_emcm_scorer_uses_the_model_the_members_and_the_gradient():
    members = np.array([[0.1, 10.0, 0.05, 2.0, 0.0], [-0.1, -10.0, -0.05, -2.0, 0.0]])
    h = np.array([[1.0, 0.0], [0.1, 0.0], [60.0, 0.0], [0.0, 5.0], [100.0, 100.0]])
    f = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    task = PlantedTask(f, h, members)
    labels = {"x": 1.0}
    scores = collect_scores(EMCM(EMCM.Config(size=2)).score(task, task.ids, make_context(labels, round=2)))
    np.testing.assert_allclose(scores, emcm(f, h, members))
    assert int(np.argmax(scores)) == 3
    assert task.calls[0] == ("fit_bootstrap", labels, 2)
    assert ("predict", frozenset({PREDICTIONS}), ("bootstrap", 2)) in task.calls
    assert ("predict", frozenset({PREDICTIONS, EMBEDDINGS}), None) in task.calls
    # the model's prediction is f, not the committee's mean: shift f and the ranking follows
    task.f = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    shifted = collect_scores(EMCM(EMCM.Config(size=2)).score(task, task.ids, make_context(labels, round=2)))
    assert int(np.argmax(shifted)) == 4


def test_emcm_asks_first_about_a_far_point_of_a_linear_model():
    """On the ridge task: a candidate far outside the data has both the largest gradient (|x|) and the largest
    bootstrap disagreement (the members' slopes differ most there)."""
    task = fitted_linear(20)
    ids = task.pool_ids()
    labels = {i: task.true_label(i) for i in ids[:20]}
    candidates = Candidates(ids, np.arange(20, 120))
    task.x[57] = [8.0, 8.0, -8.0]
    scores = collect_scores(EMCM().score(task, candidates, make_context(labels, round=1)))
    assert candidates[int(np.argmax(scores))] == "57"
    variance = collect_scores(CommitteeVariance().score(task, candidates, make_context(labels, round=1)))
    assert candidates[int(np.argmax(variance))] == "57"


def test_committees_follow_the_round_and_refuse_a_task_without_fit_bootstrap():
    task = fitted_linear(20)
    ids = task.pool_ids()
    labels = {i: task.true_label(i) for i in ids[:20]}
    one = collect_scores(CommitteeVariance().score(task, ids[20:60], make_context(labels, round=1)))
    two = collect_scores(CommitteeVariance().score(task, ids[20:60], make_context(labels, round=2)))
    assert not np.allclose(one, two)

    class NoBootstrap(LinearTask):
        fit_bootstrap = None

    for scorer in (EMCM(), CommitteeVariance()):
        with pytest.raises(UserError, match=r"scorer\.params\.members: .*fit_bootstrap.*members: dropout"):
            scorer.score(NoBootstrap(), ids[20:60], make_context(labels, round=1))


def test_needs_follow_the_config():
    assert EMCM().needs == {PREDICTIONS, EMBEDDINGS, BOOTSTRAP}
    assert EMCM(EMCM.Config(members="dropout")).needs == {PREDICTIONS, EMBEDDINGS, MC_DROPOUT}
    assert CommitteeVariance().needs == {PREDICTIONS, BOOTSTRAP}
    assert CommitteeVariance(CommitteeVariance.Config(members="dropout")).needs == {PREDICTIONS, MC_DROPOUT}
    assert GSx().needs == {FEATURES} and GSx(GSx.Config(space="embeddings")).needs == {EMBEDDINGS}


def test_gsx_is_greedy_sampling_in_the_input_space():
    """Cold: the first pick is the candidate nearest the centroid, then farthest-first; with labels, farthest from
    them. The features are used, not the embeddings (planted to disagree)."""
    task = LinearTask(n=60)
    ids = task.pool_ids()
    points = task.x.copy()
    ctx = make_context({}, round=0, budget=5)
    scores = collect_scores(GSx().score(task, ids, ctx))
    picks = list(np.argsort(-scores, kind="stable")[:5])
    assert picks[0] == int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    chosen = [picks[0]]
    for _ in range(4):                                      # brute-force greedy k-center
        d = np.min(np.linalg.norm(points[:, None] - points[chosen][None], axis=2), axis=1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    assert picks == chosen

    labels = {i: 0.0 for i in ids[:10]}
    candidates = Candidates(ids, np.arange(10, 60))
    warm = collect_scores(GSx().score(task, candidates, make_context(labels, budget=3)))
    d = np.min(np.linalg.norm(points[10:, None] - points[None, :10], axis=2), axis=1)
    np.testing.assert_allclose(warm, k_center_scores(points[10:], d, 3))
    assert int(np.argmax(warm)) == int(np.argmax(d))

    class EmbeddingsElsewhere(LinearTask):      # features = x, embeddings = -x + a far point: only features count
        def predict(self, ids, want, mc=None):
            for out in super().predict(ids, want, mc):
                if EMBEDDINGS in out:
                    out[EMBEDDINGS] = out[EMBEDDINGS] * 0.0
                yield out

    other = EmbeddingsElsewhere(n=60)
    np.testing.assert_array_equal(collect_scores(GSx().score(other, candidates, make_context(labels, budget=3))),
                                  warm)


# ------------------------------------------------------------------------------------------- recipe errors
TOY = {"name": "t", "task": {"name": "toy"}, "loop": {"rounds": 1, "initial": 5, "batch": 5}}


@pytest.mark.parametrize("scorer, message", [
    ({"plugin": "core", "name": "emcm"}, r"scorer\.name: scorer 'emcm' needs predictions, which task 'toy' does "
                                         r"not provide \(it provides: bootstrap, embeddings, features, mc_dropout, "
                                         r"probs\)"),
    ({"plugin": "core", "name": "committee_variance", "params": {"members": "dropout"}},
     r"scorer\.name: scorer 'committee_variance' needs predictions, which task 'toy' does not provide"),
    ({"plugin": "core", "name": "emcm", "params": {"size": 1}}, r"scorer\.params\.size: must be >= 2"),
    ({"plugin": "core", "name": "emcm", "params": {"members": "votes"}}, r"scorer\.params\.members: "),
    ({"plugin": "core", "name": "gsx", "params": {"space": "pixels"}}, r"scorer\.params\.space: "),
    ({"plugin": "core", "name": "committee_variance", "params": {"sise": 3}}, r"scorer\.params\.sise: unknown key"),
])
def test_recipe_errors_name_the_field_and_the_missing_output(scorer, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.validate({**TOY, "scorer": scorer})


def test_gsx_runs_on_a_classifier_with_features():
    """gsx needs only the features, which the toy classifier offers: the recipe validates."""
    recipes.validate({**TOY, "scorer": {"plugin": "core", "name": "gsx"}})
