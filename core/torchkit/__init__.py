"""Opt-in plumbing for torch tasks, one import away (``from activelab.torchkit import seeded, checkpoint, ...``).

A task's ``fit`` stays in its own file and reads top to bottom; what every torch task needs lives here once:

- :mod:`.seeding`: ``seeded(seed, device)``, torch's generators seeded inside a block and restored after it;
- :mod:`.state`: ``snapshot``, ``checkpoint``, ``check``, ``restore``: the one checkpoint format, with one
  "checkpoint does not match" error naming what differs;
- :mod:`.items`: ``ItemIndex``, item id -> position, with one error for an unknown id (and none at all for
  candidates that already travel as positions); ``row_blocks``, positions in blocks, as views where consecutive;
- :mod:`.optim`: ``build_optimizer``, adam / adamw / sgd from a task's settings;
- :mod:`.dropout`: ``mc_dropout``, the MC-dropout switch behind ``predict(..., mc=MC(mode="dropout"))``;
- :mod:`.hf`: ``load_from_disk``, Hugging Face datasets written by ``save_to_disk``, one rule for the splits.
- :mod:`.lossnet`: learning loss (Yoo & Kweon): ``LossPredictionModule`` on a network's tapped stages, the
  pair ``ranking_loss``, ``Taps`` (forward hooks) and the ``LossPredictionConfig`` recipe section.

Seeds come from :func:`activelab.protocol.seed_for`, the one seed helper. The kernel (loop, store, recipe) does
not import this package; tasks, and the toy task of :mod:`activelab.testing`, do.
"""
from .dropout import mc_dropout
from .hf import load_from_disk, require_columns
from .items import ItemIndex, row_blocks
from .optim import build_optimizer
from .seeding import seeded
from .state import check, checkpoint, restore, snapshot

__all__ = ["ItemIndex", "build_optimizer", "check", "checkpoint", "load_from_disk", "mc_dropout", "require_columns",
           "restore", "row_blocks", "seeded", "snapshot"]
