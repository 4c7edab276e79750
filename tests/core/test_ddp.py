"""activelab.torchkit.ddp: a minibatch shared out over 2 processes (gloo, torchrun) takes the same optimiser steps
as the whole minibatch on one process, with uneven parts and a minibatch smaller than the number of ranks, and
leaves every rank's model identical."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    from activelab.distributed import join, together, world
    from activelab.torchkit import ddp

    def train(batches):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
        net = ddp.wrap(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for rows in batches:
            mine, factor = ddp.share(rows)
            opt.zero_grad()
            (F.cross_entropy(net(x[mine]), y[mine], reduction="sum") * factor).backward()
            opt.step()
        return model

    if __name__ == "__main__":
        join()
        # 7 rows (parts of 3 and 4), 1 row (fewer rows than ranks: not cut), 10 rows
        batches = [torch.arange(0, 7), torch.arange(7, 8), torch.arange(8, 18)]
        assert not ddp.active() or world()[1] == 1      # outside a fit every worker runs: nothing shared
        with together():               # as inside a fit every worker runs (loop.train_on_all)
            if world()[1] > 1:          # the 7-row minibatch really is cut: rows 0-2 on rank 0, 3-6 on rank 1
                assert ddp.active() and ddp.share(batches[0])[0].tolist() == [[0, 1, 2], [3, 4, 5, 6]][world()[0]]
            model = train(batches)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert ddp.same_everywhere(flat), "the ranks' models differ"
        if world()[0] == 0:
            torch.save(flat, sys.argv[1])
''')


def test_two_processes_take_the_steps_one_process_takes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}   # gloo: two workers, any GPUs
    env.pop("WORLD_SIZE", None)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), str(script),
                           str(tmp_path / "two.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert torch.allclose(two, single, atol=1e-5), (two - single).abs().max()
    # and the steps did something: the model moved away from its initialisation
    torch.manual_seed(0)
    init = torch.cat([p.detach().reshape(-1) for p in torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).parameters()])
    assert (single - init).abs().max() > 1e-2


def test_one_process_is_the_plain_mean():
    from activelab.torchkit import ddp

    rows = list(range(6))
    assert ddp.share(rows) == (rows, 1 / 6) and not ddp.active()
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap(model) is model
