"""activelab.torchkit: seeded RNG forks, the checkpoint format, the item index, optimizers, the Hugging Face helper;
and the one seed helper (seed_for) reproducing the values of the helpers it replaced."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from activelab.errors import UserError
from activelab.protocol import MC_SEED_BOUND, TORCH_SEED_BOUND, Context, rng_for, seed_for
from activelab.testing import ToyTask, make_context, true_labels
from activelab.torchkit import (
    ItemIndex,
    build_optimizer,
    check,
    checkpoint,
    load_from_disk,
    require_columns,
    restore,
    seeded,
    snapshot,
)
from activelab.torchkit.seeding import forked_devices


# ------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [0, 1, 7, 123456789, 2**40 + 3])
@pytest.mark.parametrize("stream", [("toy-init",), (3, "toy-fit"), ("dropout", 2, 5), ("batchwise", 0, 1)])
def test_seed_for_reproduces_the_retired_seed_helpers(seed, stream):
    """derive_seed (core/dropout.py) and mc_seed (the scorers) were integers(2**63 - 1) and integers(2**31 - 1)
    of the same rng_for streams: seed_for with their bounds gives the very same values, so MC masks, the toy and
    restoration networks and the scorers' MC seeds (and every number made with them) are unchanged."""
    derive_seed = int(rng_for(seed, *stream).integers(2**63 - 1))
    assert seed_for(seed, *stream, below=TORCH_SEED_BOUND) == derive_seed
    ctx = Context(round=stream[0] if isinstance(stream[0], int) else 0, seed=seed, budget=1, labels={})
    mc_seed = int(ctx.rng("bald").integers(2**31 - 1))
    assert seed_for(ctx.seed, ctx.round, "bald", below=MC_SEED_BOUND) == mc_seed
    assert seed_for(seed, *stream) == int(rng_for(seed, *stream).integers(2**62))      # the default is unchanged


# ------------------------------------------------------------------------------------------- seeded
def test_seeded_restores_the_outer_generator_and_is_reproducible():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded(11):
        first = torch.rand(4)
    after = torch.rand(3)
    assert torch.equal(after, expected), "the outer stream must continue as if the block had not run"
    with seeded(11, "cpu"):
        again = torch.rand(4)
    with seeded(12):
        other = torch.rand(4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_seeded_restores_state_when_the_block_raises():
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    with pytest.raises(RuntimeError), seeded(1):
        torch.rand(2)
        raise RuntimeError("boom")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_forked_devices():
    assert forked_devices(None) == [] and forked_devices("cpu") == [] and forked_devices(torch.device("cpu")) == []
    assert forked_devices("cuda:1") == [1]       # an explicit index needs no CUDA to answer


# ------------------------------------------------------------------------------------------- state
def _net(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Linear(width, 2))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_snapshot_restore_round_trips_model_and_optimizer_exactly(kind):
    with seeded(0):
        model = _net()
    optimizer = build_optimizer(model.parameters(), kind, lr=0.01, momentum=0.9, weight_decay=1e-3)
    _train(model, optimizer, 5, seed=1)
    state = checkpoint(matches={"pool_size": 10}, model=model, optimizer=optimizer, members=[model], fitted=True)
    assert state["format"] == 1 and state["matches"] == {"pool_size": 10} and state["fitted"] is True
    assert all(v.device.type == "cpu" for v in state["model"].values())
    frozen = copy.deepcopy(state)

    with seeded(99):
        other = _net()                                   # different initial weights: all must come from the state
    check(state, {"pool_size": 10})
    other = restore(other, state["model"])
    other_opt = restore(build_optimizer(other.parameters(), kind, lr=0.01, momentum=0.9, weight_decay=1e-3),
                        state["optimizer"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    _train(model, optimizer, 3, seed=2)                  # both continue identically ...
    _train(other, other_opt, 3, seed=2)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    for name, value in state["model"].items():           # ... and the checkpoint is untouched by either
        assert torch.equal(value, frozen["model"][name])
    for key, slots in state["optimizer"]["state"].items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(frozen["optimizer"]["state"][key][name]))


def test_snapshot_of_none_and_reserved_keys():
    assert snapshot(None) is None
    state = checkpoint(matches={})
    assert state["model"] is None and state["optimizer"] is None and state["members"] == []
    with pytest.raises(ValueError, match="extra keys format clash"):
        checkpoint(matches={}, format=2)


def _one_line_user_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("checkpoint does not match"), message
    for part in parts:
        assert part in message, message
    return message


def test_restore_refuses_a_model_of_another_shape_naming_what_differs():
    state = snapshot(_net(width=4))
    with pytest.raises(UserError) as err:
        restore(_net(width=5), state)
    _one_line_user_error(err, "the model", "shape of 0.weight (4, 3) in the checkpoint, (5, 3) now")
    with pytest.raises(UserError) as err:
        restore(nn.Sequential(nn.Linear(3, 4)), state, "bootstrap member 2")
    _one_line_user_error(err, "bootstrap member 2", "unexpected 2.weight")
    with pytest.raises(UserError) as err:
        restore(_net(), None)
    _one_line_user_error(err, "holds none")


def test_restore_refuses_an_optimizer_with_other_parameter_groups():
    model = _net()
    optimizer = build_optimizer(model.parameters(), "adam", lr=0.1)
    _train(model, optimizer, 1, seed=0)
    small = nn.Linear(3, 2)
    with pytest.raises(UserError) as err:
        restore(build_optimizer(small.parameters(), "adam", lr=0.1), snapshot(optimizer))
    _one_line_user_error(err, "the optimizer")


def test_check_names_what_differs_and_reads_the_layout_before_the_format():
    state = checkpoint(matches={"classes": ["a", "b"], "pool_size": 10, "tokenizer": "x" * 500})
    check(state, {"classes": ("a", "b"), "pool_size": 10, "tokenizer": "x" * 500})      # tuples match lists
    with pytest.raises(UserError) as err:
        check(state, {"classes": ["a", "b"], "pool_size": 12, "tokenizer": "y" * 500})
    _one_line_user_error(err, "the task's data", "pool_size 10 in the checkpoint, 12 now", "tokenizer differs")
    with pytest.raises(UserError) as err:
        check(state, {"images": ["x.png"]}, "the task")
    _one_line_user_error(err, "the task:", "images missing from the checkpoint")
    # activelab 0.1 wrote the values at the top level and nothing else of the format
    legacy = {"model": {}, "optimizer": {}, "fitted": True, "classes": ["a", "b"], "pool_size": 10}
    check(legacy, {"classes": ["a", "b"], "pool_size": 10})
    check({"model": {}}, {"pool_size": 10})               # the toy task recorded none: nothing to compare
    with pytest.raises(UserError) as err:
        check(legacy, {"classes": ["a", "c"], "pool_size": 10})
    _one_line_user_error(err, "classes ['a', 'b'] in the checkpoint, ['a', 'c'] now")


def test_the_toy_task_resumes_from_its_old_checkpoint_layout():
    task = ToyTask()
    task.fit(true_labels(task, task.pool_ids()[:30]), make_context(round=0))
    task.fit_bootstrap(true_labels(task, task.pool_ids()[:30]), 2, seed=3)
    old = {"model": {k: v.detach().clone() for k, v in task.model.state_dict().items()},      # what 0.1 wrote
           "members": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in task.members]}
    for state in (old, task.state_dict()):
        again = ToyTask()
        again.load_state_dict(state)
        ids = task.pool_ids()[:40]
        probs = [np.concatenate([c["probs"] for c in t.predict(ids, {"probs"})]) for t in (again, task)]
        assert np.array_equal(*probs)
        assert len(again.members) == 2
    with pytest.raises(UserError, match="checkpoint does not match the task's data: pool_size 300"):
        ToyTask(ToyTask.Config(n_items=100)).load_state_dict(task.state_dict())


# ------------------------------------------------------------------------------------------- items
def test_item_index():
    index = ItemIndex(["b", "a", "c"])
    assert len(index) == 3 and list(index) == ["b", "a", "c"] and "a" in index and "z" not in index
    assert index.position("c") == 2 and index.check("a") == 1
    assert index.positions(["c", "b"]).tolist() == [2, 0] and index.positions([]).dtype == np.int64
    with pytest.raises(KeyError, match=r"unknown item 'z' \(not in the pool\)"):
        index.positions(["a", "z"])
    with pytest.raises(KeyError, match="unknown item"):
        index.position(["unhashable"])
    with pytest.raises(ValueError, match=r"^unknown item 'z' \(not in the pool\)$"):
        index.check("z")
    with pytest.raises(ValueError, match="duplicate item id 'a'"):
        ItemIndex(["a", "b", "a"])


# ------------------------------------------------------------------------------------------- optim
def test_build_optimizer_kinds_settings_and_frozen_parameters():
    model = _net()
    model[0].weight.requires_grad_(False)
    adam = build_optimizer(model.parameters(), "adam", lr=0.5, betas=(0.5, 0.9), eps=1e-9, weight_decay=0.1)
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.5, (0.5, 0.9), 1e-9, 0.1)
    assert len(group["params"]) == len(list(model.parameters())) - 1             # the frozen weight is left out
    assert type(build_optimizer(model.parameters(), "adamw", lr=1.0)) is torch.optim.AdamW
    assert build_optimizer(model.parameters(), "adamw", lr=1.0).param_groups[0]["weight_decay"] == 0.0
    sgd = build_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; available: adam, adamw, sgd"):
        build_optimizer(model.parameters(), "lion", lr=1.0)


# ------------------------------------------------------------------------------------------- Hugging Face
FIELD = "task.params.data"


@pytest.fixture()
def hf(tmp_path):
    datasets = pytest.importorskip("datasets")

    def save(name: str, splits: dict[str, int] | None = None, rows: int = 4):
        def part(n: int):
            return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [i % 2 for i in range(n)]})
        data = part(rows) if splits is None else datasets.DatasetDict({s: part(n) for s, n in splits.items()})
        data.save_to_disk(str(tmp_path / name))
        return tmp_path / name

    return save


def _error(call, *parts: str) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_hf_plain_dataset_is_the_pool(hf):
    path = hf("plain", rows=5)
    got = load_from_disk(path, field=FIELD)
    assert len(got.pool) == 5 and got.test is None and got.pool_split is None and got.pool_where == str(path)
    for name in ("split", "test_split"):
        _error(lambda: load_from_disk(path, **{name: "train"}, field=FIELD),
               f"{FIELD}.{name}: ", "single dataset without splits")


def test_hf_the_default_split_rule(hf):
    got = load_from_disk(hf("tt", {"train": 3, "test": 2}), field=FIELD)
    assert (got.pool_split, got.test_split, len(got.pool), len(got.test)) == ("train", "test", 3, 2)
    assert got.test_where.endswith("(test split 'test')") and got.pool_where.endswith("(split 'train')")
    got = load_from_disk(hf("vt", {"validation": 3, "test": 2}), field=FIELD)     # no train: the one non-test split
    assert (got.pool_split, got.test_split) == ("validation", "test")
    got = load_from_disk(hf("only", {"test": 3}), field=FIELD)                     # a single split is the pool
    assert (got.pool_split, got.test_split) == ("test", None)
    got = load_from_disk(hf("tv", {"train": 3, "validation": 2}), field=FIELD)    # no test split: none
    assert (got.pool_split, got.test) == ("train", None)
    got = load_from_disk(hf("tt2", {"train": 3, "test": 2}), "test", "train", field=FIELD)   # named ones win
    assert (got.pool_split, got.test_split) == ("test", "train")
    _error(lambda: load_from_disk(hf("ab", {"a": 1, "b": 1, "test": 1}), field=FIELD),
           f"{FIELD}.split: ", "none named 'train'", "available splits: a, b, test")


def test_hf_errors_are_one_line_and_name_the_field(hf, tmp_path):
    path = hf("dd", {"train": 3, "test": 2})
    _error(lambda: load_from_disk(path, "dev", field=FIELD),
           f"{FIELD}.split: 'dev' not found in {path}; available splits: train, test")
    _error(lambda: load_from_disk(path, test_split="dev", field=FIELD),
           f"{FIELD}.test_split: 'dev' not found", "available splits: train, test")
    _error(lambda: load_from_disk(path, "train", "train", field=FIELD),
           f"{FIELD}.test_split: 'train' is also the pool split")
    _error(lambda: load_from_disk(tmp_path / "nowhere", field=FIELD, path_field="test_path"),
           f"{FIELD}.test_path: folder {tmp_path / 'nowhere'} does not exist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json\n\nat all")
    _error(lambda: load_from_disk(tmp_path / "junk", field=FIELD),
           f"{FIELD}.path: ", "not a dataset saved with save_to_disk")
    _error(lambda: load_from_disk(None, field=FIELD), f"{FIELD}.path: required for kind hf_disk")
    got = load_from_disk(path, field=FIELD)
    require_columns(got.pool, {"text_column": "text"}, FIELD, got.pool_where)
    _error(lambda: require_columns(got.test, {"text_column": "text", "label_column": "y"}, FIELD, got.test_where),
           f"{FIELD}.label_column: column 'y' not in {path} (test split 'test'); available columns: text, label")
