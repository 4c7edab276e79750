"""CEAL's high-confidence pseudo-labels (Wang et al., "Cost-Effective Active Learning for Deep Image
Classification", TCSVT 2016), as pure functions the task and the tests share.

Each round t, every unlabelled pool item whose predictive entropy (natural log, nats) under the current model is
below ``delta_t = delta0 - dr * t`` gets the pseudo-label ``argmax p`` for that round's training only; the set is
rebuilt from scratch every round and never stored as a label. ``delta_t`` decreases linearly (not
cumulatively); once it is <= 0 no item qualifies.
"""
from __future__ import annotations

import numpy as np

from activelab.strategies.uncertainty import entropy  # noqa: F401  (nats; shared with the core scorer)


def ceal_delta(delta0: float, dr: float, round: int) -> float:
    """The entropy threshold of round ``round``."""
    return delta0 - dr * round


def high_confidence(ent: np.ndarray, delta: float, max_fraction: float | None = None) -> np.ndarray:
    """Positions (ascending) of the items whose entropy is below ``delta``.

    ``max_fraction`` (an extension, not in the paper) caps the count at that fraction of the items, keeping the
    lowest entropies (ties by position).
    """
    ent = np.asarray(ent, dtype=np.float64)
    if delta <= 0 or ent.size == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.flatnonzero(ent < delta)
    if max_fraction is not None:
        cap = int(np.floor(max_fraction * ent.size))
        if chosen.size > cap:
            order = np.argsort(ent[chosen], kind="stable")[:cap]
            chosen = np.sort(chosen[order])
    return chosen.astype(np.int64)
