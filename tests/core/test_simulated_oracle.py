"""The simulated oracle: ground truth, seeded per-item label noise, delay, laziness."""
import time

import numpy as np
import pytest
import torch

from activelab.errors import UserError
from activelab.protocol import Env, Label
from activelab.strategies.simulated import SimulatedOracle
from activelab.testing import OracleConformance, ToyTask, make_context

torch.set_num_threads(1)


class TestSimulatedOracleConformance(OracleConformance):
    covers = ("core", "oracle", "simulated")

    def make_oracle(self):
        return SimulatedOracle(SimulatedOracle.Config(), Env())


class TestNoisyOracleConformance(OracleConformance):
    covers = ("core", "oracle", "simulated")

    def make_oracle(self):
        return SimulatedOracle(SimulatedOracle.Config(noise=0.5), Env())


class Truth:
    """10,000 items with labels i % 5, a counting true_label and a corrupt_label like a classifier's."""

    def __init__(self):
        self.asked = 0

    def true_label(self, item):
        self.asked += 1
        return int(item) % 5

    def corrupt_label(self, value, rng):
        return (value + 1 + int(rng.integers(4))) % 5


ITEMS = [str(i) for i in range(10_000)]


def answers(oracle, task, items, **ctx):
    return {a.item_id: a.value for a in oracle.label(task, items, make_context(**ctx))}


def test_without_noise_answers_the_truth():
    task = ToyTask()
    got = list(SimulatedOracle().label(task, task.pool_ids()[:30], make_context()))
    assert got == [Label(i, task.true_label(i), annotator="simulated") for i in task.pool_ids()[:30]]


def test_noise_flips_about_that_fraction_deterministically_per_item():
    oracle = SimulatedOracle(SimulatedOracle.Config(noise=0.2))
    task = Truth()
    got = answers(oracle, task, ITEMS, seed=4)
    wrong = [i for i in ITEMS if got[i] != int(i) % 5]
    assert 0.18 < len(wrong) / len(ITEMS) < 0.22
    assert all(0 <= got[i] < 5 for i in wrong)
    # the same item gets the same answer alone, in another batch, in another round
    sample = wrong[:20] + ITEMS[:20]
    assert answers(oracle, task, sample[::-1], seed=4, round=7) == {i: got[i] for i in sample}
    # another seed flips other items
    other = answers(oracle, task, ITEMS[:2000], seed=5)
    assert {i for i in ITEMS[:2000] if other[i] != int(i) % 5} != {i for i in wrong if int(i) < 2000}


def test_noise_needs_a_task_that_can_corrupt_labels():
    class NoCorrupt:
        def true_label(self, item):
            return 0

    with pytest.raises(UserError, match="oracle.params.noise"):
        SimulatedOracle(SimulatedOracle.Config(noise=0.1)).label(NoCorrupt(), ["1"], make_context())
    assert answers(SimulatedOracle(), NoCorrupt(), ["1"]) == {"1": 0}


def test_answers_one_at_a_time_with_delay():
    task = Truth()
    stream = SimulatedOracle(SimulatedOracle.Config(delay_s=0.02)).label(task, ITEMS[:3], make_context())
    started = time.perf_counter()
    first = next(stream)
    assert first == Label("0", 0) and task.asked == 1            # nothing asked ahead of the consumer
    list(stream)
    assert time.perf_counter() - started >= 0.06 and task.asked == 3


def test_config_limits():
    from pydantic import ValidationError

    for bad in ({"noise": 1.5}, {"noise": -0.1}, {"delay_s": -1}, {"noize": 0.1}):
        with pytest.raises(ValidationError):
            SimulatedOracle.Config(**bad)
    assert np.isclose(SimulatedOracle.Config().noise, 0.0)
