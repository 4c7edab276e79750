"""Stochastic batch acquisition: the conformance kit per mode, draw frequencies against the target distribution,
the top-k limit, original scores in the picks, and measure blocks."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from activelab.errors import UserError
from activelab.protocol import Candidates, Env
from activelab.strategies.blocks import MeasureBlock
from activelab.strategies.selectors import top_k_indices
from activelab.strategies.stochastic import StochasticBatch, perturbed
from activelab.strategies.uncertainty import entropy
from activelab.testing import SelectorConformance, make_context

torch.set_num_threads(1)
ENV = Env()


class TestStochasticPowerConformance(SelectorConformance):
    covers = ("core", "selector", "stochastic")

    def make_selector(self):
        return StochasticBatch(StochasticBatch.Config(mode="power"), ENV)


class TestStochasticSoftmaxConformance(SelectorConformance):
    covers = ("core", "selector", "stochastic")

    def make_selector(self):
        return StochasticBatch(StochasticBatch.Config(mode="softmax", beta=2.0), ENV)


class TestStochasticSoftrankConformance(SelectorConformance):
    covers = ("core", "selector", "stochastic")

    def make_selector(self):
        return StochasticBatch(StochasticBatch.Config(mode="softrank", beta=0.5), ENV)


# ------------------------------------------------------------------------------------------ helpers
SCORES = np.array([0.1, 0.5, 1.0, 2.0, 0.05, 1.5])
IDS = [f"i{n}" for n in range(len(SCORES))]
DRAWS = 4000


def target(mode, beta, scores=SCORES):
    if mode == "softmax":
        w = np.exp(beta * (scores - scores.max()))
    elif mode == "power":
        w = scores ** beta
    else:
        rank = np.empty(len(scores))
        rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
        w = rank ** -beta
    return w / w.sum()


def pick(mode, beta, k, seed, scores=SCORES, round=1):
    selector = StochasticBatch(StochasticBatch.Config(mode=mode, beta=beta), ENV)
    ctx = make_context(round=round, seed=seed, budget=k)
    ids = [f"i{n}" for n in range(len(scores))]
    return selector.select(Candidates(ids), iter([scores[:3], scores[3:]]), k, ctx)


def tolerance(p, n=DRAWS):
    return 4.5 * np.sqrt(p * (1 - p) / n) + 1e-3


# ------------------------------------------------------------------------------------------ distribution
@pytest.mark.parametrize("mode,beta", [("softmax", 1.0), ("softmax", 2.5), ("power", 1.0), ("power", 3.0),
                                       ("softrank", 1.0), ("softrank", 0.5)])
def test_single_pick_frequencies_follow_the_target_distribution(mode, beta):
    counts = np.zeros(len(SCORES))
    for seed in range(DRAWS):
        counts[pick(mode, beta, 1, seed).positions[0]] += 1
    p = target(mode, beta)
    freq = counts / DRAWS
    assert np.all(np.abs(freq - p) <= tolerance(p)), (freq.round(3), p.round(3))


@pytest.mark.parametrize("mode", ["softmax", "power", "softrank"])
def test_second_pick_is_drawn_without_replacement(mode):
    """P(first = i, second = j) = p_i p_j / (1 - p_i): sequential draws without replacement (Plackett-Luce)."""
    counts = {}
    for seed in range(DRAWS):
        first, second = pick(mode, 1.0, 2, seed).positions.tolist()
        counts[first, second] = counts.get((first, second), 0) + 1
    p = target(mode, 1.0)
    for i in range(len(SCORES)):
        for j in range(len(SCORES)):
            if i != j:
                want = p[i] * p[j] / (1 - p[i])
                assert abs(counts.get((i, j), 0) / DRAWS - want) <= tolerance(want), (i, j)


@pytest.mark.parametrize("mode", ["softmax", "power", "softrank"])
def test_large_beta_is_top_k(mode):
    scores = np.random.default_rng(0).random(50) + 0.01
    for seed in range(5):
        chosen = pick(mode, 1e6, 7, seed, scores=scores)
        assert chosen.positions.tolist() == top_k_indices(scores, 7, 50).tolist()


def test_small_beta_is_nearly_uniform():
    counts = np.zeros(len(SCORES))
    for seed in range(DRAWS):
        counts[pick("softmax", 1e-9, 1, seed).positions[0]] += 1
    p = np.full(len(SCORES), 1 / len(SCORES))
    assert np.all(np.abs(counts / DRAWS - p) <= tolerance(p))


# ------------------------------------------------------------------------------------------ behaviour
def test_picks_record_the_original_scores_in_draw_order():
    chosen = pick("power", 1.0, 4, seed=3)
    np.testing.assert_array_equal(chosen.scores, SCORES[chosen.positions])
    assert list(chosen) == [IDS[p] for p in chosen.positions]
    keys = perturbed(SCORES, "power", 1.0, make_context(round=1, seed=3).rng("stochastic"))
    assert chosen.positions.tolist() == top_k_indices(keys, 4, len(SCORES)).tolist()


def test_deterministic_per_context_and_fresh_per_round():
    scores = np.random.default_rng(1).random(300)
    a = pick("power", 1.0, 20, seed=5, scores=scores)
    assert a == pick("power", 1.0, 20, seed=5, scores=scores)
    np.testing.assert_array_equal(a.positions, pick("power", 1.0, 20, seed=5, scores=scores).positions)
    assert a != pick("power", 1.0, 20, seed=5, scores=scores, round=2)
    assert a != pick("power", 1.0, 20, seed=6, scores=scores)


def test_measure_blocks_are_measured():
    probs = np.random.default_rng(2).dirichlet(np.ones(4), size=30)
    selector = StochasticBatch(StochasticBatch.Config(mode="softmax", beta=3.0), ENV)
    ctx = make_context(round=1, seed=9, budget=5)
    ids = [str(i) for i in range(30)]
    from_blocks = selector.select(Candidates(ids), iter([MeasureBlock("entropy", probs[:11]),
                                                         MeasureBlock("entropy", probs[11:])]), 5, ctx)
    from_array = selector.select(Candidates(ids), entropy(probs), 5, ctx)
    assert from_blocks == from_array
    np.testing.assert_allclose(from_blocks.scores, entropy(probs)[from_blocks.positions], rtol=1e-12)


def test_power_rejects_negative_scores_and_puts_zeros_last():
    with pytest.raises(UserError, match="softmax or softrank"):
        pick("power", 1.0, 2, seed=0, scores=np.array([0.5, -0.2, 0.1]))
    scores = np.array([0.0, 0.3, 0.0, 0.2, 0.0])
    for seed in range(20):
        chosen = pick("power", 1.0, 5, seed, scores=scores).positions.tolist()
        assert sorted(chosen[:2]) == [1, 3] and sorted(chosen[2:]) == [0, 2, 4]
    pick("softmax", 1.0, 2, seed=0, scores=np.array([0.5, -0.2, 0.1]))        # fine elsewhere
    pick("softrank", 1.0, 2, seed=0, scores=np.array([0.5, -0.2, 0.1]))


@pytest.mark.parametrize("mode", ["softmax", "power", "softrank"])
def test_nan_scores_are_drawn_last(mode):
    scores = np.array([np.nan, 0.3, 0.1, np.nan, 0.2])
    for seed in range(10):
        chosen = pick(mode, 1.0, 5, seed, scores=scores).positions.tolist()
        assert sorted(chosen[:3]) == [1, 2, 4] and chosen[3:] == [0, 3]


def test_uninformed_first_batch_and_wrong_lengths():
    selector = StochasticBatch(StochasticBatch.Config(), ENV)
    ctx = make_context(round=0, seed=1, budget=3)
    first = selector.select(Candidates(IDS), None, 3, ctx)
    assert len(first) == 3 and first.scores is None
    with pytest.raises(ValueError, match="scores for"):
        selector.select(Candidates(IDS), SCORES[:4], 2, ctx)


def test_config():
    assert StochasticBatch.Config().mode == "power" and StochasticBatch.Config().beta == 1.0
    with pytest.raises(ValidationError):
        StochasticBatch.Config(beta=0.0)
    with pytest.raises(ValidationError):
        StochasticBatch.Config(mode="gumbel")
