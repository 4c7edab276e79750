"""Stopping criteria: when asking for more labels no longer pays (the recipe's ``stopping`` list).

The loop judges every criterion after each round's fit, on that round's model, and records its values in the
round's metrics row (``stop_kappa``, ``stop_max_uncertainty``, ...; ``stop_met`` lists the criteria met that round),
so a learning curve can show where each would have stopped. A criterion whose params say ``end_loop: true`` also
ends the run after the first round where it is met: the run is done, and that row's ``stopped_by`` names it.

All four need only the task's class probabilities (``probs``) on unlabelled items, never a label:

- :class:`StabilizingPredictions` (Bloodgood & Vijay-Shanker, CoNLL 2009): successive models agree on a stop set.
- :class:`MaxUncertainty` (Zhu, Wang & Hovy, COLING 2008; Zhu et al., ACM TSLP 2010): the most uncertain
  unlabelled item is no longer uncertain.
- :class:`OverallUncertainty` (same papers): the unlabelled pool as a whole is no longer uncertain.
- :class:`ExpectedError` (Zhu, Wang & Hovy, IJCNLP 2008, "minimum expected error"): the model's expected error
  on the unlabelled pool is small.

A criterion is a plain class (:class:`activelab.protocol.StoppingCriterion`): ``update(task, unlabelled, state,
ctx)`` returns a :class:`~activelab.protocol.Verdict`. What it must remember between rounds (the previous model's
predictions on the stop set) goes in ``Verdict.state``, which the loop keeps in the run's label store and hands back
next round, so a resumed run reports exactly what an uninterrupted one would. Entropies use natural logarithms,
divided by ``log C`` (``normalise``) so that one threshold fits any number of classes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import PROBS, Candidates, Context, Env, ItemId, Task, Verdict, rng_for

from .uncertainty import entropy, least_confidence


# ------------------------------------------------------------------------------------------- measures
def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa between two labellings of the same items, ``(p_o - p_e) / (1 - p_e)``.

    Equal to :func:`sklearn.metrics.cohen_kappa_score` except where both labellings give every item one and the
    same class (``p_e = 1``): sklearn returns NaN there, this returns 1.0 (the two models agree perfectly, which is
    what the stopping rule asks)."""
    a, b = np.asarray(a, dtype=np.int64).reshape(-1), np.asarray(b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"kappa needs two labellings of the same, non-empty items (got {len(a)} and {len(b)})")
    classes, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(a)
    agree = int(np.sum(a == b))
    # in counts, exactly: p_o = agree / n, p_e = chance / n^2, kappa = (n agree - chance) / (n^2 - chance)
    chance = int(np.bincount(codes[:n], minlength=len(classes)) @ np.bincount(codes[n:], minlength=len(classes)))
    if chance == n * n:
        return 1.0
    return (n * agree - chance) / (n * n - chance)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy divided by its maximum ``log C`` (0 = certain, 1 = uniform); 0 for a single class."""
    p = np.asarray(probs, dtype=np.float64)
    n_classes = p.shape[-1]
    return entropy(p) / np.log(n_classes) if n_classes > 1 else np.zeros(p.shape[:-1])


def probabilities(task: Task, ids: Sequence[ItemId]) -> Iterator[np.ndarray]:
    """``task.predict(ids, {probs})`` chunk by chunk as float64 ``(B, C)`` arrays (a torch tensor is moved to the
    CPU); checks that the chunks cover ``ids`` exactly."""
    if len(ids) == 0:
        return
    seen = 0
    for out in task.predict(ids, {PROBS}):
        probs = out[PROBS]
        if hasattr(probs, "detach"):
            probs = probs.detach().float().cpu().numpy()
        probs = np.asarray(probs, dtype=np.float64)
        seen += len(probs)
        yield probs
    if seen != len(ids):
        raise ValueError(f"task.predict yielded {seen} items for {len(ids)}")


def _universe(task: Task, unlabelled: Sequence[ItemId]) -> Sequence[ItemId]:
    return unlabelled.universe if isinstance(unlabelled, Candidates) else [str(i) for i in task.pool_ids()]


def stop_set(n_items: int, size: int, seed: int) -> np.ndarray:
    """Positions (sorted) of the stop set in a pool of ``n_items``: ``size`` items (all of them when the pool is
    smaller) drawn without replacement from ``rng_for(seed, "stop-set")``, the same in every round."""
    if size >= n_items:
        return np.arange(n_items, dtype=np.int64)
    return np.sort(rng_for(seed, "stop-set").choice(n_items, size=size, replace=False)).astype(np.int64)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    end_loop: bool = Field(False, description="end the run after the first round where the criterion is met "
                                              "(otherwise it is only reported)")


# ------------------------------------------------------------------------------------------- criteria
class StabilizingPredictions:
    """Stabilising predictions (Bloodgood & Vijay-Shanker, "A method for stopping active learning based on
    stabilizing predictions and the need for user-adjustable stopping", CoNLL 2009): stop when successive models
    agree on a stop set of unlabelled items, measured by Cohen's kappa between their predicted labels, with the mean
    over the last ``window`` rounds at or above ``threshold``.

    Defaults are the paper's: ``window`` 3, ``threshold`` 0.99. The stop set is a uniform random sample of the whole
    pool (``stop_set`` items, 2,000 by default; all of them in a smaller pool), drawn once from the recipe's seed;
    it needs no labels, and items of it may be queried later (the paper's stop set is a separate unlabelled sample;
    a random sample of the pool is what later work by Bloodgood and colleagues recommends). Deviations: successive
    models are those of successive rounds (a batch each), and kappa is 1 when both models predict one class for
    every item (undefined, NaN, in sklearn). Values: ``stop_kappa`` (round r-1 against r; None in round 0) and
    ``stop_kappa_mean`` (None until ``window`` kappas exist). The predicted labels of the latest model are kept in
    the run's state (``stop_set`` integers)."""

    class Config(_Config):
        threshold: float = Field(0.99, ge=-1.0, le=1.0, description="mean kappa at or above which it is met")
        window: int = Field(3, ge=1, description="kappas of this many successive rounds are averaged")
        stop_set: int = Field(2000, ge=1, description="unlabelled items the models are compared on (drawn once)")

    needs = frozenset({PROBS})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.end_loop = self.config.end_loop

    def update(self, task: Task, unlabelled: Sequence[ItemId], state: Any, ctx: Context) -> Verdict:
        cfg = self.config
        universe = _universe(task, unlabelled)
        rows = stop_set(len(universe), cfg.stop_set, ctx.seed)
        chunks = [p.argmax(axis=-1) for p in probabilities(task, Candidates(universe, rows))]
        predicted = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        state = state or {}
        previous, kappas = state.get("predictions"), list(state.get("kappas", []))
        kappa = None
        if previous is not None and len(previous) == len(predicted) and len(predicted):
            kappa = cohen_kappa(previous, predicted)
            kappas = (kappas + [kappa])[-cfg.window:]
        mean = float(np.mean(kappas)) if len(kappas) == cfg.window else None
        met = mean is not None and mean >= cfg.threshold
        return Verdict({"stop_kappa": kappa, "stop_kappa_mean": mean}, met,
                       {"predictions": predicted.astype(int).tolist(), "kappas": kappas},
                       f"mean kappa {mean:.4f} >= {cfg.threshold} over the last {cfg.window} rounds" if met else "")


class _PoolMeasure:
    """A criterion on one number computed from the unlabelled pool (or a seeded sample of it), met below
    ``threshold``. Subclasses set ``key`` and ``reduce`` (per-chunk probabilities -> a float)."""

    key = ""
    what = ""
    needs = frozenset({PROBS})

    class Config(_Config):
        threshold: float = Field(0.05, ge=0.0, description="met when the value falls below this")
        sample: int | None = Field(None, ge=1, description="evaluate on this many unlabelled items drawn afresh "
                                                           "each round (seeded); None: the whole unlabelled pool")

    def __init__(self, config: Any = None, env: Env | None = None):
        self.config = config or self.Config()
        self.end_loop = self.config.end_loop

    def items(self, unlabelled: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        n, sample = len(unlabelled), self.config.sample
        if sample is None or sample >= n:
            return unlabelled
        positions = np.sort(ctx.rng("stopping", self.key).choice(n, size=sample, replace=False))
        if isinstance(unlabelled, Candidates):
            return unlabelled.take(positions)
        return [unlabelled[int(i)] for i in positions]

    def reduce(self, chunks: Iterator[np.ndarray]) -> float | None:
        raise NotImplementedError

    def update(self, task: Task, unlabelled: Sequence[ItemId], state: Any, ctx: Context) -> Verdict:
        value = self.reduce(probabilities(task, self.items(unlabelled, ctx)))
        threshold = self.config.threshold
        met = value is not None and value < threshold
        return Verdict({self.key: value}, met, None, f"{self.what} {value:.4g} < {threshold}" if met else "")


def _mean(measure: Callable[[np.ndarray], np.ndarray], chunks: Iterator[np.ndarray]) -> float | None:
    total, count = 0.0, 0
    for probs in chunks:
        values = measure(probs)
        total, count = total + float(values.sum()), count + len(values)
    return total / count if count else None


class MaxUncertainty(_PoolMeasure):
    """Maximum uncertainty (Zhu, Wang & Hovy, "Multi-criteria-based strategy to stop active learning for data
    annotation", COLING 2008, there "max-confidence", after Zhu & Hovy 2007; "maximum uncertainty" in Zhu, Wang, Hovy
    & Ma, "Confidence-based stopping criteria for active learning for data annotation", ACM TSLP 2010): stop when the
    most uncertain unlabelled item, by the entropy of the current model's prediction, is below ``threshold``.

    The papers judge the item uncertainty sampling selects next; here that is the maximum over the unlabelled pool
    (or ``sample`` of it) under model r, whatever the recipe's scorer, so it also reads as "nothing left is
    uncertain". Deviations: the entropy is normalised by ``log C`` (``normalise``); the default ``threshold``
    0.1 (normalised) is ours: the papers report several thresholds per task, not one default. Value:
    ``stop_max_uncertainty``."""

    key, what = "stop_max_uncertainty", "max uncertainty"

    class Config(_PoolMeasure.Config):
        threshold: float = Field(0.1, ge=0.0, description="met when the largest entropy falls below this")
        normalise: bool = Field(True, description="entropy divided by log C (0..1) instead of nats")

    def reduce(self, chunks: Iterator[np.ndarray]) -> float | None:
        measure = normalised_entropy if self.config.normalise else entropy
        peaks = [float(measure(probs).max()) for probs in chunks if len(probs)]
        return max(peaks) if peaks else None


class OverallUncertainty(_PoolMeasure):
    """Overall uncertainty (Zhu, Wang & Hovy, COLING 2008; Zhu et al., ACM TSLP 2010): stop when the mean entropy of
    the current model's predictions over the unlabelled pool (or ``sample`` of it) is below ``threshold``.

    Deviations: the entropy is normalised by ``log C`` (``normalise``; small-text's implementation does the same);
    the default ``threshold`` 0.05 (normalised) is small-text's, not the papers', which report several per task.
    Value: ``stop_overall_uncertainty``."""

    key, what = "stop_overall_uncertainty", "overall uncertainty"

    class Config(_PoolMeasure.Config):
        normalise: bool = Field(True, description="entropy divided by log C (0..1) instead of nats")

    def reduce(self, chunks: Iterator[np.ndarray]) -> float | None:
        return _mean(normalised_entropy if self.config.normalise else entropy, chunks)


class ExpectedError(_PoolMeasure):
    """Minimum expected error (Zhu, Wang & Hovy, "Learning a stopping criterion for active learning for word sense
    disambiguation and text classification", IJCNLP 2008; Zhu et al., ACM TSLP 2010): the current model's expected
    0/1 error on the unlabelled pool, ``mean_x (1 - max_y p(y|x))`` (its own probabilities taken as calibrated),
    estimated over the pool (or ``sample`` of it); stop when it is below ``threshold``.

    The default ``threshold`` 0.05 (a 5% expected error) is ours, not the paper's. Value: ``stop_expected_error``."""

    key, what = "stop_expected_error", "expected error"

    def reduce(self, chunks: Iterator[np.ndarray]) -> float | None:
        return _mean(least_confidence, chunks)
