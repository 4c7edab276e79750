"""Shared test setup: one thread (the machine is shared and 2-core; torch with 2 threads ran 12x slower under load)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture()
def old_layout():
    """``old_layout(state, drop=())``: a task's torchkit checkpoint as activelab 0.1 wrote it (no ``format`` key,
    the ``matches`` values at the top level, and without the keys in ``drop`` that the task did not write then),
    for the tests that old run folders still resume."""
    def flatten(state, drop=()):
        out = {k: v for k, v in state.items() if k not in ("format", "matches", *drop)}
        out.update(state["matches"])
        return out

    return flatten
