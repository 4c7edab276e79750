"""``committee_variance``: the core's scorer checks, the measure itself, and the behaviour it exists for."""
import numpy as np
import pytest
from pydantic import ValidationError

from activelab.protocol import BOOTSTRAP, MC_DROPOUT, Env, iter_chunks
from activelab.strategies.regression import EMCM, GSx
from activelab.testing import ScorerConformance, make_context
from activelab_tabular.classification import TabularClassification
from activelab_tabular.regression import PREDICTION, TabularRegression
from activelab_tabular.scorers import CommitteeVariance, committee_variance


def fitted_regression(n_labels: int = 20, **params) -> TabularRegression:
    task = TabularRegression(TabularRegression.Config(**{"epochs": 40, **params}), Env(progress=False))
    ids = list(task.pool_ids())
    task.fit({i: task.true_label(i) for i in ids[:n_labels]}, make_context(round=0))
    return task


def scores(scorer, task, candidates, labels) -> np.ndarray:
    return np.concatenate(list(iter_chunks(scorer.score(task, candidates, make_context(labels, round=1, seed=3)))))


# ------------------------------------------------------------------------------------------- conformance
class TestCommitteeVarianceConformance(ScorerConformance):
    """One finite score per candidate, reproducible, empty candidates, leaves the model as it was: inherited.
    The kit's default task is a classifier, so ``make_task`` gives it a fitted regression task instead."""

    covers = ("tabular", "scorer", "committee_variance")

    def make_scorer(self):
        return CommitteeVariance(CommitteeVariance.Config(size=3), Env())

    def make_task(self):
        return fitted_regression(self.n_labels, chunk_size=32)


class TestDropoutCommitteeConformance(TestCommitteeVarianceConformance):
    def make_scorer(self):
        return CommitteeVariance(CommitteeVariance.Config(members="dropout", size=4), Env())


class TestCoreEMCMOnTables(TestCommitteeVarianceConformance):
    """The core's regression scorers work on this task unchanged: it offers ``predictions``, the linear head's
    input as ``embeddings`` (EMCM's gradient), bootstrap members and its inputs as ``features`` (GSx)."""

    covers = None

    def make_scorer(self):
        return EMCM(EMCM.Config(size=3), Env())


class TestCoreGSxOnTables(TestCoreEMCMOnTables):
    def make_scorer(self):
        return GSx(GSx.Config(), Env())


# ------------------------------------------------------------------------------------------- the measure
def test_committee_variance_is_the_variance_over_members():
    predictions = np.array([[1.0, 2.0, 5.0], [3.0, 2.0, -5.0]])         # 2 members x 3 items
    np.testing.assert_allclose(committee_variance(predictions), [1.0, 0.0, 25.0])


def test_needs_follow_the_members():
    assert CommitteeVariance().needs == {PREDICTION, BOOTSTRAP}
    assert CommitteeVariance(CommitteeVariance.Config(members="dropout")).needs == {PREDICTION, MC_DROPOUT}
    assert not CommitteeVariance().needs <= TabularClassification.outputs   # no predictions from a classifier
    with pytest.raises(ValidationError):
        CommitteeVariance.Config(size=1)


# ------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("members", ["bootstrap", "dropout"])
def test_a_point_far_outside_the_data_is_asked_first(members):
    """Plant one candidate far from every labelled row: the committee's members extrapolate differently there,
    so its variance must be the highest of all candidates (by a wide margin)."""
    task = fitted_regression(30)
    ids = list(task.pool_ids())
    labels = {i: task.true_label(i) for i in ids[:30]}
    candidates = ids[30:130]
    planted = candidates[57]
    task.x[task.items.position(planted)] = 6.0                      # six standard deviations out in every feature
    scorer = CommitteeVariance(CommitteeVariance.Config(members=members, size=5 if members == "bootstrap" else 20))
    values = scores(scorer, task, candidates, labels)
    assert values.shape == (len(candidates),) and np.all(values >= 0)
    assert candidates[int(np.argmax(values))] == planted
    assert values[57] > 2 * np.sort(values)[-2]


def test_scores_follow_the_round():
    """The committee is drawn from (seed, round): another round gives another committee."""
    task = fitted_regression()
    ids = list(task.pool_ids())
    labels = {i: task.true_label(i) for i in ids[:20]}
    scorer = CommitteeVariance(CommitteeVariance.Config(size=3))
    one = np.concatenate(list(scorer.score(task, ids[20:60], make_context(labels, round=1))))
    two = np.concatenate(list(scorer.score(task, ids[20:60], make_context(labels, round=2))))
    assert not np.allclose(one, two)
