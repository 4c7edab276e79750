"""On-demand learning's components for the ``restoration`` task (query synthesis; Gao & Grauman, ICCV 2017).

- ``inverse_psnr`` (scorer): the on-demand feedback. Level i scores ``1 / PSNR_i``, its mean PSNR on the
  validation split by the current model; the core ``proportional`` selector turns the scores into the next
  epoch's shares ``B_i = B * (1/PSNR_i) / sum_j (1/PSNR_j)``, so the levels restored worst get the most samples.
  Round 0 has no model yet: the selector gives equal shares (20 of every 100 samples), as the paper starts.
- ``corruptor`` (oracle): answers each generator of the batch (``level<i>``, repeated once per sample) with ONE new
  item ``level<i>@<round>`` labelled ``{"level": i, "count": n, "seed": s}``; the task regenerates the n
  corrupted crops from ``s``, which is derived from (run seed, round, level), so a resumed run makes the same
  samples.
- ``schedule`` (selector): the card's baselines, fixed allocations that ignore the scores. ``joint`` = rigid
  joint training (equal shares every epoch), ``fixated`` = every sample at one level, ``staged`` = a curriculum
  from easy to hard, one level at a time for ``stage_rounds`` rounds each, ``cumulative`` = levels 1..j in equal
  shares, j growing by one every ``stage_rounds`` rounds. Candidates are taken in their order (level1 .. level5,
  easy to hard). Since it never reads the scores, the scorer's validation pass is never run for a baseline.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Collection, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from activelab.errors import UserError
from activelab.protocol import Answer, Context, Env, ItemId, Label, ScoreStream, Task, rng_for
from activelab.strategies.selectors import largest_remainder
from activelab.strategies.uncertainty import score_chunks

from .restoration import LEVEL_PSNR, parse_item


class InversePSNR:
    """On-demand learning's feedback: score of a level = ``1 / PSNR`` (dB) on the validation split.

    ``min_psnr`` keeps the score finite and positive for a network that is still worse than noise (PSNR <= 0 dB
    cannot happen for images in [0, 1] unless the output leaves that range, which the task clips)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        min_psnr: float = Field(1.0, gt=0, description="PSNRs below this (dB) count as this")

    needs: Collection[str] = frozenset({LEVEL_PSNR})

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> Iterator[np.ndarray]:
        floor = self.config.min_psnr
        return score_chunks(task, candidates, {LEVEL_PSNR},
                            lambda out: 1.0 / np.maximum(np.asarray(out[LEVEL_PSNR], dtype=np.float64), floor))


def sample_seed(seed: int, round: int, generator: str) -> int:
    """The seed of the samples a generator makes in a round (fits SQLite's signed 64-bit integers and JSON)."""
    return int(rng_for(seed, round, "corruptor", generator).integers(2**62))


class Corruptor:
    """The oracle of query synthesis for restoration: one item per (generator, round), labelled with how many
    samples to synthesise and the seed to draw them from. ``delay_s`` sleeps before each answer (lets crash
    tests land a kill while answers are being given)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        delay_s: float = Field(0.0, ge=0.0, description="seconds to wait before each answer")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        counts = Counter(items)
        for generator in counts:               # first-appearance order
            try:
                level, rnd = parse_item(generator)
            except ValueError as exc:
                raise UserError(f"oracle.name: the corruptor answers restoration level generators; {exc}") from None
            if rnd is not None:
                raise UserError(f"oracle.name: the corruptor was asked about {generator!r}, a synthesised item, not a "
                                f"generator")
        return self._answers(list(counts.items()), ctx)

    def _answers(self, counts: list[tuple[str, int]], ctx: Context) -> Iterator[Answer]:
        for generator, n in counts:
            if self.config.delay_s:
                time.sleep(self.config.delay_s)
            level, _ = parse_item(generator)
            yield Label(f"{generator}@{ctx.round}",
                        {"level": level, "count": int(n), "seed": sample_seed(ctx.seed, ctx.round, generator)},
                        annotator="corruptor")


def schedule_levels(mode: str, n: int, round: int, level: int | None = None, stage_rounds: int = 1) -> list[int]:
    """Positions (0-based, easy to hard) of the candidates that share a round's samples under a fixed schedule."""
    if mode == "joint":
        return list(range(n))
    if mode == "fixated":
        if level is None or not 1 <= level <= n:
            raise UserError(f"selector.params.level: fixated needs a level 1..{n}, got {level}")
        return [level - 1]
    stage = min(round // stage_rounds, n - 1)
    if mode == "staged":
        return [stage]
    if mode == "cumulative":
        return list(range(stage + 1))
    raise ValueError(f"unknown schedule mode {mode!r}")


class Schedule:
    """Fixed allocations: the card's baselines (see the module docstring). ``k`` samples are shared equally
    (largest remainders to the easier levels) among the levels the schedule names for ``ctx.round``; the
    scores are ignored."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mode: Literal["joint", "fixated", "staged", "cumulative"] = "joint"
        level: int | None = Field(None, ge=1, le=5, description="fixated: the one level trained on (1 = easiest)")
        stage_rounds: int = Field(1, ge=1, description="staged / cumulative: rounds spent on each stage")

        @model_validator(mode="after")
        def _level_for_fixated(self):
            if self.mode == "fixated" and self.level is None:
                raise ValueError("mode fixated needs level (the one level it trains on, 1 = easiest)")
            if self.mode != "fixated" and self.level is not None:
                raise ValueError(f"level is only for mode fixated (mode is {self.mode})")
            return self

    allows_repeats = True

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> list[ItemId]:
        return list(available)

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> list[ItemId]:
        n = len(candidates)
        if n == 0 or k <= 0:
            return []
        cfg = self.config
        active = schedule_levels(cfg.mode, n, ctx.round, cfg.level, cfg.stage_rounds)
        shares = np.zeros(n)
        shares[active] = 1.0
        counts = largest_remainder(shares, k)
        return [c for c, m in zip(candidates, counts) for _ in range(m)]
