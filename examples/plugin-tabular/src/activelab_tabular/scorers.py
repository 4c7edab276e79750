"""``committee_variance``: query-by-committee for regression.

The core's uncertainty scorers measure how unsure a CLASSIFIER is (entropy of ``PROBS``, vote entropy of a
committee). A regression model has no class probabilities, so this plugin brings the regression analogue
(RayChaudhuri & Hamey 1995; Burbidge, Rowland & King 2007): train a committee, ask each member for its
prediction, and query the rows where the members disagree most, measured by the variance of their predictions.
Far from the labelled rows the members extrapolate differently, so the variance is high exactly where a label
would teach the model most.

A scorer is a plain class satisfying :class:`activelab.protocol.Scorer`: a ``Config`` (the recipe's
``scorer.params``), ``needs`` (the task outputs it uses, checked against ``Task.outputs`` when a recipe is
validated) and ``score(task, candidates, ctx)`` returning one float per candidate, higher = ask first.
"""
from __future__ import annotations

from typing import Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import BOOTSTRAP, MC, MC_DROPOUT, Context, Env, ItemId, seed_for

from .regression import PREDICTION


def committee_variance(predictions: np.ndarray) -> np.ndarray:
    """Variance over the leading (member) axis of ``(T, B)`` predictions: one value per item, >= 0."""
    return np.asarray(predictions, dtype=np.float64).var(axis=0)


class CommitteeVariance:
    """Variance of a committee's predictions (QBC for regression); higher = the members disagree more.

    Members are ``"bootstrap"`` networks (the task's ``fit_bootstrap(labels, size, seed)`` trains them on
    bootstrap resamples of the labels so far) or ``"dropout"`` passes of the current network (MC dropout, no extra
    training). What the scorer ``needs`` follows from that choice, so a task without ``fit_bootstrap`` is refused
    when the recipe is validated, not half-way through a run.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        members: Literal["bootstrap", "dropout"] = Field(
            "bootstrap", description="bootstrap: networks trained on resampled labels; dropout: MC dropout passes")
        size: int = Field(5, ge=2, description="committee size (members or passes)")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()
        self.needs: Collection[str] = frozenset({PREDICTION, BOOTSTRAP if self.config.members == "bootstrap"
                                                 else MC_DROPOUT})

    def score(self, task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        """Chunks of variances aligned with ``candidates``. The committee is seeded by (seed, round), so a
        resumed run scores exactly as an uninterrupted one would."""
        cfg = self.config
        if len(candidates) == 0:
            return iter(())
        seed = seed_for(ctx.seed, ctx.round, "committee_variance")
        if cfg.members == "bootstrap":
            task.fit_bootstrap(ctx.labels, cfg.size, seed)     # trains members only; the task's model is untouched
        mc = MC(samples=cfg.size, mode=cfg.members, seed=seed)
        return (committee_variance(out[PREDICTION]) for out in task.predict(candidates, {PREDICTION}, mc=mc))
