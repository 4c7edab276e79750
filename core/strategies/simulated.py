"""The simulated oracle: answers from the task's ground truth, optionally with label noise and a delay."""
from __future__ import annotations

import time
from typing import Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field

from activelab import hooks
from activelab.errors import UserError
from activelab.protocol import Answer, Context, Env, ItemId, Label, Task, rng_for


class SimulatedOracle:
    """Answers every queried item with ``task.true_label(item)``, one :class:`Label` at a time.

    ``noise``: with this probability an answer is replaced by ``task.corrupt_label(value, rng)`` (a wrong label
    drawn with ``rng``). Whether an item is corrupted, and how, depends only on ``(ctx.seed, item id)``
    (``rng_for(seed, "oracle-noise", item)``), so the same item always gets the same answer: in every round, after a
    resume, and whatever else is in the batch. ``delay_s`` sleeps before each answer (makes rounds slow enough for
    crash/resume tests to land a kill while labels are being given).
    """

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        noise: float = Field(0.0, ge=0.0, le=1.0, description="probability that an answer is a wrong label")
        delay_s: float = Field(0.0, ge=0.0, description="seconds to wait before each answer")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        noise, delay = self.config.noise, self.config.delay_s
        corrupt = hooks.corrupt_label(task)
        if noise > 0 and corrupt is None:
            raise UserError(f"oracle.params.noise: task {type(task).__name__} cannot simulate label noise "
                            f"(it has no corrupt_label(value, rng)); set noise: 0")
        return self._answers(task, items, ctx, noise, delay, corrupt)

    @staticmethod
    def _answers(task, items, ctx, noise, delay, corrupt) -> Iterator[Answer]:
        for item in items:
            if delay:
                time.sleep(delay)
            value = task.true_label(item)
            if noise > 0:
                rng = rng_for(ctx.seed, "oracle-noise", item)
                if rng.random() < noise:
                    value = corrupt(value, rng)
            yield Label(item, value, annotator="simulated")
