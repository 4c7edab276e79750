"""BatchBALD: the conformance kit, the joint entropy against brute force, the sampled estimator, and the batch."""
import itertools

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from activelab.protocol import BOOTSTRAP, MC_DROPOUT, PROBS, Candidates, Env, collect_scores
from activelab.strategies.batchbald import (
    BatchBALD,
    JointEntropy,
    batch_scores,
    batchbald_greedy,
    joint_entropy,
)
from activelab.strategies.selectors import top_k_indices
from activelab.strategies.uncertainty import bald, entropy
from activelab.testing import ScorerConformance, make_context

torch.set_num_threads(1)
ENV = Env()


# ------------------------------------------------------------------------------------------ conformance
class TestBatchBALDConformance(ScorerConformance):
    covers = ("core", "scorer", "batchbald")

    def make_scorer(self):
        return BatchBALD(BatchBALD.Config(samples=6), ENV)


class TestBatchBALDSampledConformance(ScorerConformance):
    """A batch beyond the exact limit (4 classes, at most 16 configurations), and a pre-filter."""

    covers = ("core", "scorer", "batchbald")

    def make_scorer(self):
        return BatchBALD(BatchBALD.Config(samples=5, num_configs=16, prefilter=20), ENV)


class TestBatchBALDBootstrapConformance(ScorerConformance):
    covers = ("core", "scorer", "batchbald")

    def make_scorer(self):
        return BatchBALD(BatchBALD.Config(samples=3, mode="bootstrap"), ENV)


# ------------------------------------------------------------------------------------------ helpers
class FixedMCTask:
    """A task whose MC passes are the given ``(K, N, C)`` probabilities, in chunks of ``chunk`` items."""

    outputs = frozenset({PROBS, MC_DROPOUT})
    primary_metric = "accuracy"

    def __init__(self, probs, chunk=4):
        self.probs = np.asarray(probs, dtype=np.float64)
        self.chunk = chunk
        self.asked = []

    def pool_ids(self):
        return [str(i) for i in range(self.probs.shape[1])]

    def predict(self, ids, want, mc=None):
        assert mc is not None and mc.samples == self.probs.shape[0] and mc.mode == "batchwise"
        self.asked.append(mc)
        rows = [int(i) for i in ids]
        for start in range(0, len(rows), self.chunk):
            yield {PROBS: self.probs[:, rows[start:start + self.chunk], :]}


def random_probs(k, n, c, seed, concentration=0.5):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, concentration), size=(k, n))


def brute_force_joint_entropy(probs):
    """H(y_1..y_n) by enumerating all C^n configurations: p(y) = 1/K sum_k prod_i p_k(y_i)."""
    k, n, c = probs.shape
    h = 0.0
    for config in itertools.product(range(c), repeat=n):
        p = np.mean([np.prod([probs[s, i, y] for i, y in enumerate(config)]) for s in range(k)])
        if p > 0:
            h -= p * np.log(p)
    return h


def brute_force_batchbald(probs, batch):
    """a(batch) = H(y_batch) - sum_i E_w H(y_i | w)."""
    sub = probs[:, list(batch), :]
    return brute_force_joint_entropy(sub) - entropy(sub).mean(axis=0).sum()


def score_with(scorer, probs, budget, chunk=4, seed=7, round=1):
    task = FixedMCTask(probs, chunk=chunk)
    ids = task.pool_ids()
    ctx = make_context(round=round, seed=seed, budget=budget)
    return collect_scores(scorer.score(task, Candidates(ids), ctx))


# ------------------------------------------------------------------------------------------ joint entropy
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_entropy_equals_exact_enumeration_on_three_items(seed):
    probs = random_probs(k=7, n=3, c=4, seed=seed)
    expected = brute_force_joint_entropy(probs)
    assert joint_entropy(probs) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_joint_entropy_of_one_item_is_the_entropy_of_the_mean():
    probs = random_probs(k=5, n=1, c=3, seed=4)
    assert joint_entropy(probs) == pytest.approx(float(entropy(probs.mean(axis=0))[0]), rel=1e-12)
    assert joint_entropy(probs[:, :0, :]) == 0.0


def test_joint_entropy_of_candidates_each_equals_brute_force():
    """entropies() scores every candidate against the batch: each value is H(batch, candidate) by enumeration."""
    probs = random_probs(k=6, n=6, c=3, seed=11)
    joint = JointEntropy(6, 3)
    joint.add(probs[:, 0])
    joint.add(probs[:, 1])
    got = joint.entropies(probs[:, 2:, :])
    want = [brute_force_joint_entropy(probs[:, [0, 1, j], :]) for j in range(2, 6)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sampled_estimator_approaches_the_exact_joint_entropy():
    probs = random_probs(k=8, n=5, c=3, seed=5)
    exact = brute_force_joint_entropy(probs)
    assert joint_entropy(probs) == pytest.approx(exact, rel=1e-12)            # 3^4 = 81 <= 10,000: exact
    errors = []
    for configs in (100, 200000):
        rng = np.random.default_rng(3)
        errors.append(abs(joint_entropy(probs, num_configs=configs, exact_limit=1, rng=rng) - exact))
    assert errors[1] < 0.01
    assert errors[1] < errors[0]


def test_sampled_estimator_switches_midway_and_stays_unbiased():
    """Past the exact limit the batch's configurations are drawn once and extended: still near the exact value."""
    probs = random_probs(k=5, n=4, c=4, seed=8)
    exact = brute_force_joint_entropy(probs)
    estimates = [joint_entropy(probs, num_configs=20000, exact_limit=16, rng=np.random.default_rng(s))
                 for s in range(5)]
    assert np.mean(estimates) == pytest.approx(exact, abs=0.01)
    assert len(set(estimates)) > 1                                             # it did sample


def test_sampled_estimator_does_not_underflow_on_long_batches():
    probs = random_probs(k=4, n=120, c=10, seed=2, concentration=0.05)
    h = joint_entropy(probs, num_configs=500, rng=np.random.default_rng(0))
    assert np.isfinite(h) and h > 0


# ------------------------------------------------------------------------------------------ greedy batch
def test_greedy_objective_equals_brute_force_on_its_picks():
    probs = random_probs(k=6, n=9, c=3, seed=21)
    greedy = batchbald_greedy(probs, 3)
    assert len(set(greedy.picks.tolist())) == 3
    for n in range(1, 4):
        np.testing.assert_allclose(greedy.gains[:n].sum(), brute_force_batchbald(probs, greedy.picks[:n]),
                                   rtol=1e-10)
    # each step took the best: no other candidate adds more to the batch so far
    for n in range(3):
        base = brute_force_batchbald(probs, greedy.picks[:n]) if n else 0.0
        gains = [brute_force_batchbald(probs, list(greedy.picks[:n]) + [j]) - base
                 for j in range(9) if j not in greedy.picks[:n]]
        assert greedy.gains[n] == pytest.approx(max(gains), rel=1e-10)


def test_batch_of_one_is_the_bald_argmax():
    probs = random_probs(k=10, n=30, c=5, seed=13)
    greedy = batchbald_greedy(probs, 1)
    assert greedy.picks.tolist() == [int(np.argmax(bald(probs)))]
    np.testing.assert_allclose(greedy.last, bald(probs), rtol=1e-10, atol=1e-12)
    scores = score_with(BatchBALD(BatchBALD.Config(samples=10), ENV), probs, budget=1)
    assert int(np.argmax(scores)) == int(np.argmax(bald(probs)))
    first = score_with(BatchBALD(BatchBALD.Config(samples=10), ENV), probs, budget=6)
    assert int(np.argmax(first)) == int(np.argmax(bald(probs)))


def duplicated_item_probs():
    """4 MC samples. Item 0 tells {0,1} from {2,3} for sure; item 1 is a copy of it; item 2 tells {0,2} from {1,3}
    a little less surely; item 3 is nearly certain. BALD: 0 = 1 > 2 > 3."""
    sure, fair = np.array([1.0, 0.0]), np.array([0.95, 0.05])
    probs = np.zeros((4, 4, 2))
    for s in range(4):
        probs[s, 0] = sure if s < 2 else sure[::-1]
        probs[s, 1] = probs[s, 0]
        probs[s, 2] = fair if s % 2 == 0 else fair[::-1]
        probs[s, 3] = [0.9, 0.1] if s < 3 else [0.7, 0.3]
    return probs


def test_batchbald_avoids_a_duplicated_item_that_bald_takes_twice():
    probs = duplicated_item_probs()
    assert sorted(top_k_indices(bald(probs), 2, 4).tolist()) == [0, 1]
    greedy = batchbald_greedy(probs, 2)
    assert greedy.picks.tolist() == [0, 2]
    assert greedy.gains[0] == pytest.approx(np.log(2))
    scores = score_with(BatchBALD(BatchBALD.Config(samples=4), ENV), probs, budget=2)
    assert top_k_indices(scores, 2, 4).tolist() == [0, 2]


def test_scores_top_k_is_the_greedy_batch_in_order():
    probs = random_probs(k=8, n=40, c=4, seed=31)
    greedy = batchbald_greedy(probs, 6)
    scores = score_with(BatchBALD(BatchBALD.Config(samples=8), ENV), probs, budget=6)
    assert top_k_indices(scores, 6, 40).tolist() == greedy.picks.tolist()
    assert np.all(np.isfinite(scores))


def test_batch_scores_rank_picks_first_even_against_ties_and_noise():
    values = np.array([5.0, 0.2, 0.2, 9.0, 0.1])
    # gains that increase (a noisy sampled estimate) and an unpicked item (0, 3) with a larger value
    scores = batch_scores(values, np.array([2, 1]), np.array([0.2, 0.3]))
    assert top_k_indices(scores, 2, 5).tolist() == [2, 1]
    assert top_k_indices(scores, 5, 5).tolist()[:2] == [2, 1]
    assert scores[2] == 0.2 and scores[1] < 0.2 and scores[0] < scores[1] and scores[3] < scores[1]
    np.testing.assert_array_equal(batch_scores(values, np.zeros(0, np.int64), np.zeros(0)), values)


def test_chunking_and_prefilter_block_do_not_change_the_scores():
    probs = random_probs(k=5, n=50, c=3, seed=41)
    scorer = BatchBALD(BatchBALD.Config(samples=5, prefilter=12), ENV)
    a = score_with(scorer, probs, budget=4, chunk=3)
    b = score_with(scorer, probs, budget=4, chunk=50)
    np.testing.assert_array_equal(a, b)


def test_prefilter_keeps_the_top_candidates_by_bald():
    probs = random_probs(k=5, n=60, c=3, seed=43)
    top = set(top_k_indices(bald(probs), 10, 60).tolist())
    scores = score_with(BatchBALD(BatchBALD.Config(samples=5, prefilter=10), ENV), probs, budget=5, chunk=7)
    picks = top_k_indices(scores, 5, 60).tolist()
    assert set(picks) <= top
    greedy = batchbald_greedy(probs[:, sorted(top), :], 5)
    assert picks == [sorted(top)[i] for i in greedy.picks]
    # pre-filtered-out items keep BALD ranking below the batch
    rest = [i for i in range(60) if i not in top]
    assert np.all(scores[rest] <= bald(probs)[rest])


def test_prefilter_is_raised_to_the_budget():
    probs = random_probs(k=4, n=20, c=3, seed=44)
    scores = score_with(BatchBALD(BatchBALD.Config(samples=4, prefilter=2), ENV), probs, budget=6)
    top = sorted(top_k_indices(bald(probs), 6, 20).tolist())         # 6 kept, not 2: the batch can be filled
    assert top_k_indices(scores, 6, 20).tolist() == [top[i] for i in batchbald_greedy(probs[:, top], 6).picks]


def test_sampled_batches_are_deterministic_per_context():
    probs = random_probs(k=6, n=30, c=5, seed=51)
    scorer = BatchBALD(BatchBALD.Config(samples=6, num_configs=50), ENV)
    a = score_with(scorer, probs, budget=5)
    np.testing.assert_array_equal(a, score_with(scorer, probs, budget=5))
    assert not np.array_equal(a, score_with(scorer, probs, budget=5, round=2))   # a fresh draw of configurations


def test_mc_is_seeded_by_the_context_and_consistent():
    probs = random_probs(k=4, n=8, c=3, seed=52)
    task = FixedMCTask(probs)
    scorer = BatchBALD(BatchBALD.Config(samples=4), ENV)
    for round in (1, 1, 2):
        scorer.score(task, Candidates(task.pool_ids()), make_context(round=round, seed=7, budget=2))
    seeds = [mc.seed for mc in task.asked]
    assert seeds[0] == seeds[1] != seeds[2]
    assert all(mc.mode == "batchwise" for mc in task.asked)


def test_config_and_needs():
    assert BatchBALD(BatchBALD.Config(), ENV).needs == {PROBS, MC_DROPOUT}
    assert BatchBALD(BatchBALD.Config(mode="bootstrap"), ENV).needs == {PROBS, BOOTSTRAP}
    with pytest.raises(ValidationError):
        BatchBALD.Config(mode="dropout")          # fresh masks per item: no consistent joint
    with pytest.raises(ValidationError):
        BatchBALD.Config(samples=1)
    defaults = BatchBALD.Config()
    assert (defaults.samples, defaults.num_configs, defaults.prefilter) == (20, 10000, 1000)


def test_torch_probabilities_from_the_task_are_accepted():
    probs = random_probs(k=4, n=12, c=3, seed=53)

    class TorchTask(FixedMCTask):
        def predict(self, ids, want, mc=None):
            for out in super().predict(ids, want, mc):
                yield {PROBS: torch.from_numpy(out[PROBS])}

    scorer = BatchBALD(BatchBALD.Config(samples=4), ENV)
    ctx = make_context(round=1, seed=7, budget=3)
    task = TorchTask(probs)
    np.testing.assert_array_equal(scorer.score(task, Candidates(task.pool_ids()), ctx), score_with(scorer, probs, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_joint_entropies_match_the_cpu():
    probs = random_probs(k=8, n=200, c=10, seed=54)
    cpu = batchbald_greedy(probs, 6, rng=np.random.default_rng(0))
    gpu = batchbald_greedy(probs, 6, rng=np.random.default_rng(0), device="cuda")
    assert gpu.picks.tolist() == cpu.picks.tolist()
    np.testing.assert_allclose(gpu.gains, cpu.gains, rtol=1e-9)
