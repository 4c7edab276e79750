"""The file-exchange oracle: people label elsewhere (Label Studio, a spreadsheet, another tool).

It answers nothing: when the loop asks it about a batch it quits with the status ``"awaiting labels"``, so the run
pauses in that state with the batch outstanding. Then::

    activelab export RUN --format label-studio|csv|jsonl     # the outstanding batch, with suggestions and scores
    activelab import RUN FILE                                # the answers, stored durably
    activelab resume RUN                                     # trains on them and asks for the next batch
"""
from __future__ import annotations

from typing import Iterator, Sequence

from pydantic import BaseModel, ConfigDict

from ..protocol import Answer, Context, Env, ItemId, Quit, Task

AWAITING = "awaiting labels"


class ExchangeOracle:
    """Pauses the run at every batch until its labels are imported (see the module docstring)."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, config: Config | None = None, env: Env | None = None):
        self.config = config or self.Config()

    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        if items:
            yield Quit("the batch is labelled outside activelab", status=AWAITING)
