"""Competence-based curriculum (Platanios et al., NAACL 2019): difficulty, competence and the training sampler.

- difficulty of a source sentence: its length in words, or its rarity ``-sum_k log p(w_k)`` under unigram
  frequencies counted over a reference corpus (the whole pool of source sentences); mapped to its empirical CDF
  (``#{j : d_j <= d_i} / n``), so the easiest sentence has ``1/n`` (or more, with ties) and the hardest ``1``.
- competence after ``t`` of ``T`` steps: ``c(t) = min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``, ``p = 1`` linear,
  ``p = 2`` "sqrt" (fast at first, slow later); ``c(0) = c0``, ``c(T) = 1``.
- :class:`CompetenceSampler`: at step ``t`` a batch is drawn uniformly, without replacement within the batch,
  from the items whose CDF difficulty is ``<= c(t)``. Where ``c(t)`` is below every item's difficulty (``c0`` <
  ``1/n`` for fewer than ``1/c0`` items) the easiest items (those at the minimum CDF) are the eligible set, so a
  batch is never empty. With ``enabled=False`` it is plain shuffling: epochs of random permutations.

Words are ``\\w+`` runs, lower-cased (so "ninety-nine" is two words).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_WORD = re.compile(r"\w+", re.UNICODE)
POWERS = {"linear": 1, "sqrt": 2}


class CurriculumConfig(BaseModel):
    """The training sampler of every round (``enabled: false`` = plain shuffling)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    difficulty: Literal["length", "rarity"] = "length"
    competence: Literal["linear", "sqrt"] = "sqrt"
    c0: float = Field(0.01, gt=0, le=1, description="initial competence")
    steps: int | None = Field(None, ge=1, description="curriculum length T; default: the round's training steps")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def competence(t: float, T: float, c0: float = 0.01, p: float = 2) -> float:
    """``min(1, (t (1 - c0^p) / T + c0^p)^(1/p))``; ``p = 1`` linear, ``p = 2`` sqrt."""
    if T <= 0:
        return 1.0
    base = c0 ** p
    return float(min(1.0, (max(t, 0) * (1.0 - base) / T + base) ** (1.0 / p)))


def length_difficulty(sentences: Sequence[str]) -> np.ndarray:
    return np.asarray([len(words(s)) for s in sentences], dtype=np.float64)


def unigram_logprobs(corpus: Sequence[str]) -> tuple[dict[str, float], float]:
    """Log unigram probabilities of the corpus's words, and the log probability given to an unseen word
    (add-one smoothing over the vocabulary plus one unknown word)."""
    counts = Counter(w for s in corpus for w in words(s))
    total = sum(counts.values()) + len(counts) + 1
    return {w: math.log((c + 1) / total) for w, c in counts.items()}, math.log(1 / total)


def rarity_difficulty(sentences: Sequence[str], corpus: Sequence[str] | None = None) -> np.ndarray:
    """``-sum_k log p(w_k)`` with unigram probabilities from ``corpus`` (default: the sentences themselves)."""
    logp, unseen = unigram_logprobs(sentences if corpus is None else corpus)
    return np.asarray([-sum(logp.get(w, unseen) for w in words(s)) for s in sentences], dtype=np.float64)


def difficulty(sentences: Sequence[str], kind: str, corpus: Sequence[str] | None = None) -> np.ndarray:
    if kind == "length":
        return length_difficulty(sentences)
    if kind == "rarity":
        return rarity_difficulty(sentences, corpus)
    raise ValueError(f"unknown difficulty {kind!r}; available: length, rarity")


def empirical_cdf(values: np.ndarray) -> np.ndarray:
    """``#{j : v_j <= v_i} / n`` for each i: in (0, 1], monotone in ``values``, ties equal."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return v
    ordered = np.sort(v)
    return np.searchsorted(ordered, v, side="right") / v.size


class CompetenceSampler:
    """Batches of item positions for ``steps`` training steps.

    ``cdf`` holds the CDF difficulty of each training item; ``T`` is the curriculum length (competence 1 from
    step ``T`` on). Iterating yields ``(step, positions, competence)``; the numpy generator makes it
    deterministic.
    """

    def __init__(self, cdf: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator, enabled: bool = True,
                 T: int | None = None, c0: float = 0.01, p: float = 2):
        self.cdf = np.asarray(cdf, dtype=np.float64)
        self.batch_size = batch_size
        self.steps = steps
        self.rng = rng
        self.enabled = enabled
        self.T = steps if T is None else T
        self.c0, self.p = c0, p
        self._order = np.argsort(self.cdf, kind="stable")
        self._sorted = self.cdf[self._order]

    def competence(self, t: int) -> float:
        return competence(t, self.T, self.c0, self.p) if self.enabled else 1.0

    def eligible(self, t: int) -> np.ndarray:
        """Positions of the items with difficulty <= c(t) (at least the easiest ones)."""
        c = max(self.competence(t), float(self._sorted[0]))
        return self._order[: int(np.searchsorted(self._sorted, c + 1e-12, side="right"))]

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, float]]:
        n = len(self.cdf)
        if not self.enabled:
            order, at = self.rng.permutation(n), 0
            for t in range(self.steps):
                if at >= n:
                    order, at = self.rng.permutation(n), 0
                batch = order[at: at + self.batch_size]
                at += self.batch_size
                yield t, batch, 1.0
            return
        for t in range(self.steps):
            pool = self.eligible(t)
            take = min(self.batch_size, len(pool))
            yield t, self.rng.choice(pool, size=take, replace=False), self.competence(t)
