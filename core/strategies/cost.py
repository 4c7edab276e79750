"""Selecting per unit of labelling cost: :class:`PerCost` divides any scorer's informativeness by what labelling
the item is expected to cost (the task's ``label_cost`` hook: seconds of audio, source tokens, boxes).

Return on investment, as cost-sensitive active learning calls it (Settles, Craven & Friedland, "Active learning
with real annotation costs", NIPS Workshop on Cost-Sensitive Learning 2008; Haertel et al., ACL 2008, "Return on
investment for active learning"): ask first for the items with the most information per unit of cost.
"""
from __future__ import annotations

from typing import Any, Collection, Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activelab import hooks, registry
from activelab.errors import UserError
from activelab.protocol import Context, Env, ItemId, Task, iter_chunks

#: Scores of these scorers are bounded below by a negative value; the ratio is taken above it (see PerCost).
FLOORS = {"margin": -1.0}


class PerCost:
    """``(base(x) - floor) / cost(x)^power``: the base scorer's informativeness per unit of expected cost.

    - ``cost(x)`` is the task's ``label_cost(ids)`` (without labels: the cost known before asking). A task
      without the hook is refused when scoring starts, with a one-line error; costs must be positive and finite.
    - The ratio needs non-negative informativeness: ``floor`` is subtracted first (0 for entropy, least
      confidence, BALD, ...; -1 for margin, whose scores ``-(p1 - p2)`` lie in [-1, 0]); a base score below the
      floor is an error, because dividing a negative score by a larger cost would favour the costly item.
    - ``power`` 0 gives the base ranking (shifted by the floor); 1 is plain return on investment; values between
      trade the two off, as Haertel et al. discuss.
    - The base scorer's chunks are divided as they stream; a batch-aware base (kcenter, BADGE, ...) encodes a
      batch in its scores, and dividing them breaks that encoding: use an uncertainty-type base.
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        base: str = Field("entropy", description="the scorer whose informativeness is divided by the cost")
        base_plugin: str | None = Field(None, description="the plugin offering `base`, when several do")
        base_params: dict[str, Any] = Field(default_factory=dict, description="params of the base scorer")
        power: float = Field(1.0, ge=0.0, description="exponent of the cost: score / cost^power")
        floor: float | None = Field(None, description="the base scores' lower bound (default: -1 for margin, "
                                                      "else 0)")

        @model_validator(mode="after")
        def _check_base(self) -> "PerCost.Config":
            if self.base == "per_cost":
                raise ValueError("base: per_cost cannot wrap itself")
            cls = registry.load("scorer", self.base, self.base_plugin)
            model = getattr(cls, "Config", None)
            if model is not None:
                try:
                    model.model_validate(self.base_params)
                except ValidationError as exc:
                    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    raise ValueError(f"base_params for base '{self.base}': {problems}") from None
            return self

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = cfg = config or self.Config()
        cls = registry.load("scorer", cfg.base, cfg.base_plugin)
        model = getattr(cls, "Config", None)
        self.base = cls(model.model_validate(cfg.base_params) if model is not None else cfg.base_params, env or Env())
        self.needs: Collection[str] = frozenset(self.base.needs)
        self.floor = cfg.floor if cfg.floor is not None else FLOORS.get(cfg.base, 0.0)

    def costs(self, task: Task, candidates: Sequence[ItemId]) -> np.ndarray:
        hook = hooks.label_cost(task)
        if hook is None:
            raise UserError(f"scorer per_cost: task {type(task).__name__} declares no label_cost, so there is "
                            f"no cost to divide by; use the base scorer '{self.config.base}' directly")
        cost = np.asarray(hook(candidates), dtype=np.float64).reshape(-1)
        if len(cost) != len(candidates):
            raise ValueError(f"label_cost returned {len(cost)} costs for {len(candidates)} items")
        bad = np.flatnonzero(~(np.isfinite(cost) & (cost > 0)))
        if len(bad):
            raise UserError(f"scorer per_cost: item {candidates[int(bad[0])]!r} has cost {cost[bad[0]]!r}; "
                            f"costs must be positive and finite")
        return cost ** self.config.power

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        if len(candidates) == 0:
            return iter(())
        return self._divided(self.base.score(task, candidates, ctx), self.costs(task, candidates))

    def _divided(self, base: Any, cost: np.ndarray) -> Iterator[np.ndarray]:
        start = 0
        for chunk in iter_chunks(base):
            gain = chunk - self.floor
            if np.any(gain < -1e-12):
                raise ValueError(f"scorer per_cost: base '{self.config.base}' gave a score below its floor "
                                 f"{self.floor}; set per_cost's `floor`")
            yield np.maximum(gain, 0.0) / cost[start:start + len(chunk)]
            start += len(chunk)
