"""USDM (activelab.strategies.usdm): label-propagation uncertainty, the OSQP batch program (its constraints and
optimality conditions), a planted near-duplicate, the sparse kernel, and the conformance kit."""
import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve

from activelab import recipe as recipes
from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Candidates, Env, collect_scores
from activelab.strategies import usdm as usdm_module
from activelab.strategies.selectors import TopK
from activelab.strategies.usdm import (
    USDM,
    class_matrix,
    conjugate_gradients,
    diverse_batch_qp,
    gaussian_weights,
    knn,
    knn_affinity,
    neighbourhood_rows,
    propagate,
    propagation_uncertainty,
)
from activelab.testing import ScorerConformance, ToyTask, make_context

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ conformance
class TestUSDMConformance(ScorerConformance):
    covers = ("core", "scorer", "usdm")

    def make_scorer(self):
        return USDM(USDM.Config(), Env())


class TestUSDMOnFeaturesConformance(ScorerConformance):
    covers = ("core", "scorer", "usdm")

    def make_scorer(self):
        return USDM(USDM.Config(representation="features", measure="margin", qp_size=30, k_neighbours=4), Env())


# ------------------------------------------------------------------------------------------ a planted task
class PointTask:
    """Fixed 2-d points as EMBEDDINGS and FEATURES; ids "0".."n-1"; chunks of 5."""

    outputs = frozenset({EMBEDDINGS, FEATURES})

    def __init__(self, x, chunk=5):
        self.x = np.asarray(x, dtype=np.float32)
        self.chunk = chunk

    def pool_ids(self):
        return [str(i) for i in range(len(self.x))]

    def predict(self, ids, want, mc=None):
        rows = np.array([int(i) for i in ids], dtype=np.int64)
        for start in range(0, len(rows), self.chunk):
            yield {name: self.x[rows[start:start + self.chunk]] for name in want}


def line_setting(n=41):
    """Points on a segment from -1 to 1, the two ends labelled with classes 0 and 1, the rest candidates."""
    x = np.stack([np.linspace(-1.0, 1.0, n), np.zeros(n)], axis=1)
    task = PointTask(x)
    ids = task.pool_ids()
    labels = {ids[0]: 0, ids[1]: 0, ids[-2]: 1, ids[-1]: 1}
    rows = [r for r in range(n) if ids[r] not in labels]
    return task, Candidates(ids, rows), np.array(rows), labels


def order_of(scores):
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores)))


# ------------------------------------------------------------------------------------------ propagation
def test_propagation_solves_its_linear_system_and_stays_a_sub_probability():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    near, sq = knn(x, 6)
    w = knn_affinity(near, gaussian_weights(sq, float(sq.mean())))
    assert abs(w - w.T).max() == 0 and w.diagonal().sum() == 0
    labelled = np.zeros(80, dtype=bool)
    labelled[:9] = True
    y = np.zeros((80, 3))
    y[np.arange(9), np.arange(9) % 3] = 1.0
    f = propagate(w, y, labelled, clamp=1000.0, leak=0.01)
    c = np.where(labelled, 1000.0, 0.01)
    d = np.asarray(w.sum(1)).ravel()
    want = np.column_stack([spsolve(sparse.csc_matrix(sparse.diags((1 + c) * d) - w), c * d * y[:, j])
                            for j in range(3)])
    np.testing.assert_allclose(f, want, atol=1e-7)
    assert f.min() >= 0 and f.sum(1).max() <= 1 + 1e-9
    assert np.all(f[:9].argmax(1) == np.arange(9) % 3) and f[:9].max(1).min() > 0.99     # labels are kept


def test_conjugate_gradients_solves_several_right_hand_sides():
    rng = np.random.default_rng(1)
    a = sparse.random(50, 50, density=0.1, random_state=1)
    a = (a @ a.T + sparse.identity(50) * 2).tocsr()
    b = rng.normal(size=(50, 3))
    np.testing.assert_allclose(a @ conjugate_gradients(a, b, tol=1e-12), b, atol=1e-9)


def test_propagated_uncertainty_is_high_between_classes_and_low_near_labelled_points():
    task, candidates, rows, labels = line_setting()
    scorer = USDM(USDM.Config(normalize=False, k_neighbours=4))
    labelled = sorted(labels)
    points = task.x[[int(i) for i in labelled] + list(rows)]
    u, _ = scorer.uncertainty(points, class_matrix(labels, labelled))
    u = u[len(labelled):]                                  # the candidates, in position order along the line
    position = task.x[rows, 0]
    middle = np.argmin(np.abs(position))
    assert u[middle] > 0.99                                # halfway between the classes: a coin toss
    assert u[0] < 0.1 and u[-1] < 0.1                      # next to the labelled ends: sure
    left = u[position <= 0]
    assert np.all(np.diff(left) >= -1e-9)                  # rising towards the middle ...
    np.testing.assert_allclose(u, u[::-1], atol=1e-6)      # ... symmetric, as the line is
    # margin agrees on where the uncertainty is
    u_margin, _ = USDM(USDM.Config(normalize=False, k_neighbours=4, measure="margin")).uncertainty(
        points, class_matrix(labels, labelled))
    assert np.argmax(u_margin[len(labelled):]) in (middle - 1, middle, middle + 1)


def test_uncertainty_with_one_class_or_none_is_the_unreached_mass():
    f = np.array([[1.0], [0.5], [0.0]])
    np.testing.assert_allclose(propagation_uncertainty(f), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(propagation_uncertainty(np.zeros((3, 0))), [1.0, 1.0, 1.0])
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])           # tie, sure, reached by nothing (uniform)
    np.testing.assert_allclose(propagation_uncertainty(p), [1.0, 0.0, 1.0], atol=1e-12)


# ------------------------------------------------------------------------------------------ the kernel and the QP
def test_the_kernel_is_psd_with_unit_diagonal_and_sees_near_duplicates():
    rng = np.random.default_rng(2)
    x = np.concatenate([np.zeros((3, 2)) + 1e-3 * rng.normal(size=(3, 2)), 10 * rng.normal(size=(30, 2))])
    near, sq = knn(x.astype(np.float32), 3)
    z = neighbourhood_rows(near, gaussian_weights(sq, float(sq.mean())))
    k = (z @ z.T).toarray()
    np.testing.assert_allclose(np.diag(k), 1.0)
    assert np.linalg.eigvalsh(k).min() > -1e-10
    assert k[0, 1] > 0.95 and k[0, 2] > 0.95                 # the near-duplicates: almost one item
    assert np.median(k[3:, 3:][~np.eye(30, dtype=bool)]) == 0.0   # most scattered pairs share no neighbour


def kkt_violation(f, u, k, lam, b):
    """How far f is from optimal for max f.u - lam/2 f'Kf, 0 <= f <= 1, sum f = b: with the gradient g and the
    multiplier nu of the sum, g_i = nu where 0 < f_i < 1, g_i <= nu where f_i = 0, g_i >= nu where f_i = 1."""
    g = u - lam * (k @ f)
    free = (f > 1e-6) & (f < 1 - 1e-6)
    nu = np.median(g[free]) if free.any() else 0.5 * (g[f > 0.5].min() + g[f <= 0.5].max())
    return max(np.abs(g[free] - nu).max(initial=0.0), (g[f <= 1e-6] - nu).max(initial=0.0),
               (nu - g[f >= 1 - 1e-6]).max(initial=0.0))


@pytest.mark.parametrize("seed, lam, b", [(0, 1.0, 5), (1, 0.3, 9), (2, 5.0, 3), (3, 0.0, 4)])
def test_the_qp_solution_satisfies_its_constraints_and_is_optimal(seed, lam, b):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    near, sq = knn(x, 5)
    z = neighbourhood_rows(near, gaussian_weights(sq, float(sq.mean())))
    u = rng.random(60)
    f, info = diverse_batch_qp(u, z, float(b), lam)
    assert info.status == "solved"
    assert f.min() >= -1e-6 and f.max() <= 1 + 1e-6                 # 0 <= f <= 1
    assert abs(f.sum() - b) <= 1e-6                                  # sum f = b
    assert kkt_violation(f, u, (z @ z.T).toarray(), lam, b) < 1e-4   # and it is the optimum
    if lam == 0.0:                                                    # no redundancy term: the b most uncertain
        assert set(np.flatnonzero(f > 0.5)) == set(np.argsort(-u)[:b])


def test_the_qp_drops_a_near_duplicate_of_a_chosen_item():
    rng = np.random.default_rng(4)
    dups = 1e-3 * rng.normal(size=(4, 2))                                        # one spot, four copies
    singles = 100.0 * np.stack([np.cos(np.arange(6)), np.sin(np.arange(6))], 1)  # six items far apart
    filler = rng.uniform(-20, 20, size=(20, 2))
    x = np.concatenate([dups, singles, filler]).astype(np.float32)
    u = np.concatenate([[1.0, 0.99, 0.98, 0.97], 0.9 - 0.01 * np.arange(6), np.full(20, 0.1)])
    near, sq = knn(x, 3)
    z = neighbourhood_rows(near, gaussian_weights(sq, float(sq.mean())))
    assert set(np.argsort(-u)[:3]) <= {0, 1, 2, 3}                 # uncertainty alone: three copies
    f, _ = diverse_batch_qp(u, z, 3.0, 1.0)
    batch = np.argsort(-f, kind="stable")[:3]
    assert sorted(batch) == [0, 4, 5]                              # one copy, the two most uncertain singles
    assert np.all(f[1:4] < 1e-6)


def test_the_scorer_takes_the_b_largest_f_and_drops_the_duplicate(monkeypatch):
    """End to end with planted uncertainties (the propagation is tested above): the scores' top-b is the QP's b
    largest f; with diversity 0 it is plain uncertainty sampling, which takes copies."""
    rng = np.random.default_rng(4)
    dups = 1e-3 * rng.normal(size=(4, 2))
    singles = 100.0 * np.stack([np.cos(np.arange(6)), np.sin(np.arange(6))], 1)
    labelled_points = [[0.0, 500.0], [500.0, 0.0]]
    x = np.concatenate([rng.uniform(-20, 20, size=(20, 2)), dups, singles, labelled_points])
    u = np.concatenate([np.full(20, 0.1), [1.0, 0.99, 0.98, 0.97], 0.9 - 0.01 * np.arange(6)])
    task = PointTask(x)
    planted = np.concatenate([[0.5, 0.5], u])                       # the two labelled items first, then the candidates
    monkeypatch.setattr(USDM, "uncertainty", lambda self, points, y: (planted[:len(points)], 30.0))
    seen = []
    real = usdm_module.diverse_batch_qp

    def recording(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(usdm_module, "diverse_batch_qp", recording)
    candidates = Candidates(task.pool_ids(), np.arange(30))
    ctx = make_context({"30": 0, "31": 1}, budget=3)
    scorer = USDM(USDM.Config(normalize=False, k_neighbours=3))
    scores = collect_scores(scorer.score(task, candidates, ctx))
    (f, info), = seen
    qp = np.argsort(-u, kind="stable")                             # every candidate is in the QP (30 < qp_size)
    chosen = TopK().select(candidates, scores, 3, ctx)
    assert list(chosen.positions) == list(qp[np.argsort(-np.round(f, 6), kind="stable")[:3]])
    assert sorted(chosen.positions) == [20, 24, 25]                # one copy and two singles
    assert scorer.stats["qp_status"] == "solved" and scorer.stats["qp_size"] == 30
    plain = collect_scores(USDM(USDM.Config(normalize=False, k_neighbours=3, diversity=0.0)).score(task, candidates,
                                                                                                 ctx))
    assert sorted(order_of(plain)[:3]) == [20, 21, 22]              # no redundancy term: three copies


def test_the_qp_ranges_over_the_most_uncertain_and_the_rest_follow_by_uncertainty():
    task, candidates, rows, labels = line_setting(61)
    ctx = make_context(labels, budget=4)
    scorer = USDM(USDM.Config(normalize=False, k_neighbours=4, qp_size=10))
    scores = collect_scores(scorer.score(task, candidates, ctx))
    assert scorer.stats["qp_size"] == 10
    order = order_of(scores)
    labelled = sorted(labels)
    points = task.x[[int(i) for i in labelled] + list(rows)]
    u = scorer.uncertainty(points, class_matrix(labels, labelled))[0][len(labelled):]
    u = u / u.max()
    qp = np.argsort(-u, kind="stable")[:10]
    assert set(order[:10]) == set(qp)                                # the QP's candidates come first
    rest = order[10:]
    assert np.all(np.diff(u[rest]) <= 0)                             # the others by decreasing uncertainty
    batch = task.x[rows[order[:4]], 0]
    assert np.min(np.diff(np.sort(batch))) > 0.04                    # spread, not four neighbours in a row


def test_same_seed_same_scores_and_edge_budgets():
    task, candidates, rows, labels = line_setting()
    scorer = USDM(USDM.Config(normalize=False, k_neighbours=4))
    a = collect_scores(scorer.score(task, candidates, make_context(labels, budget=5, seed=3)))
    b = collect_scores(scorer.score(task, list(candidates), make_context(labels, budget=5, seed=3)))
    np.testing.assert_array_equal(a, b)
    for budget in (0, len(rows), 10 * len(rows)):
        s = collect_scores(scorer.score(task, candidates, make_context(labels, budget=budget)))
        assert s.shape == (len(rows),) and len(set(s.tolist())) == len(rows)
    nothing = collect_scores(scorer.score(task, candidates, make_context({}, budget=5)))   # no labels: diversity
    assert nothing.shape == (len(rows),) and np.all(np.isfinite(nothing))
    assert collect_scores(scorer.score(task, [], make_context(labels, budget=5))).shape == (0,)


# ------------------------------------------------------------------------------------------ errors
TOY = {"name": "t", "task": {"name": "toy"}, "loop": {"rounds": 1, "initial": 5, "batch": 5}}


def test_a_task_without_the_representation_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(ToyTask, "outputs", frozenset({PROBS, FEATURES}))
    with pytest.raises(recipes.RecipeError, match=r"scorer\.name: scorer 'usdm' needs embeddings, which task 'toy' "
                                                  r"does not provide"):
        recipes.validate({**TOY, "scorer": {"name": "usdm"}})
    recipes.validate({**TOY, "scorer": {"name": "usdm", "params": {"representation": "features"}}})


@pytest.mark.parametrize("params, message", [
    ({"k_neighbours": 0}, r"scorer\.params\.k_neighbours: "), ({"diversity": -1}, r"scorer\.params\.diversity: "),
    ({"leak": 0}, r"scorer\.params\.leak: "), ({"qp_size": 0}, r"scorer\.params\.qp_size: "),
    ({"measure": "bald"}, r"scorer\.params\.measure: "), ({"lambda": 1}, r"scorer\.params\.lambda: "),
])
def test_bad_parameters_name_the_field(params, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.validate({**TOY, "scorer": {"name": "usdm", "params": params}})


def test_labels_that_are_not_classes_are_a_user_error():
    with pytest.raises(UserError, match="usdm needs class labels"):
        class_matrix({"a": [1, 2], "b": [3]}, ["a", "b"])
    y = class_matrix({"a": "cat", "b": "dog", "c": "cat"}, ["c", "b", "a"])
    np.testing.assert_array_equal(y, [[1, 0], [0, 1], [1, 0]])
