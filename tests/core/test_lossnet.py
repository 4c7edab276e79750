"""The shared learning-loss pieces (activelab.torchkit.lossnet): the pair ranking loss against the paper's formula,
the module's pooling and layers, taps by forward hooks, and the module learning to rank planted high-loss items;
the core's predicted_loss scorer choosing its output."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from activelab.protocol import PREDICTED_LOSS, PREDICTED_LOSS_NORM
from activelab.strategies.lossprediction import PredictedLoss
from activelab.torchkit.lossnet import (
    LossPredictionConfig,
    LossPredictionModule,
    Taps,
    channels,
    global_average_pool,
    ranking_loss,
)

torch.set_num_threads(1)


def paper_ranking_loss(predicted: list[float], target: list[float], margin: float) -> float:
    """Yoo & Kweon's loss written out: the minibatch of B split into B/2 pairs (item i with item B-1-i), each
    L = max(0, -A(l_i, l_j) (lhat_i - lhat_j) + xi) with A = +1 if l_i > l_j else -1, and the joint loss's ranking
    term (2/B) sum over pairs = the mean over pairs."""
    b = len(predicted)
    pairs = [(i, b - 1 - i) for i in range(b // 2)]
    total = 0.0
    for i, j in pairs:
        a = 1.0 if target[i] > target[j] else -1.0
        total += max(0.0, -a * (predicted[i] - predicted[j]) + margin)
    return 2.0 / b * total if b % 2 == 0 else total / len(pairs)


def test_the_ranking_loss_is_the_papers_formula():
    predicted = [0.3, 2.0, -1.0, 0.5, 1.5, 0.0]
    target = [2.0, 0.1, 0.7, 3.0, 0.2, 1.0]
    # pairs (0, 5): l0 > l5, lhat0 - lhat5 = 0.3 -> 0.7; (1, 4): l1 < l4, lhat1 - lhat4 = 0.5 -> 1.5;
    #       (2, 3): l2 < l3, lhat2 - lhat3 = -1.5 -> 0.             mean: 2.2 / 3
    for margin, expected in ((1.0, 2.2 / 3), (0.0, 0.5 / 3), (2.5, (2.2 + 3.0 + 1.0) / 3)):
        got = ranking_loss(torch.tensor(predicted), torch.tensor(target), margin).item()
        assert got == pytest.approx(expected) == pytest.approx(paper_ranking_loss(predicted, target, margin))
    rng = np.random.default_rng(0)
    for b in (2, 5, 8, 33):
        p, t = rng.normal(size=b).tolist(), rng.normal(size=b).tolist()
        assert ranking_loss(torch.tensor(p, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), 1.0).item() \
            == pytest.approx(paper_ranking_loss(p, t, 1.0))
    # the gradient pushes only the wrongly ordered pairs (within the margin), the targets are never trained
    p = torch.tensor(predicted, requires_grad=True)
    t = torch.tensor(target, requires_grad=True)
    ranking_loss(p, t, 1.0).backward()
    assert t.grad is None
    assert p.grad.tolist() == pytest.approx([-1 / 3, 1 / 3, 0.0, 0.0, -1 / 3, 1 / 3])


def test_the_module_pools_each_tap_then_fc_relu_concatenates_then_fc():
    torch.manual_seed(0)
    module = LossPredictionModule([3, 4], hidden=5, outputs=2)
    assert [n for n, _ in module.named_parameters()] == ["fcs.0.weight", "fcs.0.bias", "fcs.1.weight", "fcs.1.bias",
                                                         "out.weight", "out.bias"]
    maps, vectors = torch.randn(6, 3, 4, 4), torch.randn(6, 4)
    by_hand = torch.cat([torch.relu(module.fcs[0](maps.mean(dim=(2, 3)))), torch.relu(module.fcs[1](vectors))], 1)
    torch.testing.assert_close(module([maps, vectors]), module.out(by_hand))
    assert global_average_pool(vectors) is vectors
    assert global_average_pool(torch.randn(2, 3, 5)).shape == (2, 3)      # a sequence: the mean over time
    with pytest.raises(ValueError, match="reads 2 taps"):
        module([maps])
    assert LossPredictionConfig().model_dump() == {"enabled": True, "hidden": 128, "weight": 1.0, "margin": 1.0,
                                                   "detach_after": 0.6}     # the card's settings


def test_taps_record_the_named_outputs_and_leave_the_model_as_it_was():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(3, 1, 6, 6)
    net(x)
    with Taps(net, ["2", "0"]) as taps:
        y = net(x)
    assert [tuple(t.shape) for t in taps.outputs] == [(3, 4, 4, 4), (3, 4, 4, 4)]
    torch.testing.assert_close(taps.outputs[0], torch.relu(net[1](net[0](x))))
    assert all(not m._forward_hooks for m in net.modules())          # the hooks are gone
    torch.testing.assert_close(net(x), y)
    with pytest.raises(ValueError, match="no submodule 9"):
        Taps(net, ["9"])
    with pytest.raises(RuntimeError, match="did not run"):
        with Taps(net, ["0"]) as unused:
            pass
        unused.outputs
    stats, rng, training = net[1].running_mean.clone(), torch.random.get_rng_state(), net.training
    assert channels(net, ["0", "4"], x) == [4, 2]                   # a dry run: no statistics, no random numbers
    assert torch.equal(net[1].running_mean, stats) and torch.equal(torch.random.get_rng_state(), rng)
    assert net.training == training


def test_the_module_learns_to_rank_planted_high_loss_feature_maps():
    """Feature maps whose channel 0 carries the (hidden) loss: trained on the ranking loss alone, the module puts
    unseen items with a planted high loss first."""
    torch.manual_seed(0)
    module = LossPredictionModule([4, 8], hidden=16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)

    def batch(n):
        taps = [torch.randn(n, 4, 3, 3), torch.randn(n, 8)]
        return taps, taps[0][:, 0].mean(dim=(1, 2)) * 3 + 0.1 * torch.randn(n)

    for _ in range(300):
        taps, loss = batch(16)
        step = ranking_loss(module(taps)[:, 0], loss)
        optimizer.zero_grad()
        step.backward()
        optimizer.step()
    taps, _ = batch(50)
    taps[0][:5, 0] += 4.0                                         # five planted high-loss items
    order = module(taps)[:, 0].argsort(descending=True)
    assert set(order[:5].tolist()) == set(range(5))


class _Task:
    def __init__(self, outputs):
        self.outputs = frozenset(outputs)


def test_the_predicted_loss_scorer_reads_the_normalised_estimate_only_where_it_exists():
    default, raw, norm = PredictedLoss(), PredictedLoss(PredictedLoss.Config(normalise=False)), \
        PredictedLoss(PredictedLoss.Config(normalise=True))
    assert set(default.needs) == set(raw.needs) == {PREDICTED_LOSS} and set(norm.needs) == {PREDICTED_LOSS_NORM}
    speech, vision = _Task({PREDICTED_LOSS, PREDICTED_LOSS_NORM}), _Task({PREDICTED_LOSS})
    assert (default.output(speech), raw.output(speech), norm.output(speech)) == \
        (PREDICTED_LOSS_NORM, PREDICTED_LOSS, PREDICTED_LOSS_NORM)
    assert (default.output(vision), raw.output(vision)) == (PREDICTED_LOSS, PREDICTED_LOSS)
