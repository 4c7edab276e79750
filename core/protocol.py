"""The protocol every activelab task speaks.

A round of active learning, whatever the task (vision, language, speech), is::

    candidates = selector.candidates(pool.candidates(), ctx)   # what may be asked about this round
    scores     = scorer.score(task, candidates, ctx)            # one float per candidate, higher = ask first
    chosen     = selector.select(candidates, scores, k, ctx)    # top-k, stream threshold, proportional shares
    for answer in oracle.label(task, chosen, ctx):              # simulated, a person, a corruption generator
        pool.apply(answer)                                      # committed to SQLite before the next answer
    fit_stats  = task.fit(pool.labels(), ctx)
    metrics    = task.evaluate()                                # appended to metrics.jsonl

Components are plain classes that satisfy these Protocols; no base class is needed. Each is built as
``Component(config, env)`` where ``config`` is an instance of the class attribute ``Config`` (a pydantic model
with ``extra="forbid"``, validated from the recipe) and ``env`` is an :class:`Env`.

Item ids are strings everywhere (``"17"``, ``"img/0001.png"``, ``"level3@5"``): they are the primary key of the
label store and must be stable across processes. On the query's hot path they travel as row positions instead:
the pool's candidates are :class:`Candidates` (positions into ``task.pool_ids()``, still a sequence of ids), a task
reads the positions directly, and a selector returns :class:`Picks` (the chosen ids with their positions and
scores), so only the k chosen items are turned back into ids and nobody keeps N scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, Protocol, Sequence, Union, runtime_checkable

import numpy as np

ItemId = str

#: Well-known names for :meth:`Task.predict` outputs. A task lists the ones it can produce in ``Task.outputs``;
#: a scorer lists the ones it needs in ``Scorer.needs``. Plugins may add their own names.
PROBS = "probs"              # (B, C) class probabilities; (T, B, C) when an MC spec is given
PREDICTIONS = "predictions"  # regression: (B,) or (B, D) predicted values in the targets' units; (T, B, ...) with
                             # an MC spec (bootstrap members, dropout passes)
EMBEDDINGS = "embeddings"    # (B, D) penultimate-layer features (for a regressor: the input of its linear last
                             # layer, which EMCM's closed-form gradient needs)
FEATURES = "features"        # (B, D) a label-free representation (self-supervised, PCA): the same every round,
                             # available before any model is trained (cold start)
MC_DROPOUT = "mc_dropout"    # capability: predict(..., mc=MC(mode="dropout" | "batchwise"))
BOOTSTRAP = "bootstrap"      # capability: fit_bootstrap() + predict(..., mc=MC(mode="bootstrap"))
PREDICTED_LOSS = "predicted_loss"   # (B,) a loss-prediction module's estimate of the item's loss (learning
                                   # loss, Yoo & Kweon 2019): rank-trained, higher = a larger loss expected
PREDICTED_LOSS_NORM = "predicted_loss_per_second"   # (B,) its estimate of the loss per unit of the item's
                                   # length (the speech task's head trained on the loss per second of audio)


@dataclass(frozen=True)
class Env:
    """What a component gets besides its config."""

    seed: int = 0
    run_dir: Path | None = None
    device: str = "cpu"          # picked by the core: "cuda" when available
    progress: bool = True        # show progress bars


@dataclass(frozen=True)
class Context:
    """What the loop knows about the current round; passed to every call of a round."""

    round: int
    seed: int
    budget: int                          # k: how many items this round may ask for
    labels: Mapping[ItemId, Any]         # every label committed so far (read-only view)
    run_dir: Path | None = None
    progress: bool = True

    def rng(self, *stream: int | str) -> np.random.Generator:
        """A generator determined by (seed, round, stream): the same on a resumed run as on an uninterrupted one."""
        return rng_for(self.seed, self.round, *stream)


def rng_for(seed: int, *stream: int | str) -> np.random.Generator:
    """Deterministic numpy generator for a named stream of random numbers."""
    words = [seed]
    for part in stream:
        words += part.encode() if isinstance(part, str) else [int(part)]   # stable across processes, unlike hash()
    return np.random.default_rng(np.random.SeedSequence([w & 0xFFFFFFFF for w in words]))


def seed_for(seed: int, *stream: int | str, below: int = 2**62) -> int:
    """An integer seed (for ``torch.manual_seed``, a ``torch.Generator``, a component's ``seed`` argument) drawn
    from :func:`rng_for`'s stream: the one seed helper of activelab.

    ``below`` is the (exclusive) bound of the draw. Leave it at its default in new code. Two families of streams
    were born with other bounds and keep them (:data:`TORCH_SEED_BOUND`, :data:`MC_SEED_BOUND`), because the bound
    changes the value and their values are behind published numbers. Only the low 32 bits of a seed reach
    :func:`rng_for` when it seeds a stream in turn, so every bound of at least ``2**32`` is as good as another."""
    return int(rng_for(seed, *stream).integers(below))


TORCH_SEED_BOUND = 2**63 - 1   # seed_for's bound for the MC-dropout masks and the restoration and toy networks
MC_SEED_BOUND = 2**31 - 1      # seed_for's bound for the MC / committee seeds scorers pass to predict, fit_bootstrap


@dataclass(frozen=True)
class MC:
    """Ask :meth:`Task.predict` for several stochastic forward passes (a committee).

    mode:
      - ``"dropout"``: MC dropout, a fresh mask per item and pass (Gal et al.), used by BALD.
      - ``"batchwise"``: one dropout mask per member, fixed across the whole pool (Ducoffe & Precioso 2015):
        member t is the same "partial network" for every item.
      - ``"bootstrap"``: members trained on bootstrap resamples by :meth:`Task.fit_bootstrap`.
    Outputs then gain a leading axis of size ``samples``. ``chunk``: the number of the call's first chunk; a task
    numbers the chunks it yields from it when it draws dropout masks per chunk (several processes compute the
    chunks of one query apart, :mod:`activelab.distributed`).
    """

    samples: int = 10
    mode: str = "dropout"
    seed: int = 0
    chunk: int = 0


class Text(str, Enum):
    """A str-valued enum: members compare, print and serialise (JSON) as their value."""

    def __str__(self) -> str:
        return self.value


class RunStatus(Text):
    """A run's status, as the label store keeps it and ``activelab status`` prints it."""

    CREATED = "created"
    RUNNING = "running"
    LABELLING = "labelling"                # an oracle that is not a person answers the batch
    AWAITING_LABELS = "awaiting labels"    # a person (at the terminal, or through an export) answers it
    LABELS_IMPORTED = "labels imported"    # an import answered the whole batch; `resume` trains on it
    TRAINING = "training"
    PAUSED = "paused"
    INTERRUPTED = "interrupted"            # killed, or stopped by an error: nobody is working on it
    DONE = "done"


# ----------------------------------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Label:
    """An oracle's answer for one item. ``value`` must be JSON-serialisable (it is stored as JSON)."""

    item_id: ItemId
    value: Any
    annotator: str = "simulated"


@dataclass(frozen=True)
class Skip:
    """The oracle declines this item for this round; it stays in the pool."""

    item_id: ItemId
    annotator: str = "simulated"


@dataclass(frozen=True)
class Undo:
    """Withdraw the label given to ``item_id`` in the current batch (a person corrects a mistake)."""

    item_id: ItemId
    annotator: str = "simulated"


@dataclass(frozen=True)
class Quit:
    """Stop labelling now; the run pauses and ``activelab resume`` asks for what is left of the batch.

    ``reason`` is for people; ``status`` becomes the run's status (``RunStatus.AWAITING_LABELS`` while a file
    exchange is out, say)."""

    reason: str = ""
    status: str = RunStatus.PAUSED


Answer = Union[Label, Skip, Undo, Quit]

#: What a scorer returns: one array of scores for all candidates, or an iterator of chunks whose concatenation
#: aligns with the candidates (lets a selector keep a running top-k, or stop a stream early). A chunk is an array
#: or anything ``np.asarray`` turns into one (a block whose scores are computed only when read, so a selector
#: may fuse the measure with its own pass over the block).
ScoreStream = Union[np.ndarray, Iterable[Any]]


# ------------------------------------------------------------------------------------- candidates, picks
class Candidates(Sequence[ItemId]):
    """Items as row positions into the task's :meth:`Task.pool_ids` (the ``universe``): what travels from the pool
    through the selector and the scorer to ``task.predict``, so nothing looks up N item ids on the way.

    It is a sequence of item ids (indexing, iterating, ``len``), so code written for lists keeps working; a task
    that keeps its arrays in ``pool_ids`` order reads ``rows`` directly (``activelab.torchkit.ItemIndex.positions``
    does so when the universe is its own pool) and turns back into ids only what it must."""

    __slots__ = ("universe", "rows", "increasing")

    def __init__(self, universe: Sequence[ItemId], rows: Any = None, increasing: bool = False):
        """``increasing``: the caller vouches that ``rows`` strictly increase (the pool's unlabelled rows do), so a
        task can cut them into views without reading them (``ItemIndex.blocks``); all rows when ``rows`` is None."""
        self.universe = universe
        self.rows = np.arange(len(universe), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.increasing = rows is None or bool(increasing)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Candidates(self.universe, self.rows[i], self.increasing and (i.step or 1) > 0)
        return self.universe[int(self.rows[i])]

    def __iter__(self) -> Iterator[ItemId]:
        return map(self.universe.__getitem__, self.rows.tolist())

    def take(self, positions: Any) -> "Candidates":
        """The candidates at ``positions`` (indices into this sequence), in that order."""
        return Candidates(self.universe, self.rows[np.asarray(positions, dtype=np.int64)])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Candidates, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(repr(i) for i in self[:5])
        return f"Candidates([{shown}{', ...' if len(self) > 5 else ''}], n={len(self)})"


class Picks(list):
    """What a selector returns: the chosen item ids in asking order (a list), with ``positions`` (int64 indices
    into the candidates it was given) and ``scores`` (the chosen items' scores; ``None`` for an uninformed pick).
    The loop records these scores with the batch; it never keeps the scores of every candidate."""

    def __init__(self, ids: Iterable[ItemId], positions: Any = None, scores: Any = None):
        super().__init__(ids)
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.scores = None if scores is None else np.asarray(scores, dtype=np.float64)


def candidate_ids(candidates: Sequence[ItemId], positions: Any) -> list[ItemId]:
    """The ids at ``positions`` of ``candidates`` (only those are turned back into ids)."""
    positions = np.asarray(positions, dtype=np.int64)
    if isinstance(candidates, Candidates):
        return list(candidates.take(positions))
    return [candidates[i] for i in positions.tolist()]


# ------------------------------------------------------------------------------------------- protocols
@runtime_checkable
class Task(Protocol):
    """A learning problem: data, model, training and evaluation. Owned by a plugin.

    Attributes:
      outputs: names :meth:`predict` can produce and capabilities it has (``PROBS``, ``EMBEDDINGS``,
        ``MC_DROPOUT``, ``BOOTSTRAP``, or plugin-specific names). Scorers declare what they need.
      primary_metric: the metric learning curves and ``activelab compare`` plot by default.

    Optional hooks (each a Protocol in :mod:`activelab.hooks`, checked when the plugin's task is loaded):
    ``query_type``, ``metrics``, ``lower_is_better``, ``data_fingerprint``, ``fit_bootstrap``, ``corrupt_label``,
    and for people labelling ``suggest``, ``label_schema``, ``parse_label``.
    """

    outputs: Collection[str]
    primary_metric: str

    def pool_ids(self) -> Sequence[ItemId]:
        """Every item (or generator, for synthesis) that may be queried, in a fixed order."""

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        """Train on the labelled items (plus pseudo-labels or unlabelled data where the method uses them).

        Must be deterministic given the current state, the labels and ``ctx.seed``/``ctx.round``. Returns
        statistics of the round's training (e.g. ``n_pseudo``, ``pseudo_accuracy``) that go into the metrics.
        """

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield dicts of arrays for consecutive chunks of ``ids``, in order, under inference mode.

        Only the names in ``want`` need be present. Each array's item axis is the chunk length (axis 1 when
        ``mc`` is given, axis 0 otherwise).
        """

    def evaluate(self) -> Mapping[str, float]:
        """Metrics on the task's held-out split; must contain ``primary_metric``."""

    def true_label(self, item_id: ItemId) -> Any:
        """The ground truth for a simulated oracle (JSON-serialisable). Raise ``KeyError`` if unknown."""

    def check_label(self, item_id: ItemId, value: Any) -> Any:
        """Validate a label from an oracle or a file and return its canonical form; ``ValueError`` if invalid."""

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        """What a person needs to label the item: e.g. ``{"image": path}``, ``{"text": ...}``, ``{"audio": path}``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue from here (model, optimiser, counters), for checkpoints."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result exactly."""


@runtime_checkable
class Scorer(Protocol):
    """Informativeness: one float per candidate, higher = ask first.

    ``needs`` lists the task outputs/capabilities the scorer uses; the recipe validator checks them against
    ``Task.outputs`` so a mismatch is a clear error before anything runs.
    """

    needs: Collection[str]

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> ScoreStream:
        """Scores aligned with ``candidates`` (an array, or chunks in order). Seeded by ``ctx``."""


@runtime_checkable
class Selector(Protocol):
    """Turns scores into a query.

    ``select`` returns item ids drawn from ``candidates`` only, at most ``k`` of them, no repeats (a selector
    for synthesis pools may repeat a generator id: each repeat is one sample to synthesise; it sets
    ``allows_repeats = True``). ``scores`` is ``None`` for the first batch, before any model exists: the
    selector then chooses uninformed (random items; equal shares).
    """

    allows_repeats: bool

    def candidates(self, available: Sequence[ItemId], ctx: Context) -> Sequence[ItemId]:
        """Which of the available items to score this round, in the order they will be scored (keep them a
        :class:`Candidates`, e.g. with ``available.take(positions)``, so tasks predict by position)."""

    def select(self, candidates: Sequence[ItemId], scores: ScoreStream | None, k: int, ctx: Context) -> list[ItemId]:
        """The items to ask the oracle about, in asking order: a :class:`Picks` (so the loop can record the chosen
        items' scores) or a plain list of ids (their scores are then not recorded)."""


@runtime_checkable
class Oracle(Protocol):
    """Answers queries: a simulation from ground truth, a person, a file exchange, a generator.

    ``label`` is a generator: the loop commits each answer to the label store before it asks for the next
    one, so nothing a person typed is lost if the process dies. It may answer only part of the batch.
    Optional hook: ``interactive`` (see :mod:`activelab.hooks`).
    """

    def label(self, task: Task, items: Sequence[ItemId], ctx: Context) -> Iterator[Answer]:
        """Yield one :class:`Label`, :class:`Skip` or :class:`Undo` per answer; :class:`Quit` to pause."""


@dataclass(frozen=True)
class Verdict:
    """What a stopping criterion says after a round's fit."""

    values: Mapping[str, float | None]
    """Go into the round's metrics row (``stop_*`` names); None where undefined (e.g. before two models exist)."""
    met: bool = False
    """Whether its condition holds now."""
    state: Any = None
    """What it needs next round (JSON-serialisable): the loop keeps it in the label store and hands it back, so
    a resumed run continues exactly where an uninterrupted one would."""
    reason: str = ""
    """One line for people when it is met (``mean kappa 0.995 >= 0.99 over the last 3 rounds``)."""


@runtime_checkable
class StoppingCriterion(Protocol):
    """When to stop asking for labels (the recipe's ``stopping`` list): evaluated after every round's fit, on that
    round's model; its values are recorded each round, and, where ``end_loop`` is true, the loop ends once it is met.

    ``needs`` lists the task outputs it uses, checked against ``Task.outputs`` like a scorer's."""

    needs: Collection[str]
    end_loop: bool

    def update(self, task: Task, unlabelled: Sequence[ItemId], state: Any, ctx: Context) -> Verdict:
        """Judge the task's current model. ``unlabelled``: the pool's candidates (a :class:`Candidates`); ``state``:
        this criterion's ``Verdict.state`` of the previous round (None in round 0). Seeded by ``ctx``."""


@runtime_checkable
class Pool(Protocol):
    """Which items are labelled and which may be asked about; backed by the run's durable label store."""

    def candidates(self) -> Sequence[ItemId]:
        """Items that may be queried now (unlabelled items; or generators for synthesis), in pool order: a
        :class:`Candidates` over the task's ``pool_ids``."""

    def labels(self) -> dict[ItemId, Any]:
        """Every committed label."""

    def n_labeled(self) -> int:
        """The x-axis of learning curves: labelled items (or synthesised samples)."""


# ------------------------------------------------------------------------------------------- helpers
def iter_blocks(scores: ScoreStream) -> Iterator[Any]:
    """A scorer's result as its chunks, untouched (an array result is one chunk)."""
    yield from [scores] if isinstance(scores, np.ndarray) else scores


def iter_chunks(scores: ScoreStream) -> Iterator[np.ndarray]:
    """Normalise a scorer's result into 1-d float64 chunks."""
    for chunk in iter_blocks(scores):
        yield np.asarray(chunk, dtype=np.float64).reshape(-1)


def collect_scores(scores: ScoreStream) -> np.ndarray:
    """Concatenate a scorer's result into one array."""
    chunks = list(iter_chunks(scores))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float64)
