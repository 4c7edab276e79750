"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): a batch that is jointly informative about the model.

BALD scores each item by the mutual information ``I(y; w)`` between its label and the model parameters, and its
top-k takes k items that may all say the same thing (two copies of the most informative item are both taken).
BatchBALD scores the batch as a whole, ``a(x_1..x_n) = I(y_1..y_n; w) = H(y_1..y_n) - sum_i E_w H(y_i | w)``, and
builds it greedily: each step adds the candidate that maximises ``a`` of the batch so far plus that candidate
(``a`` is submodular, so greedy is within ``1 - 1/e`` of the best batch).

The posterior is represented by K parameter samples ``w_k`` (the MC passes), so
``p(y_1..y_n) = 1/K sum_k prod_i p_k(y_i)``:

- exactly, while the batch so far has at most ``num_configs`` joint label configurations (``C^n``): the K x C^n
  matrix of per-sample joint probabilities ``prod_i p_k(y_i)`` is kept and extended by one item per step, and each
  candidate's ``H(y_1..y_n, y)`` is a sum over all ``C^(n+1)`` configurations;
- by sampling beyond that: M = ``num_configs`` configurations ``y^m_1..n`` are drawn from the MC mixture (stratified:
  configuration m is drawn from sample ``k = m mod K``), and
  ``H(y_1..y_n, y) ~= 1/M sum_m sum_y p(y | y^m) (-log p(y^m, y))`` with ``p(y^m, y) = 1/K sum_k p_k(y^m) p_k(y)``:
  the paper's importance-weighted estimator (the last item's label is summed exactly, the batch's sampled). Each
  configuration's K joint probabilities are kept rescaled to mean 1 with their log scale on the side, so nothing
  underflows however large the batch. Unlike the reference code, which redraws every configuration after each
  step, the configurations are extended by one label per step (the same distribution, O(M) per step).

Parameters and defaults: ``samples`` K = 20 (as :class:`~.uncertainty.BALD`); ``num_configs`` M = 10,000, both the
switch point and the sample size (the authors' reference code likewise switches to sampling once ``C^n`` exceeds
its sample count); ``prefilter`` = 1,000. Cost: each greedy step forms the ``M x prefilter x C`` mixture
probabilities of the candidates and their ``-p log p`` (10^8 at the defaults with 10 classes: about 2 s on one CPU
core), with torch on the scorer's ``env.device``, so a GPU takes most of it; memory stays at 32 MB blocks.
Deviations from the paper, all documented choices:

- **Consistent MC samples.** The joint ``prod_i p_k(y_i)`` needs sample k to be the SAME model for every item, so
  the passes are ``MC(mode="batchwise")`` (one dropout mask per sample, fixed across the pool: the consistent MC
  dropout of the BatchBALD code) or ``"bootstrap"`` committee members; BALD's fresh-mask-per-item ``"dropout"``
  mode would make the joint meaningless and is not offered.
- **Pre-filter.** Only the ``prefilter`` candidates with the highest BALD (on the same MC passes; ties to the lower
  position) enter the greedy search, as is common practice for speed (every greedy step costs
  ``O(prefilter * K * M * C)``). ``prefilter`` is raised to the budget when smaller; ``None`` searches all.
  BALD is BatchBALD's first-step gain and, by submodularity, an upper bound on every later gain, so the pre-filter
  drops items that were unlikely to be picked, though not provably never.

Scores (see :func:`batch_scores`): like :class:`~.diversity.KCenterGreedy`, the greedy batch of ``ctx.budget``
items is turned into scores whose top-k (ties to the lower position, as :class:`~.selectors.TopK` breaks them) is
exactly the batch in pick order: a picked item scores its marginal gain when picked (forced strictly decreasing);
an unpicked one its gain at the last greedy step (its BALD when it was pre-filtered out), capped strictly below the
last pick's. With a budget of 1 the pick is BALD's argmax. With a stream selector or a budget other than the
loop's, only the greedy prefix is meaningful. Deterministic: the passes are seeded and the configurations drawn
from ``ctx.rng("batchbald")``. Natural logarithms; float64 throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import BOOTSTRAP, MC, MC_DROPOUT, MC_SEED_BOUND, PROBS, Context, Env, ItemId, Task, seed_for

from .uncertainty import bald, entropy

_TINY = np.finfo(np.float64).tiny
_CHUNK_FLOATS = 1 << 22          # configurations x candidates x classes per joint-probability block (32 MB)
_PREFILTER_BLOCK = 4096          # items gathered before the running pre-filter is cut back to size


class JointEntropy:
    """``H(y_1..y_n, y)`` of a growing batch ``y_1..y_n`` and each of many candidates ``y`` under the mixture of K
    MC samples: exact while the batch has at most ``exact_limit`` label configurations, then estimated from
    ``num_configs`` sampled configurations (see the module doc). ``rng`` draws the configurations; the candidates'
    joint probabilities and their entropies (the bulk of the work) are computed with torch on ``device``."""

    def __init__(self, n_samples: int, n_classes: int, num_configs: int = 10000, exact_limit: int | None = None,
                 rng: np.random.Generator | None = None, device: str = "cpu"):
        self.K, self.C = int(n_samples), int(n_classes)
        self.num_configs = int(num_configs)
        self.exact_limit = self.num_configs if exact_limit is None else int(exact_limit)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.device = device
        self.items: list[np.ndarray] = []          # the batch's (K, C) probabilities
        self.exact = True
        self.joint = np.ones((self.K, 1))          # exact: (K, C^n) per-sample joint probabilities
        self.log_scale = np.zeros(1)               # sampled: each configuration's log scale (joint = exp(scale) Q)
        self.member = np.zeros(0, dtype=np.int64)  # sampled: the MC sample each configuration is drawn from

    @property
    def n(self) -> int:
        return len(self.items)

    def add(self, probs: np.ndarray) -> None:
        """Add an item, given its ``(K, C)`` probabilities, to the batch."""
        p = np.asarray(probs, dtype=np.float64).reshape(self.K, self.C)
        self.items.append(p)
        if self.exact and self.C ** self.n <= self.exact_limit:
            self.joint = (self.joint[:, :, None] * p[:, None, :]).reshape(self.K, -1)
        elif self.exact:                           # switch to sampling: draw the configurations of the batch so far
            self.exact = False
            m = self.num_configs
            self.member = np.arange(m, dtype=np.int64) % self.K
            self.joint = np.ones((self.K, m))
            self.log_scale = np.zeros(m)
            for q in self.items:
                self._extend(q)
        else:
            self._extend(p)

    def _extend(self, p: np.ndarray) -> None:
        """Draw each configuration's label of the new item from its own MC sample; update its K joints."""
        cdf = np.cumsum(p[self.member], axis=1)                                     # (M, C)
        u = self.rng.random(len(self.member)) * cdf[:, -1]
        labels = np.minimum((cdf <= u[:, None]).sum(axis=1), self.C - 1)
        self.joint *= p[:, labels]                                                  # (K, M)
        scale = np.maximum(self.joint.mean(axis=0), _TINY)
        self.joint /= scale
        self.log_scale += np.log(scale)

    def entropies(self, probs: Any) -> np.ndarray:
        """``H(y_1..y_n, y_b)`` for each of the ``(K, B, C)`` candidates ``b`` (a numpy array or a torch tensor)."""
        import torch

        p = torch.as_tensor(probs).to(self.device, torch.float64)
        n_cand = p.shape[1]
        joint = torch.as_tensor(self.joint, device=self.device).T.contiguous()     # (configs, K)
        configs = joint.shape[0]
        step = max(1, _CHUNK_FLOATS // max(1, configs * self.C))
        parts = []
        for start in range(0, n_cand, step):
            block = p[:, start:start + step, :]
            b = block.shape[1]
            mixture = (joint @ block.reshape(self.K, b * self.C)) / self.K          # (configs, b*C)
            parts.append(torch.special.entr(mixture).sum(dim=0).reshape(b, self.C).sum(dim=1))
        out = torch.cat(parts).cpu().numpy() if parts else np.zeros(0)
        if not self.exact:
            out = out / configs - self.log_scale.mean()    # -1/M sum_m log p(y^m): common to every candidate
        return out


def joint_entropy(mc_probs: np.ndarray, num_configs: int = 10000, exact_limit: int | None = None,
                  rng: np.random.Generator | None = None) -> float:
    """``H(y_1..y_n)`` of the ``(K, n, C)`` MC probabilities of n items: exact while the first ``n - 1`` items have
    at most ``exact_limit`` (default ``num_configs``) configurations, else estimated from ``num_configs`` samples."""
    p = np.asarray(mc_probs, dtype=np.float64)
    k, n, c = p.shape
    if n == 0:
        return 0.0
    joint = JointEntropy(k, c, num_configs, exact_limit, rng)
    for i in range(n - 1):
        joint.add(p[:, i, :])
    return float(joint.entropies(p[:, n - 1:, :])[0])


@dataclass
class Greedy:
    """The greedy BatchBALD batch: ``picks`` (indices, in pick order), ``gains`` (each pick's marginal gain
    ``a(batch + x) - a(batch)``; their running sum is ``a`` of each prefix) and ``last`` (for every candidate, its
    gain when picked, or at the last step for one never picked)."""

    picks: np.ndarray
    gains: np.ndarray
    last: np.ndarray


def batchbald_greedy(mc_probs: np.ndarray, n_picks: int, num_configs: int = 10000, exact_limit: int | None = None,
                     rng: np.random.Generator | None = None, device: str = "cpu") -> Greedy:
    """Greedy BatchBALD over ``(K, N, C)`` MC probabilities: ``n_picks`` items, each maximising
    ``a(batch + x) = H(y_batch, y_x) - sum_batch E_w H(y_i|w) - E_w H(y_x|w)`` (ties to the lower index), with
    the joint entropies of :class:`JointEntropy` (torch on ``device``). With no picks, ``last`` is the first
    step's gain, BALD."""
    import torch

    p = np.asarray(mc_probs, dtype=np.float64)
    k, n, c = p.shape
    n_picks = max(0, min(int(n_picks), n))
    conditional = entropy(p).mean(axis=0)                                   # E_w H(y_i | w), (N,)
    if n_picks == 0:
        return Greedy(np.zeros(0, np.int64), np.zeros(0), np.maximum(entropy(p.mean(axis=0)) - conditional, 0.0))
    joint = JointEntropy(k, c, num_configs, exact_limit, rng, device)
    on_device = torch.as_tensor(p).to(device)                               # moved once, scored every step
    last = np.empty(n)
    picks: list[int] = []
    gains: list[float] = []
    open_ = np.ones(n, dtype=bool)
    batch_conditional = objective = 0.0                                     # sum_batch E_w H(y_i|w); a(batch)
    for _ in range(n_picks):
        gain = joint.entropies(on_device) - batch_conditional - conditional - objective
        gain[np.isnan(gain)] = -np.inf
        last[open_] = gain[open_]
        gain[~open_] = -np.inf
        best = int(np.argmax(gain))                                         # first maximum: the lower index
        picks.append(best)
        gains.append(float(gain[best]))
        open_[best] = False
        joint.add(p[:, best, :])
        batch_conditional += float(conditional[best])
        objective += gains[-1]
    return Greedy(np.asarray(picks, dtype=np.int64), np.asarray(gains, dtype=np.float64), last)


def batch_scores(values: np.ndarray, picked: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Scores whose top-``len(picked)`` (ties to the lower position) is ``picked`` in order: pick j scores
    ``min(gains[j], just below pick j-1's score)``; every other item ``min(values, just below the last pick's)``."""
    scores = np.array(values, dtype=np.float64)
    if len(picked) == 0:
        return scores
    ceiling = np.inf
    chosen = np.empty(len(picked))
    for j, gain in enumerate(np.asarray(gains, dtype=np.float64)):
        ceiling = min(gain, np.nextafter(ceiling, -np.inf))
        chosen[j] = ceiling
    scores = np.minimum(scores, np.nextafter(ceiling, -np.inf))
    scores[picked] = chosen
    return scores


class BatchBALD:
    """BatchBALD (Kirsch, van Amersfoort & Gal 2019): greedy batches that maximise the mutual information between
    the batch's joint labels and the model; see the module doc for the estimator, the pre-filter, the scores and
    the deviations from the paper. The result depends on ``ctx.budget`` (the batch built)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        samples: int = Field(20, ge=2, description="MC samples K (passes or committee members; BALD's default)")
        mode: Literal["batchwise", "bootstrap"] = Field(
            "batchwise", description="consistent MC samples: one dropout mask per sample fixed across the pool "
                                     "(consistent MC dropout), or bootstrap committee members")
        num_configs: int = Field(10000, ge=1, description="joint label configurations: exact while the batch has "
                                                          "at most this many, else this many are sampled")
        prefilter: int | None = Field(1000, ge=1, description="only the top candidates by BALD enter the greedy "
                                                              "search (raised to the budget; None: all)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.device = (env or Env()).device
        self.needs: Collection[str] = frozenset({PROBS, MC_DROPOUT if self.config.mode == "batchwise" else BOOTSTRAP})

    def mc_probs(self, task: Task, candidates: Sequence[ItemId], ctx: Context,
                 keep: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass over the candidates: every candidate's BALD, and the ``(K, n, C)`` MC probabilities of the
        ``keep`` best by BALD (ties to the lower position; all when ``keep`` is None) with their positions, in
        position order. Memory: the N BALD scores and O(K (keep + 4096) C) probabilities."""
        cfg = self.config
        seed = seed_for(ctx.seed, ctx.round, "batchbald", below=MC_SEED_BOUND)
        if cfg.mode == "bootstrap":
            fit_bootstrap = hooks.fit_bootstrap(task)
            if fit_bootstrap is None:
                raise UserError(f"scorer.params.mode: task {type(task).__name__} has no "
                                f"fit_bootstrap(labels, size, seed); use mode: batchwise")
            fit_bootstrap(ctx.labels, cfg.samples, seed)
        mc = MC(samples=cfg.samples, mode=cfg.mode, seed=seed)
        values = np.empty(len(candidates))
        kept_pos: list[np.ndarray] = []
        kept_probs: list[np.ndarray] = []
        held = seen = 0

        def cut() -> None:
            pos = np.concatenate(kept_pos)
            probs = np.concatenate(kept_probs, axis=1)
            if keep is not None and len(pos) > keep:
                order = np.lexsort((pos, -values[pos]))[:keep]
                order.sort()                                    # back to position order
                pos, probs = pos[order], probs[:, order, :]
            kept_pos[:], kept_probs[:] = [pos], [probs]

        for out in task.predict(candidates, {PROBS}, mc=mc):
            probs = out[PROBS]
            if hasattr(probs, "cpu"):                           # a torch tensor, wherever it lives
                probs = probs.detach().cpu().numpy()
            probs = np.asarray(probs, dtype=np.float64)
            if probs.ndim != 3 or probs.shape[0] != cfg.samples:
                raise ValueError(f"task.predict gave probabilities of shape {probs.shape} for MC(samples="
                                 f"{cfg.samples}); expected (samples, items, classes)")
            b = probs.shape[1]
            if seen + b > len(candidates):
                raise ValueError(f"task.predict yielded more than the {len(candidates)} items it was asked for")
            values[seen:seen + b] = bald(probs)
            kept_pos.append(np.arange(seen, seen + b, dtype=np.int64))
            kept_probs.append(probs)
            seen += b
            held += b
            if keep is not None and held >= max(_PREFILTER_BLOCK, keep):
                cut()
                held = 0
        if seen != len(candidates):
            raise ValueError(f"task.predict yielded {seen} items for {len(candidates)} candidates")
        cut()
        return values, kept_pos[0], kept_probs[0]

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        if len(candidates) == 0:
            return np.zeros(0)
        cfg = self.config
        budget = max(0, int(ctx.budget))
        keep = None if cfg.prefilter is None else max(cfg.prefilter, budget)
        values, positions, probs = self.mc_probs(task, candidates, ctx, keep)
        greedy = batchbald_greedy(probs, budget, cfg.num_configs, rng=ctx.rng("batchbald"), device=self.device)
        values[positions] = greedy.last
        return batch_scores(values, positions[greedy.picks], greedy.gains)
