"""Shared test setup: one torch thread. The tables are tiny, so extra threads only fight each other (and any
other test run on the machine) for cores; the command-line tests pass the same setting to their subprocesses."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
