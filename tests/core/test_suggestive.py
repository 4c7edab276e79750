"""Suggestive Annotation (activelab.strategies.suggestive): bootstrap variance, the lazy max-cover greedy against a
brute force, a planted duplicate cluster, and the conformance kit."""
import numpy as np
import pytest
import torch

from activelab import recipe as recipes
from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC_SEED_BOUND,
    PROBS,
    Candidates,
    Env,
    collect_scores,
    seed_for,
)
from activelab.strategies.selectors import TopK
from activelab.strategies.suggestive import SuggestiveAnnotation, bootstrap_variance, max_cover
from activelab.testing import ScorerConformance, ToyTask, make_context

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ conformance
class TestSuggestiveConformance(ScorerConformance):
    covers = ("core", "scorer", "suggestive")

    def make_scorer(self):
        return SuggestiveAnnotation(SuggestiveAnnotation.Config(members=3), Env())


class TestSuggestiveOnFeaturesConformance(ScorerConformance):
    covers = ("core", "scorer", "suggestive")

    def make_scorer(self):
        return SuggestiveAnnotation(SuggestiveAnnotation.Config(members=2, ratio=3, representation="features"), Env())


# ------------------------------------------------------------------------------------------ a planted task
class BootstrapTask:
    """Items "0".."n-1" with planted embeddings; bootstrap member t predicts ``[0.5 + s (-1)^t, 0.5 - s (-1)^t]``
    for an item of planted spread s, so with an even number of members its bootstrap variance is ``s^2``. Records
    fit_bootstrap calls."""

    outputs = frozenset({PROBS, EMBEDDINGS, FEATURES, BOOTSTRAP})

    def __init__(self, spread, embeddings, chunk=4):
        self.spread = np.asarray(spread, dtype=np.float64)
        self.e = np.asarray(embeddings, dtype=np.float32)
        self.chunk, self.fits, self.size = chunk, [], 0

    def pool_ids(self):
        return [str(i) for i in range(len(self.e))]

    def fit_bootstrap(self, labels, size, seed):
        self.fits.append((dict(labels), size, seed))
        self.size = size

    def predict(self, ids, want, mc=None):
        rows = np.array([int(i) for i in ids], dtype=np.int64)
        for start in range(0, len(rows), self.chunk):
            r = rows[start:start + self.chunk]
            out = {}
            if PROBS in want:
                if mc is None:
                    out[PROBS] = np.full((len(r), 2), 0.5)
                else:
                    assert mc.mode == "bootstrap" and mc.samples <= self.size
                    sign = (-1.0) ** np.arange(mc.samples)[:, None]
                    s = sign * self.spread[r][None, :]
                    out[PROBS] = np.stack([0.5 + s, 0.5 - s], axis=-1)
            for name in (EMBEDDINGS, FEATURES):
                if name in want:
                    out[name] = self.e[r]
            yield out


def planted(seed=0):
    """Five regions on orthogonal axes of R^6, ten confident items each; region 0 also holds five near-duplicates,
    the most uncertain items of all; regions 1-4 one uncertain item each, a little less uncertain. Returns the task
    and each item's (region, kind) with kind 0 = confident, 1 = duplicate, 2 = uncertain single."""
    rng = np.random.default_rng(seed)
    emb, spread, region, kind = [], [], [], []
    for r in range(5):
        emb += list(np.eye(6)[r] + 0.05 * rng.normal(size=(10, 6)))
        spread += [0.01] * 10
        region += [r] * 10
        kind += [0] * 10
    emb += list(np.eye(6)[0] + 0.001 * rng.normal(size=(5, 6)))
    spread += list(0.40 + 0.001 * np.arange(5))
    region += [0] * 5
    kind += [1] * 5
    emb += list(np.eye(6)[1:5] + 0.05 * rng.normal(size=(4, 6)))
    spread += [0.30, 0.31, 0.32, 0.33]
    region += [1, 2, 3, 4]
    kind += [2] * 4
    perm = rng.permutation(len(emb))
    return BootstrapTask(np.array(spread)[perm], np.array(emb)[perm]), np.array(region)[perm], np.array(kind)[perm]


def order_of(scores):
    """TopK's order: higher score first, ties to the lower position."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


# ------------------------------------------------------------------------------------------ the measure
def test_bootstrap_variance_is_the_member_variance_averaged_over_classes():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(5, 7))                      # 5 members, 7 items, 4 classes
    want = [np.mean([np.var(p[:, i, c]) for c in range(4)]) for i in range(7)]
    np.testing.assert_allclose(bootstrap_variance(p), want, rtol=1e-12)
    assert np.all(bootstrap_variance(np.repeat(p[:1], 5, axis=0)) < 1e-30)     # members agree: no uncertainty


# ------------------------------------------------------------------------------------------ the greedy
def brute_force_cover(cand, rep, k):
    """The plain greedy on the explicit similarity matrix (negative cosines as 0), ties to the lower index."""
    sims = np.maximum(cand.astype(np.float64) @ rep.astype(np.float64).T, 0.0)
    best = np.zeros(len(rep))
    picks = []
    for _ in range(min(k, len(cand))):
        gains = np.maximum(sims - best, 0.0).sum(axis=1)
        gains[picks] = -np.inf
        c = int(np.argmax(gains))
        picks.append(c)
        best = np.maximum(best, sims[c])
    return picks, float(best.sum())


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(5))
def test_lazy_max_cover_matches_the_plain_greedy(seed):
    rng = np.random.default_rng(seed)
    rep = unit(rng.normal(size=(120, 5)) + (rng.random((120, 1)) < 0.5) * 2.0)   # some structure, some negatives
    cand = rep[rng.choice(120, size=30, replace=False)]
    picks, total = max_cover(cand, rep, 10)
    want, want_total = brute_force_cover(cand, rep, 10)
    assert picks == want
    assert total == pytest.approx(want_total, rel=1e-5)


def test_max_cover_ties_go_to_the_lower_index_and_a_copy_adds_nothing():
    rep = unit(np.eye(3)[[0, 0, 1, 2, 2, 2]])
    cand = unit(np.eye(3)[[2, 2, 0, 1]])                     # 0 and 1 are the same; 3 covers the least
    picks, total = max_cover(cand, rep, 4)
    assert picks[:3] == [0, 2, 3] and picks[3] == 1          # the copy of a pick has gain 0: taken last
    assert total == pytest.approx(6.0)
    assert max_cover(cand, rep, 0) == ([], 0.0)
    assert max_cover(cand, rep, 9)[0] == [0, 2, 3, 1]         # k beyond the candidates: all of them


# ------------------------------------------------------------------------------------------ the scorer
def test_max_cover_beats_top_k_on_a_planted_duplicate_cluster():
    task, region, kind = planted()
    candidates = Candidates(task.pool_ids())
    ctx = make_context({}, budget=3)
    uncertainty = task.spread ** 2
    top_k = np.argsort(-uncertainty, kind="stable")[:3]
    assert np.all(kind[top_k] == 1)                                  # uncertainty alone: three near-duplicates
    scorer = SuggestiveAnnotation(SuggestiveAnnotation.Config(ratio=3))
    batch = order_of(collect_scores(scorer.score(task, candidates, ctx)))[:3]
    assert np.sum(kind[batch] == 1) == 1                             # one of them ...
    assert len(set(region[batch])) == 3 and np.all(kind[batch] > 0)  # ... and two other regions' uncertain items
    assert kind[batch[0]] == 1                                       # the largest region is covered first
    assert scorer.stats["candidate_set"] == 9 and scorer.stats["represented"] == len(kind)


def test_the_batch_is_the_greedy_over_the_most_uncertain_and_the_rest_keep_their_uncertainty():
    rng = np.random.default_rng(3)
    task = BootstrapTask(rng.random(40) * 0.4, rng.normal(size=(40, 4)))
    candidates = Candidates(task.pool_ids(), np.arange(5, 40))
    ctx = make_context({"0": 1, "1": 0}, round=2, seed=4, budget=4)
    scorer = SuggestiveAnnotation(SuggestiveAnnotation.Config(members=4, ratio=2.5))
    scores = collect_scores(scorer.score(task, candidates, ctx))
    # the members were trained on the labels, with a seed drawn from the context
    assert task.fits == [({"0": 1, "1": 0}, 4, seed_for(4, 2, "suggestive", below=MC_SEED_BOUND))]
    u = task.spread[5:] ** 2
    pool = np.argsort(-u, kind="stable")[:10]                             # K_u = ceil(2.5 * 4)
    points = unit(task.e[5:])
    want, _ = brute_force_cover(points[pool], points, 4)
    chosen = TopK().select(candidates, scores, 4, ctx)
    assert list(chosen.positions) == list(pool[want])
    rest = np.setdiff1d(np.arange(35), pool[want])
    np.testing.assert_allclose(scores[rest], u[rest], rtol=1e-12)
    assert scores[rest].max() < scores[pool[want]].min()


def test_same_seed_same_batch_and_large_pools_represent_a_seeded_subset():
    rng = np.random.default_rng(5)
    task = BootstrapTask(rng.random(60) * 0.4, rng.normal(size=(60, 3)))
    scorer = SuggestiveAnnotation(SuggestiveAnnotation.Config(max_represented=25))
    runs = [collect_scores(scorer.score(task, task.pool_ids(), make_context({}, seed=s, budget=5)))
            for s in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert scorer.stats["represented"] == 25
    assert task.fits[0][2] == task.fits[1][2] != task.fits[2][2]           # members seeded by the context


def test_zero_budget_budget_beyond_the_pool_and_no_candidates():
    rng = np.random.default_rng(0)
    task = BootstrapTask(rng.random(9) * 0.4, rng.normal(size=(9, 3)))
    scorer = SuggestiveAnnotation()
    none = collect_scores(scorer.score(task, task.pool_ids(), make_context({}, budget=0)))
    np.testing.assert_allclose(none, task.spread ** 2)
    every = collect_scores(scorer.score(task, task.pool_ids(), make_context({}, budget=50)))
    assert len(set(every.tolist())) == 9                               # all picked, in a strict order
    assert collect_scores(scorer.score(task, [], make_context({}, budget=3))).shape == (0,)


# ------------------------------------------------------------------------------------------ errors
TOY = {"name": "t", "task": {"name": "toy"}, "loop": {"rounds": 1, "initial": 5, "batch": 5}}


def test_a_task_without_bootstrap_members_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(ToyTask, "outputs", frozenset({PROBS, EMBEDDINGS, FEATURES}))
    with pytest.raises(recipes.RecipeError, match=r"scorer\.name: scorer 'suggestive' needs bootstrap, which task "
                                                  r"'toy' does not provide"):
        recipes.validate({**TOY, "scorer": {"name": "suggestive"}})
    monkeypatch.setattr(ToyTask, "outputs", frozenset({PROBS, BOOTSTRAP}))
    with pytest.raises(recipes.RecipeError, match=r"needs embeddings, which task 'toy' does not provide"):
        recipes.validate({**TOY, "scorer": {"name": "suggestive"}})


@pytest.mark.parametrize("params, message", [
    ({"members": 1}, r"scorer\.params\.members: "), ({"ratio": 0.5}, r"scorer\.params\.ratio: "),
    ({"representation": "pixels"}, r"scorer\.params\.representation: "),
    ({"max_represented": 0}, r"scorer\.params\.max_represented: "), ({"memebers": 3}, r"scorer\.params\.memebers: "),
])
def test_bad_parameters_name_the_field(params, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.validate({**TOY, "scorer": {"name": "suggestive", "params": params}})


def test_fit_bootstrap_missing_at_run_time_is_a_user_error():
    class NoHook(BootstrapTask):
        fit_bootstrap = None

    task = NoHook(np.zeros(4), np.eye(4))
    with pytest.raises(UserError, match="fit_bootstrap"):
        SuggestiveAnnotation().score(task, task.pool_ids(), make_context({}, budget=2))
