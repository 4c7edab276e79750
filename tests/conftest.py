"""Shared test setup: one thread (the machine is shared and 2-core; torch with 2 threads ran 12x slower under load)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
