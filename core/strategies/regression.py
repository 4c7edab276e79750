"""Scorers for regression tasks: tasks whose ``predict`` yields ``PREDICTIONS`` (numbers, not class probabilities).

- :class:`EMCM`: expected model change maximisation (Cai, Zhang & Zhou, "Maximizing Expected Model Change for
  Active Learning in Regression", ICDM 2013).
- :class:`CommitteeVariance`: query-by-committee for regression, the variance of a committee's predictions
  (RayChaudhuri & Hamey 1995; Burbidge, Rowland & King 2007).
- :class:`GSx`: greedy sampling in the input space (Wu, Lin & Huang, "Active learning for regression using greedy
  sampling", Information Sciences 2019), the k-center traversal of :mod:`.diversity` on the task's ``features``.

The measures are plain numpy functions (:func:`emcm`, :func:`committee_variance`) so plugins can reuse them; the
scorers walk the candidates through ``task.predict`` chunk by chunk. Committees are drawn from
``seed_for(ctx.seed, ctx.round, <scorer>)``, so a resumed run scores exactly as an uninterrupted one.
"""
from __future__ import annotations

from typing import Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    MC_SEED_BOUND,
    PREDICTIONS,
    Context,
    Env,
    ItemId,
    Task,
    seed_for,
)

from .diversity import embed, k_center_scores, nearest_distance
from .uncertainty import score_chunks

Members = Literal["bootstrap", "dropout"]


# ------------------------------------------------------------------------------------------- measures
def _members(member_predictions: np.ndarray, n_items: int | None = None) -> np.ndarray:
    """``(T, B)`` or ``(T, B, D)`` predictions as float64 ``(T, B, D)``."""
    m = np.asarray(member_predictions, dtype=np.float64)
    if m.ndim < 2:
        raise ValueError(f"committee predictions need a leading member axis, got shape {m.shape}")
    return m.reshape(m.shape[0], m.shape[1] if n_items is None else n_items, -1)


def committee_variance(member_predictions: np.ndarray) -> np.ndarray:
    """Variance over the leading (member) axis of ``(T, B)`` predictions; for ``(T, B, D)`` the sum of the D
    output variances (the trace of the members' covariance). One value per item, >= 0."""
    return _members(member_predictions).var(axis=0).sum(axis=-1)


def emcm(predictions: np.ndarray, embeddings: np.ndarray, member_predictions: np.ndarray,
         bias: bool = True) -> np.ndarray:
    """Expected model change ``1/K sum_k ||(f(x) - f_k(x)) g(x)||`` for a model whose LAST LAYER IS LINEAR,
    ``f(x) = W h(x) + b`` with ``h = embeddings``.

    For the squared loss the gradient with respect to the last layer at a label y is ``(f(x) - y) (x) [h(x), 1]``;
    EMCM does not know y and puts each bootstrap member's prediction ``f_k(x)`` in its place. The norm factors,
    ``||f - f_k|| * sqrt(||h||^2 + 1)`` (``||h||`` without ``bias``), so this is
    ``mean_k ||f(x) - f_k(x)|| * ||g(x)||`` in O(B (K D + H)). ``predictions``: ``(B,)`` or ``(B, D)``;
    ``member_predictions``: ``(K, B)`` or ``(K, B, D)``; ``embeddings``: ``(B, H)``.
    """
    f = np.asarray(predictions, dtype=np.float64)
    n = len(f)
    f = f.reshape(n, -1)
    members = _members(member_predictions, n)
    h = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
    if members.shape[2] != f.shape[1]:
        raise ValueError(f"members predict {members.shape[2]} outputs per item, the model {f.shape[1]}")
    change = np.sqrt(np.sum((f[None] - members) ** 2, axis=-1)).mean(axis=0)           # (B,)
    gradient = np.sqrt(np.einsum("ij,ij->i", h, h) + (1.0 if bias else 0.0))           # (B,)
    return change * gradient


# ------------------------------------------------------------------------------------------- plumbing
class _Committee(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: Members = Field("bootstrap", description="bootstrap: networks the task trains on bootstrap resamples "
                                                      "of the labels (fit_bootstrap); dropout: MC-dropout passes "
                                                      "of the current network (no extra training)")
    size: int = Field(4, ge=2, description="committee size K (members or dropout passes)")


def _committee(task: Task, ctx: Context, cfg: _Committee, name: str) -> MC:
    """Train the bootstrap members (``task.fit_bootstrap``) when the config asks for them; the MC request that
    serves the committee."""
    seed = seed_for(ctx.seed, ctx.round, name, below=MC_SEED_BOUND)
    if cfg.members == "bootstrap":
        fit_bootstrap = hooks.fit_bootstrap(task)
        if fit_bootstrap is None:
            raise UserError(f"scorer.params.members: task {type(task).__name__} has no "
                            f"fit_bootstrap(labels, size, seed); use members: dropout")
        fit_bootstrap(ctx.labels, cfg.size, seed)          # members only: the task's own model is untouched
    return MC(samples=cfg.size, mode=cfg.members, seed=seed)


def _member_predictions(task: Task, candidates: Sequence[ItemId], mc: MC) -> np.ndarray:
    """The committee's ``PREDICTIONS`` for all candidates, ``(K, N, D)`` float64."""
    parts = [_members(out[PREDICTIONS]) for out in task.predict(candidates, {PREDICTIONS}, mc=mc)]
    joined = np.concatenate(parts, axis=1) if parts else np.zeros((mc.samples, 0, 1))
    if joined.shape[1] != len(candidates):
        raise ValueError(f"task.predict yielded {joined.shape[1]} items for {len(candidates)} candidates")
    return joined


def _committee_needs(members: str) -> frozenset[str]:
    return frozenset({BOOTSTRAP if members == "bootstrap" else MC_DROPOUT})


# ------------------------------------------------------------------------------------------- scorers
class EMCM:
    """Expected model change maximisation for regression (Cai, Zhang & Zhou, ICDM 2013).

    A label changes a model most where the gradient of the loss at that label is largest (one SGD step moves the
    parameters by it). The label is unknown, so EMCM averages over K bootstrap models, each standing in for a
    possible label: ``EMCM(x) = 1/K sum_k ||(f(x) - f_k(x)) g(x)||``, with f the current model, f_k the members
    and g(x) the gradient of f with respect to its parameters (see :func:`emcm`).

    What it needs from the task: ``predictions`` (f and the f_k), ``embeddings`` (the input h of the model's
    linear last layer) and ``bootstrap`` (``fit_bootstrap``, which trains the members on resamples of the labels
    so far; the task's own model is left alone). A task lacking one is refused when the recipe is validated.

    Defaults and deviations:

    - **The gradient is the last layer's, in closed form.** The paper's linear model has ``g(x) = x``; its
      nonlinear variant (gradient boosted trees) uses the base learners' outputs as features, i.e. again the
      gradient of a model that is linear in its last-stage parameters. For a network ``f(x) = w . h(x) + b`` we
      take the gradient with respect to ``(w, b)``: ``g(x) = (h(x), 1)`` (``bias: false`` drops the 1). The
      gradient with respect to every weight (autograd) is not offered: the Task protocol gives a scorer arrays,
      not a differentiable model, so a task would have to return per-item gradients of all its parameters
      (B x P numbers, P ~ 10^5 for the small CNN: one backward pass per candidate, or a per-sample-gradient
      transform, and 400 kB per item), which no task here can do cheaply. The last-layer gradient is the same
      task-independent approximation as ``egl`` and BADGE use.
    - A task that standardises its targets (predicts ``c * net(x) + m``) multiplies every gradient by the same
      constant c: the ranking is unchanged.
    - For D outputs the gradient of the squared loss is ``(f - f_k) (x) (h, 1)`` and its norm
      ``||f - f_k|| ||(h, 1)||``: the same formula with the Euclidean norm of the residual.
    - ``size`` K = 4 members by default, as in Wu's public regression comparison code (4 bootstrap ridge models for EMCM
      and QBC, with the same score up to the constant 1/K); the ICDM paper's own K was not checked (its text was not
      available here). ``members: dropout`` (MC-dropout passes instead of bootstrap members; needs ``mc_dropout``) is
      our cheaper variant, not the paper's.
    - Batches are the top-k scores (the paper is sequential, one query per round; its batch extension is a later
      paper, Cai et al., TNNLS 2017).
    """

    class Config(_Committee):
        bias: bool = Field(True, description="include the last layer's bias in the gradient g(x) = (h(x), 1)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({PREDICTIONS, EMBEDDINGS}) | _committee_needs(self.config.members)

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        if len(candidates) == 0:
            return iter(())
        members = _member_predictions(task, candidates, _committee(task, ctx, self.config, "emcm"))
        bias = self.config.bias
        start = 0

        def measure(out):
            nonlocal start
            f = np.asarray(out[PREDICTIONS])
            chunk = members[:, start:start + len(f)]
            start += len(f)
            return emcm(f, out[EMBEDDINGS], chunk, bias)

        return score_chunks(task, candidates, {PREDICTIONS, EMBEDDINGS}, measure)


class CommitteeVariance:
    """Query-by-committee for regression: the variance of K committee members' predictions (RayChaudhuri & Hamey,
    "Minimisation of data collection by active learning", 1995; Burbidge, Rowland & King, "Active learning for
    regression based on query by committee", IDEAL 2007). Where the members disagree, the labels so far say
    little.

    Defaults and deviations: members are networks trained on bootstrap resamples of the labels (the task's
    ``fit_bootstrap``; needs ``bootstrap``), K = 4 (as for :class:`EMCM`); ``members: dropout`` uses MC-dropout
    passes of the current network instead (needs ``mc_dropout``). For D outputs the score is the sum of the D
    variances (the trace of the members' covariance). Batches are the top-k scores (no diversity term).
    """

    class Config(_Committee):
        pass

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({PREDICTIONS}) | _committee_needs(self.config.members)

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        if len(candidates) == 0:
            return iter(())
        mc = _committee(task, ctx, self.config, "committee_variance")
        return score_chunks(task, candidates, {PREDICTIONS}, lambda out: committee_variance(out[PREDICTIONS]),
                            mc=mc)


class GSx:
    """Greedy sampling in the input space (GSx; Wu, Lin & Huang, Information Sciences 2019).

    GSx looks at the inputs only: its first pick is the pool item nearest the pool's centroid, and every further
    pick is the item farthest from everything labelled or picked so far, ``argmax_n min_m ||x_n - x_m||``. That is
    the greedy k-center traversal of :class:`~.diversity.KCenterGreedy`, run here on the task's ``features``
    output (a label-free representation; for the tables and the rotated digits, the inputs themselves) instead of
    the model's embeddings; the same exact machinery (:func:`~.diversity.k_center_scores`) turns the
    ``ctx.budget`` picks into scores whose top-k is the greedy batch in pick order.

    Defaults and deviations:

    - ``space: features`` (the input space, as in the paper); ``space: embeddings`` runs the same traversal on the
      model's penultimate features, which is the core-set ``kcenter`` scorer.
    - Batches: the paper picks one item per round; the greedy batch of k is the same sequence, since GSx never
      looks at labels or the model.
    - The centroid start applies when nothing is labelled (a ``cold_start`` scorer in round 0); with labels the
      traversal starts from them, as in the paper's later iterations. Euclidean distances of the features as the
      task gives them (the paper's inputs are z-normalised; the vision task's pixels are in [0, 1]).
    - Like every batch-aware scorer its scores depend on ``ctx.budget``: with a stream selector or another budget
      only the greedy prefix is meaningful.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        space: Literal["features", "embeddings"] = Field(
            "features", description="features: the task's label-free input representation (GSx); embeddings: the "
                                    "model's penultimate features")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.output = FEATURES if self.config.space == "features" else EMBEDDINGS
        self.needs: Collection[str] = frozenset({self.output})

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        points = embed(task, candidates, self.output)
        labelled = list(ctx.labels)
        min_dist = (nearest_distance(points, embed(task, labelled, self.output)) if labelled
                    else np.full(len(points), np.inf))
        return k_center_scores(points, min_dist, ctx.budget)
