"""Where tensors go: the core picks the device once and hands it to every component in
:class:`~activelab.protocol.Env`."""
from __future__ import annotations

import torch


def pick_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
