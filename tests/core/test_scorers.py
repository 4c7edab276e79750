"""Core scorers: the conformance kit for each, hand-computed values for each measure, and behaviour checks."""
import math
import warnings

import numpy as np
import pytest
import torch

from activelab.errors import UserError
from activelab.protocol import BOOTSTRAP, EMBEDDINGS, MC, MC_DROPOUT, PROBS, Env, collect_scores
from activelab.strategies.diversity import InformationDensity, KCenterGreedy, k_center_scores, mean_cosine
from activelab.strategies.uncertainty import (
    BALD,
    Entropy,
    ExpectedGradientLength,
    LeastConfidence,
    Margin,
    QueryByCommittee,
    RandomScorer,
    bald,
    entropy,
    expected_gradient_length,
    least_confidence,
    margin,
    mean_kl,
    vote_entropy,
)
from activelab.testing import ScorerConformance, fitted_toy_task, make_context

torch.set_num_threads(1)
ENV = Env()


# ------------------------------------------------------------------------------------------ conformance
class TestRandomConformance(ScorerConformance):
    covers = ("core", "scorer", "random")

    def make_scorer(self):
        return RandomScorer(RandomScorer.Config(), ENV)


class TestLeastConfidenceConformance(ScorerConformance):
    covers = ("core", "scorer", "least_confidence")

    def make_scorer(self):
        return LeastConfidence(LeastConfidence.Config(), ENV)


class TestMarginConformance(ScorerConformance):
    covers = ("core", "scorer", "margin")

    def make_scorer(self):
        return Margin(Margin.Config(), ENV)


class TestEntropyConformance(ScorerConformance):
    covers = ("core", "scorer", "entropy")

    def make_scorer(self):
        return Entropy(Entropy.Config(), ENV)


class TestBALDConformance(ScorerConformance):
    covers = ("core", "scorer", "bald")

    def make_scorer(self):
        return BALD(BALD.Config(samples=5), ENV)


class TestQBCBatchwiseConformance(ScorerConformance):
    covers = ("core", "scorer", "qbc")

    def make_scorer(self):
        return QueryByCommittee(QueryByCommittee.Config(members="batchwise", size=4), ENV)


class TestQBCBootstrapConformance(ScorerConformance):
    covers = ("core", "scorer", "qbc")

    def make_scorer(self):
        return QueryByCommittee(QueryByCommittee.Config(members="bootstrap", size=3, disagreement="kl"), ENV)


class TestEGLConformance(ScorerConformance):
    covers = ("core", "scorer", "egl")

    def make_scorer(self):
        return ExpectedGradientLength(ExpectedGradientLength.Config(), ENV)


class TestDensityConformance(ScorerConformance):
    covers = ("core", "scorer", "density")

    def make_scorer(self):
        return InformationDensity(InformationDensity.Config(base="margin", beta=2.0), ENV)


class TestKCenterConformance(ScorerConformance):
    covers = ("core", "scorer", "kcenter")

    def make_scorer(self):
        return KCenterGreedy(KCenterGreedy.Config(), ENV)


# ------------------------------------------------------------------------------------------ a scripted task
class ScriptedTask:
    """Returns fixed arrays; records every predict call. Chunks of 2 items."""

    outputs = frozenset({PROBS, EMBEDDINGS, MC_DROPOUT, BOOTSTRAP})

    def __init__(self, probs=None, mc_probs=None, embeddings=None, chunk=2):
        self.probs, self.mc_probs, self.embeddings, self.chunk = probs, mc_probs, embeddings, chunk
        self.calls, self.chunks_yielded, self.bootstrap_calls = [], 0, []

    def predict(self, ids, want, mc=None):
        self.calls.append((list(ids), set(want), mc))
        rows = [int(i) for i in ids]
        for start in range(0, len(rows), self.chunk):
            r = rows[start:start + self.chunk]
            out = {}
            if PROBS in want:
                out[PROBS] = self.probs[r] if mc is None else self.mc_probs[: mc.samples, r]
            if EMBEDDINGS in want:
                out[EMBEDDINGS] = self.embeddings[r]
            self.chunks_yielded += 1
            yield out

    def fit_bootstrap(self, labels, size, seed):
        self.bootstrap_calls.append((dict(labels), size, seed))


def ids(n):
    return [str(i) for i in range(n)]


# ------------------------------------------------------------------------------------------ measures
P = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])


def test_least_confidence_margin_entropy_by_hand():
    np.testing.assert_allclose(least_confidence(P), [0.3, 0.6, 0.0])
    np.testing.assert_allclose(margin(P), [-0.5, 0.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # 0 log 0 must not warn or give NaN
        h = entropy(P)
    want = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
            -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)), 0.0]
    np.testing.assert_allclose(h, want)
    with pytest.raises(ValueError):
        margin(np.array([[1.0]]))


def test_bald_by_hand():
    # two confident members that disagree: H[mean] = log 2, mean H = 0
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(bald(disagree), [math.log(2)])
    # members that agree (even if unsure) carry no information about the parameters
    agree = np.tile(np.array([[[0.5, 0.5], [0.9, 0.1]]]), (20, 1, 1))
    np.testing.assert_allclose(bald(agree), [0.0, 0.0], atol=1e-12)
    # a mixed case: p1 = [0.9, 0.1], p2 = [0.5, 0.5]
    h = lambda p: -sum(q * math.log(q) for q in p)  # noqa: E731
    mixed = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    np.testing.assert_allclose(bald(mixed), [h([0.7, 0.3]) - (h([0.9, 0.1]) + h([0.5, 0.5])) / 2])


def test_vote_entropy_and_kl_by_hand():
    # 4 members voting 0, 0, 1, 2
    members = np.array([[[0.6, 0.3, 0.1]], [[0.5, 0.4, 0.1]], [[0.2, 0.7, 0.1]], [[0.1, 0.2, 0.7]]])
    np.testing.assert_allclose(vote_entropy(members), [-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))])
    unanimous = np.array([[[0.6, 0.4]], [[0.9, 0.1]], [[0.51, 0.49]]])
    np.testing.assert_allclose(vote_entropy(unanimous), [0.0])
    two = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])          # consensus [0.6, 0.4]
    kl1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    kl2 = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4)
    np.testing.assert_allclose(mean_kl(two), [(kl1 + kl2) / 2])
    rng = np.random.default_rng(0)
    random_committee = rng.dirichlet(np.ones(5), size=(7, 30))
    np.testing.assert_allclose(mean_kl(random_committee), bald(random_committee), atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_egl_equals_autograd_last_layer_gradient(bias):
    torch.manual_seed(0)
    n_items, d, c = 6, 5, 4
    head = torch.nn.Linear(d, c, bias=bias).double()
    h = torch.randn(n_items, d, dtype=torch.float64)
    probs = head(h).softmax(-1).detach()
    want = []
    for i in range(n_items):
        total = 0.0
        for y in range(c):
            head.zero_grad()
            torch.nn.functional.cross_entropy(head(h[i:i + 1]), torch.tensor([y])).backward()
            sq = head.weight.grad.pow(2).sum() + (head.bias.grad.pow(2).sum() if bias else 0.0)
            total += probs[i, y].item() * sq.sqrt().item()
        want.append(total)
    np.testing.assert_allclose(expected_gradient_length(probs.numpy(), h.numpy(), bias=bias), want, rtol=1e-10)


# ------------------------------------------------------------------------------------------ scorers
def test_scorers_stream_chunks_lazily():
    task = ScriptedTask(probs=np.full((5, 2), 0.5))
    stream = Entropy().score(task, ids(5), make_context())
    assert task.calls == []                                     # nothing predicted before it is read
    chunks = list(stream)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert task.calls[0][1] == {PROBS} and task.calls[0][2] is None


def test_scorer_rejects_a_task_that_loses_items():
    class Lossy(ScriptedTask):
        def predict(self, ids, want, mc=None):
            yield from list(super().predict(ids, want, mc))[:-1]

    with pytest.raises(ValueError, match="3 items for 5 candidates|4 items for 5"):
        collect_scores(Entropy().score(Lossy(probs=np.full((5, 2), 0.5)), ids(5), make_context()))


def test_random_scorer_is_seeded_per_round():
    a = collect_scores(RandomScorer().score(None, ids(50), make_context(round=1)))
    assert np.array_equal(a, collect_scores(RandomScorer().score(None, ids(50), make_context(round=1))))
    assert not np.array_equal(a, collect_scores(RandomScorer().score(None, ids(50), make_context(round=2))))


def test_bald_asks_for_mc_dropout_and_is_zero_when_passes_agree():
    agree = np.tile(np.array([[[0.7, 0.3]] * 4]), (8, 1, 1))            # (T=8, 4 items, 2)
    disagree = agree.copy()
    disagree[::2, 2:] = [0.99, 0.01]
    disagree[1::2, 2:] = [0.01, 0.99]                                     # items 2, 3: confident and opposed
    task = ScriptedTask(mc_probs=disagree)
    scores = collect_scores(BALD(BALD.Config(samples=8)).score(task, ids(4), make_context(round=3)))
    np.testing.assert_allclose(scores[:2], 0.0, atol=1e-12)
    assert np.all(scores[2:] > 0.6)                                       # close to log 2
    mc = task.calls[0][2]
    assert mc.mode == "dropout" and mc.samples == 8
    task2 = ScriptedTask(mc_probs=disagree)
    collect_scores(BALD(BALD.Config(samples=8)).score(task2, ids(4), make_context(round=4)))
    assert task2.calls[0][2].seed != mc.seed                              # fresh masks each round


def test_qbc_needs_and_committees():
    assert set(QueryByCommittee().needs) == {PROBS, MC_DROPOUT}
    boot = QueryByCommittee(QueryByCommittee.Config(members="bootstrap", size=3))
    assert set(boot.needs) == {PROBS, BOOTSTRAP}
    committee = np.array([[[0.9, 0.1]] * 2, [[0.8, 0.2], [0.1, 0.9]], [[0.7, 0.3], [0.2, 0.8]]])
    task = ScriptedTask(mc_probs=committee)
    ctx = make_context({"9": 1}, round=2)
    scores = collect_scores(boot.score(task, ids(2), ctx))
    np.testing.assert_allclose(scores, [0.0, -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))])
    labels, size, seed = task.bootstrap_calls[0]
    assert labels == {"9": 1} and size == 3 and task.calls[0][2] == MC(samples=3, mode="bootstrap", seed=seed)
    batchwise = ScriptedTask(mc_probs=committee)
    collect_scores(QueryByCommittee(QueryByCommittee.Config(size=3, disagreement="kl")).score(batchwise, ids(2), ctx))
    assert batchwise.calls[0][2].mode == "batchwise" and batchwise.bootstrap_calls == []

    class NoBootstrap:
        outputs = frozenset({PROBS})

    with pytest.raises(UserError, match="members"):
        boot.score(NoBootstrap(), ids(2), ctx)


def test_egl_scorer_uses_probs_and_embeddings_of_the_toy_task():
    task = fitted_toy_task()
    candidates = task.pool_ids()[30:40]
    scores = collect_scores(ExpectedGradientLength().score(task, candidates, make_context()))
    out = next(task.predict(candidates, {PROBS, EMBEDDINGS}))
    np.testing.assert_allclose(scores, expected_gradient_length(out[PROBS], out[EMBEDDINGS]))


# ------------------------------------------------------------------------------------------ density
def test_mean_cosine_matches_the_pairwise_matrix():
    x = np.random.default_rng(1).normal(size=(9, 4))
    x[3] = 0.0
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    np.testing.assert_allclose(mean_cosine(x), (unit @ unit.T).mean(axis=1), atol=1e-12)


def test_density_with_beta_zero_is_the_base_scorer():
    task = fitted_toy_task()
    candidates, ctx = task.pool_ids()[20:100], make_context(round=1)
    for base in ("entropy", "margin"):
        dens = InformationDensity(InformationDensity.Config(base=base, beta=0.0))
        plain = Entropy() if base == "entropy" else Margin()
        np.testing.assert_array_equal(collect_scores(dens.score(task, candidates, ctx)),
                                      collect_scores(plain.score(task, candidates, ctx)))


def test_density_weights_by_clipped_mean_similarity():
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    emb = np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [1.0, 0.0]])   # item 2 points away from the rest
    task = ScriptedTask(probs=probs, embeddings=emb)
    dens = InformationDensity(InformationDensity.Config(base="entropy", beta=1.0))
    assert set(dens.needs) == {PROBS, EMBEDDINGS}
    scores = collect_scores(dens.score(task, ids(4), make_context()))
    sims = mean_cosine(emb)
    np.testing.assert_allclose(scores, entropy(probs) * np.maximum(sims, 0.0))
    assert sims[2] < 0 and scores[2] == 0.0
    assert scores[0] > scores[3]                      # same density, more uncertain
    # with margin as base a more representative item wins a tie in uncertainty (the floor keeps the direction)
    m = collect_scores(InformationDensity(InformationDensity.Config(base="margin")).score(task, ids(3), make_context()))
    np.testing.assert_allclose(m, np.maximum(mean_cosine(emb[:3]), 0.0) - 1.0)   # margins 0: score = w - 1
    assert list(np.argsort(-m)) == list(np.argsort(-mean_cosine(emb[:3])))


def test_density_validates_base_params():
    from pydantic import ValidationError

    InformationDensity.Config(base="bald", base_params={"samples": 5})
    with pytest.raises(ValidationError, match="samples"):
        InformationDensity.Config(base="bald", base_params={"samples": 1})
    with pytest.raises(ValidationError):
        InformationDensity.Config(base="kcenter")


def brute_force_greedy(points, labelled, k):
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    nearest = np.linalg.norm(points[:, None] - labelled[None], axis=-1).min(axis=1)
    picks = []
    for _ in range(k):
        masked = nearest.copy()
        masked[picks] = -1
        i = int(np.argmax(masked))
        picks.append(i)
        nearest = np.minimum(nearest, d[i])
    return picks


def test_k_center_top_k_equals_brute_force_greedy_and_scores_are_ordered():
    rng = np.random.default_rng(3)
    points, labelled = rng.normal(size=(60, 3)), rng.normal(size=(5, 3))
    k = 12
    task = ScriptedTask(embeddings=np.concatenate([points, labelled]), chunk=7)
    candidates = ids(60)
    ctx = make_context({str(60 + j): 0 for j in range(5)}, budget=k)
    scores = collect_scores(KCenterGreedy().score(task, candidates, ctx))
    order = np.lexsort((np.arange(60), -scores))                 # TopK's order: score, then candidate order
    assert list(order[:k]) == brute_force_greedy(points, labelled, k)
    picked = scores[order[:k]]
    assert np.all(np.diff(picked) <= 0)                          # pick distances never increase
    assert scores[order[k:]].max() <= picked[-1]                 # nothing unpicked beats the last pick


def test_k_center_picks_the_outlier_first_and_breaks_ties_in_candidate_order():
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [10.0, 10.0], [0.0, 0.0]])
    task = ScriptedTask(embeddings=emb)
    scores = collect_scores(KCenterGreedy().score(task, ids(4), make_context({"4": 1}, budget=2)))
    assert int(np.argmax(scores)) == 3
    # exact ties: the greedy pick and the score order agree on the earlier candidate
    tie = k_center_scores(np.array([[1.0], [-1.0], [1.0], [-1.0]]), np.full(4, 1.0), budget=2)
    assert list(np.lexsort((np.arange(4), -tie))[:2]) == [0, 1]


def test_k_center_cold_start_begins_nearest_the_mean():
    points = np.array([[0.0, 0.0], [4.0, 0.0], [1.9, 0.1], [0.0, 4.0]])
    scores = k_center_scores(points, np.full(4, np.inf), budget=2)
    assert np.all(np.isfinite(scores))
    order = list(np.argsort(-scores, kind="stable"))
    assert order[0] == 2                                         # nearest the mean (1.475, 1.025)
    assert order[1] == 3                                         # then the farthest from it
    assert np.all(np.isfinite(k_center_scores(points, np.full(4, np.inf), budget=0)))
