"""Uncertainty scorers: how unsure the current model is about each candidate (higher = ask first).

The measures are plain numpy functions over probability arrays (``probs`` is ``(B, C)``, ``mc_probs`` is
``(T, B, C)``) so plugins can reuse them; the scorer classes walk the candidates through ``task.predict`` chunk by
chunk with :func:`score_chunks` and yield one score array per chunk, so memory stays bounded by the chunk size and
a stream selector can stop early. Natural logarithms throughout.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    MC,
    MC_DROPOUT,
    MC_SEED_BOUND,
    PROBS,
    Context,
    Env,
    ItemId,
    Task,
    seed_for,
)

from .blocks import MeasureBlock

_TINY = np.finfo(np.float64).tiny


# ------------------------------------------------------------------------------------------- measures
def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - max_y p(y|x)``."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """``-(p(y1|x) - p(y2|x))`` for the two most likely classes (0 = a tie, -1 = certain)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got probabilities of shape {p.shape}")
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
    return -(top2[..., 1] - top2[..., 0])


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """``-sum_y p log p`` with ``0 log 0 = 0`` (no warnings, no NaN for zero probabilities)."""
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(p * np.log(np.maximum(p, _TINY)), axis=axis)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information ``H[mean_t p_t] - mean_t H[p_t]`` over the leading (pass) axis; clipped at 0, which it
    is mathematically, to hide rounding."""
    p = np.asarray(mc_probs, dtype=np.float64)
    return np.maximum(entropy(p.mean(axis=0)) - entropy(p).mean(axis=0), 0.0)


def vote_entropy(mc_probs: np.ndarray) -> np.ndarray:
    """Entropy of the committee's hard votes: each member votes ``argmax_y p_t(y|x)`` (ties to the lower class);
    ``-sum_y (V(y)/T) log (V(y)/T)``. Not normalised (its maximum is ``log min(T, C)``)."""
    p = np.asarray(mc_probs, dtype=np.float64)
    n_members, n_classes = p.shape[0], p.shape[-1]
    votes = p.argmax(axis=-1)                                            # (T, B)
    counts = np.stack([(votes == c).sum(axis=0) for c in range(n_classes)], axis=-1)
    return entropy(counts / n_members)


def mean_kl(mc_probs: np.ndarray) -> np.ndarray:
    """``mean_t KL(p_t || p_bar)`` with the consensus ``p_bar = mean_t p_t`` (McCallum & Nigam's KL-to-the-mean).

    Equal to :func:`bald` of the same committee (mean KL to the mean = H[p_bar] - mean H[p_t]); computed directly.
    """
    p = np.asarray(mc_probs, dtype=np.float64)
    consensus = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(np.maximum(p, _TINY)) - np.log(np.maximum(consensus, _TINY))), axis=-1)
    return np.maximum(kl.mean(axis=0), 0.0)


def expected_gradient_length(probs: np.ndarray, embeddings: np.ndarray, bias: bool = True) -> np.ndarray:
    """``sum_y p(y|x) ||grad L(x, y)||`` for the cross-entropy of a softmax LINEAR LAST LAYER ``softmax(W h + b)``.

    This is the last-layer approximation of expected gradient length (the classification analogue of EMCM): the
    gradient is taken with respect to the last layer's weights only, where it has the closed form
    ``dL/dW = (p - e_y) h^T`` with norm ``||p - e_y|| ||h||``; with ``bias`` the bias gradient ``p - e_y`` joins
    in, giving ``||p - e_y|| sqrt(||h||^2 + 1)``. ``embeddings`` must be the features ``h`` that enter that
    layer and ``probs`` its softmax output. ``||p - e_y||^2 = ||p||^2 - 2 p_y + 1``, so this is O(B (C + D)).
    """
    p = np.asarray(probs, dtype=np.float64)
    h = np.asarray(embeddings, dtype=np.float64).reshape(len(p), -1)
    h_norm = np.sqrt(np.sum(h * h, axis=-1) + (1.0 if bias else 0.0))
    residual = np.sqrt(np.maximum(np.sum(p * p, axis=-1, keepdims=True) - 2.0 * p + 1.0, 0.0))   # (B, C)
    return np.sum(p * residual, axis=-1) * h_norm


# ------------------------------------------------------------------------------------------- plumbing
def score_chunks(task: Task, candidates: Sequence[ItemId], want: Collection[str],
                 measure: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                 mc: MC | None = None) -> Iterator[np.ndarray]:
    """Walk ``candidates`` through ``task.predict`` and yield ``measure(outputs)`` per chunk, as float64.

    Lazy: nothing is predicted until the first chunk is asked for, and a consumer that stops early stops the
    predictions. Checks that the chunks cover the candidates exactly.
    """
    if len(candidates) == 0:
        return
    seen = 0
    for outputs in task.predict(candidates, set(want), mc=mc):
        scores = np.asarray(measure(outputs), dtype=np.float64).reshape(-1)
        seen += len(scores)
        if seen > len(candidates):
            raise ValueError(f"task.predict yielded more than the {len(candidates)} items it was asked for")
        yield scores
    if seen != len(candidates):
        raise ValueError(f"task.predict yielded {seen} items for {len(candidates)} candidates")


def measure_blocks(task: Task, candidates: Sequence[ItemId], kind: str, mc: MC | None = None) -> Iterator[MeasureBlock]:
    """Walk ``candidates`` through ``task.predict`` for ``probs`` and yield each batch as a
    :class:`~.blocks.MeasureBlock` of the measure ``kind``: its scores are computed by whoever reads it
    (``np.asarray``), or fused with a top-k selector's pass (which joins batches into 64k blocks first). Lazy, and
    checks the item count like :func:`score_chunks`."""
    if len(candidates) == 0:
        return
    axis = 0 if mc is None else 1
    seen = 0
    for out in task.predict(candidates, {PROBS}, mc=mc):
        probs = out[PROBS]
        if not hasattr(probs, "device"):      # numpy, or a list; a torch tensor stays where it is (see MeasureBlock)
            probs = np.asarray(probs)
        seen += probs.shape[axis]
        if seen > len(candidates):
            raise ValueError(f"task.predict yielded more than the {len(candidates)} items it was asked for")
        yield MeasureBlock(kind, probs)
    if seen != len(candidates):
        raise ValueError(f"task.predict yielded {seen} items for {len(candidates)} candidates")


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------- scorers
class RandomScorer:
    """Uniform random scores from ``ctx.rng("random")``: the random-sampling baseline (reproducible per round)."""

    Config = _NoParams
    needs: Collection[str] = frozenset()

    def __init__(self, config: BaseModel | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        return ctx.rng("random").random(len(candidates))


class _ProbsScorer:
    """A measure of ``probs`` alone, in blocks of 64k items whose scores the selector computes (fused with its
    top-k where it keeps one; see :mod:`.blocks`). The float64 functions above are the reference the fused
    kernels are tested against."""

    Config = _NoParams
    needs: Collection[str] = frozenset({PROBS})
    kind: str
    measure: Callable[[np.ndarray], np.ndarray]

    def __init__(self, config: BaseModel | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[MeasureBlock]:
        return measure_blocks(task, candidates, self.kind)


class LeastConfidence(_ProbsScorer):
    """``1 - max_y p(y|x)``."""

    kind = "least_confidence"
    measure = staticmethod(least_confidence)


class Margin(_ProbsScorer):
    """``-(p(y1|x) - p(y2|x))``: smallest margin between the two most likely classes first."""

    kind = "margin"
    measure = staticmethod(margin)


class Entropy(_ProbsScorer):
    """``-sum_y p log p``."""

    kind = "entropy"
    measure = staticmethod(entropy)


class BALD:
    """Bayesian active learning by disagreement with MC dropout (Houlsby et al. 2011; Gal et al. 2017):
    ``H[mean_t p_t] - mean_t H[p_t]`` over ``samples`` dropout passes with a fresh mask per item and pass."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        samples: int = Field(20, ge=2, description="MC dropout passes T (Gal et al. 2017 use 20)")

    needs: Collection[str] = frozenset({PROBS, MC_DROPOUT})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[MeasureBlock]:
        seed = seed_for(ctx.seed, ctx.round, "bald", below=MC_SEED_BOUND)
        mc = MC(samples=self.config.samples, mode="dropout", seed=seed)
        return measure_blocks(task, candidates, "bald", mc=mc)


class QueryByCommittee:
    """Committee disagreement: vote entropy over hard votes, or mean KL(member || consensus).

    Members are ``"batchwise"`` dropout networks (Ducoffe & Precioso 2015: member t = the trained net with one
    dropout mask fixed across the whole pool) or ``"bootstrap"`` models, which the task trains on bootstrap
    resamples of the labels (``task.fit_bootstrap(labels, size, seed)``) before predicting with
    ``MC(mode="bootstrap")``. ``needs`` follows the members.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        members: Literal["batchwise", "bootstrap"] = "batchwise"
        size: int = Field(10, ge=2, description="committee size")
        disagreement: Literal["vote_entropy", "kl"] = "vote_entropy"

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({PROBS,
                                                 MC_DROPOUT if self.config.members == "batchwise" else BOOTSTRAP})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        cfg = self.config
        seed = seed_for(ctx.seed, ctx.round, "qbc", below=MC_SEED_BOUND)
        if cfg.members == "bootstrap" and len(candidates) > 0:
            fit_bootstrap = hooks.fit_bootstrap(task)
            if fit_bootstrap is None:
                raise UserError(f"scorer.params.members: task {type(task).__name__} has no "
                                f"fit_bootstrap(labels, size, seed); use members: batchwise")
            fit_bootstrap(ctx.labels, cfg.size, seed)
        measure = vote_entropy if cfg.disagreement == "vote_entropy" else mean_kl
        mc = MC(samples=cfg.size, mode=cfg.members, seed=seed)
        return score_chunks(task, candidates, {PROBS}, lambda out: measure(out[PROBS]), mc=mc)


class ExpectedGradientLength:
    """Expected gradient length (Settles et al. 2008), the classification analogue of EMCM (Cai et al. 2013):
    ``sum_y p(y|x) ||grad_theta L(x, y)||`` with theta = the last (softmax linear) layer only, computed in closed
    form from ``probs`` and ``embeddings`` (see :func:`expected_gradient_length`). The full-network gradient would
    need one backward pass per candidate and class; the last layer is the usual, task-independent approximation."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bias: bool = Field(True, description="include the last layer's bias in the gradient")

    needs: Collection[str] = frozenset({PROBS, EMBEDDINGS})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        bias = self.config.bias
        return score_chunks(task, candidates, {PROBS, EMBEDDINGS},
                            lambda out: expected_gradient_length(out[PROBS], out[EMBEDDINGS], bias))


#: Scorers another scorer may build on by name (``density``'s ``base``).
UNCERTAINTY: dict[str, type[Any]] = {
    "random": RandomScorer, "least_confidence": LeastConfidence, "margin": Margin, "entropy": Entropy,
    "bald": BALD, "qbc": QueryByCommittee, "egl": ExpectedGradientLength,
}
