"""MC dropout helpers: which modules drop, and how masks are shared (batchwise) or fresh (dropout)."""
import pytest
import torch
from torch import nn

from activelab.device import pick_device
from activelab.torchkit import mc_dropout

torch.set_num_threads(1)


def ones_through(model, rows, **kw):
    with torch.inference_mode(), mc_dropout(model, **kw):
        return model(torch.ones(rows, 16))


def test_only_dropout_modules_train_and_every_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.eval()
    model[3].train()  # an odd mix, which must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    stats = model[1].running_mean.clone()
    with mc_dropout(model, "dropout", seed=0):
        assert model[2].training
        assert not model[1].training and not model[0].training and not model[3].training
        model(torch.randn(5, 4))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert torch.equal(model[1].running_mean, stats)           # BatchNorm did not update its statistics
    assert "forward" not in model[2].__dict__                  # the original forward is back


def test_restored_after_an_exception():
    model = nn.Sequential(nn.Dropout(0.5))
    with pytest.raises(RuntimeError), mc_dropout(model, "batchwise", seed=0):
        raise RuntimeError("boom")
    assert "forward" not in model[0].__dict__ and model.training
    x = torch.ones(3, 16)
    assert torch.equal(model.eval()(x), x)


def test_batchwise_one_mask_per_member_across_items_and_batches():
    model = nn.Sequential(nn.Dropout(0.5))
    with torch.inference_mode(), mc_dropout(model, "batchwise", seed=3) as drop:
        drop.member = 0
        a = model(torch.ones(8, 16))
        drop.member = 1
        other = model(torch.ones(8, 16))
        drop.member = 0
        b = model(torch.ones(3, 16))                            # another batch, another size
    assert torch.equal(a, a[:1].expand_as(a))                   # every item of the batch shares the mask
    assert torch.equal(b, a[:3])                                # and so does every batch
    assert not torch.equal(other[0], a[0])                      # members are different partial networks
    assert set(a.unique().tolist()) == {0.0, 2.0}               # inverted dropout scaling 1 / (1 - p)
    # a new block with the same seed rebuilds the same members, chunk index or not
    again = ones_through(model, 2, mode="batchwise", seed=3, member=1, chunk=9)
    assert torch.equal(again, other[:2])
    assert not torch.equal(ones_through(model, 1, mode="batchwise", seed=4), a[:1])


def test_independent_dropout_differs_across_items_and_passes_but_is_seeded():
    model = nn.Sequential(nn.Dropout(0.5))
    with torch.inference_mode(), mc_dropout(model, "dropout", seed=3) as drop:
        passes = [model(torch.ones(6, 16)) for _ in drop.members(2)]
    assert not torch.equal(passes[0], passes[1])
    assert not torch.equal(passes[0][0], passes[0][1])
    with torch.inference_mode(), mc_dropout(model, "dropout", seed=3):
        assert torch.equal(model(torch.ones(6, 16)), passes[0])       # reproducible
    assert not torch.equal(ones_through(model, 6, mode="dropout", seed=3, chunk=1), passes[0])


def test_channelwise_dropout_drops_whole_channels():
    model = nn.Sequential(nn.Dropout2d(0.5))
    with torch.inference_mode(), mc_dropout(model, "batchwise", seed=1):
        out = model(torch.ones(2, 32, 3, 3))
    per_channel = out.flatten(2)
    assert torch.equal(per_channel, per_channel[..., :1].expand_as(per_channel))
    assert torch.equal(out[0], out[1])
    assert 0 < (out[0, :, 0, 0] == 0).sum() < 32


def test_p_zero_and_errors():
    x = torch.ones(2, 16)
    assert torch.equal(ones_through(nn.Sequential(nn.Dropout(0.0)), 2, mode="dropout"), x)
    with pytest.raises(ValueError, match="no nn.Dropout"), mc_dropout(nn.Linear(2, 2)):
        pass
    with pytest.raises(ValueError, match="mode"), mc_dropout(nn.Dropout(0.1), "bootstrap"):
        pass


def test_pick_device():
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")
