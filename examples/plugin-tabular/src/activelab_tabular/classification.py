"""``tabular_classification``: which class a table row belongs to (wine cultivar, tumour diagnosis, ...).

A task is a plain class that satisfies :class:`activelab.protocol.Task`; no base class is needed. The core
builds it as ``TabularClassification(config, env)`` with ``config`` validated from the recipe's
``task.params`` and calls, each round, ``fit`` on every label so far, then ``evaluate``; scorers call
``predict`` (and ``fit_bootstrap`` for a bootstrap committee); oracles call ``true_label`` (simulated) or
``check_label`` (a person, a file). Read the methods below in that order.

What it declares, and why:

- ``outputs``: ``PROBS`` and ``EMBEDDINGS`` (so the core's entropy, margin, least_confidence, egl, density and
  kcenter scorers work), ``MC_DROPOUT`` (bald, qbc) and ``BOOTSTRAP`` (qbc with bootstrap members). A recipe
  whose scorer needs something not listed here is refused before anything runs.
- ``primary_metric`` and ``metrics``: what learning curves plot, and every name ``evaluate`` and ``fit`` report
  (``activelab compare --metrics`` checks names against it before running anything).
"""
from __future__ import annotations

from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.metrics import accuracy_score, f1_score

from activelab.errors import UserError
from activelab.protocol import BOOTSTRAP, EMBEDDINGS, MC, MC_DROPOUT, PROBS, Context, Env, ItemId, rng_for, seed_for
from activelab.torchkit import ItemIndex

from .data import CLASSIFICATION, fingerprint, load_table
from .model import MLP, ModelConfig, check_mc, committee_chunks, new_model, train


class ClassificationConfig(ModelConfig):
    """``task.params`` of ``tabular_classification`` (the network's fields come from :class:`ModelConfig`).
    ``extra="forbid"`` (inherited) makes a misspelt key a recipe error instead of a silently ignored one."""

    dataset: Literal[tuple(CLASSIFICATION)] = Field(  # type: ignore[valid-type]
        "wine", description="scikit-learn bundled table: wine, breast_cancer, iris or digits")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of the rows held out for evaluate()")
    split_seed: int = Field(0, description="seed of the pool/test split (not the run seed: every run of a "
                                           "comparison evaluates on the same rows)")


class TabularClassification:
    """Classify the rows of a scikit-learn table with a small MLP retrained from scratch each round."""

    Config = ClassificationConfig
    outputs: Collection[str] = frozenset({PROBS, EMBEDDINGS, MC_DROPOUT, BOOTSTRAP})
    primary_metric = "accuracy"
    metrics = ("accuracy", "macro_f1", "n_train", "train_loss")
    query_type = "pool"                  # labelled rows leave the pool

    def __init__(self, config: ClassificationConfig, env: Env):
        self.config = config
        self.env = env
        self.device = torch.device(env.device)
        self.table = load_table(config.dataset, config.test_fraction, config.split_seed)
        self.classes = self.table.class_names
        self.items = ItemIndex(self.table.ids)   # id -> row, and no lookup at all for Candidates
        self.x = torch.as_tensor(self.table.x, device=self.device)
        self.test_x = torch.as_tensor(self.table.test_x, device=self.device)
        self.model = self._new_model(seed_for(env.seed, "tabular-init"))   # untrained until the first fit
        self.members: list[MLP] = []     # bootstrap committee, made by fit_bootstrap

    def _new_model(self, seed: int) -> MLP:
        return new_model(self.x.shape[1], len(self.classes), self.config, seed, self.device)

    def _position(self, item_id: ItemId) -> int:
        return self.items.position(item_id)

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and class indices of the labelled rows, in sorted id order (so the order in which the labels
        arrived cannot change the fit)."""
        ids = sorted(labels)
        rows = [self._position(i) for i in ids]
        y = [self.check_label(i, labels[i]) for i in ids]
        return self.x[rows], torch.as_tensor(y, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------------------------------ training
    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.table.ids)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        """A fresh network, seeded by (seed, round), trained on every label so far. Retraining from scratch keeps
        a round's model a function of its labels alone, which makes resuming exact for free."""
        x, y = self._labelled(labels)
        self.model = self._new_model(seed_for(ctx.seed, ctx.round, "tabular-init"))
        loss = train(self.model, x, y, F.cross_entropy, self.config, seed_for(ctx.seed, ctx.round, "tabular-fit"))
        self.members = []                # a committee of the previous round is stale now
        return {"n_train": len(y), "train_loss": loss} if len(y) else {"n_train": 0}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` members, member b from its own initialisation on a bootstrap resample (as many draws,
        with replacement, as there are labels) drawn with ``rng_for(seed, "bootstrap", b)``. They serve
        ``predict(..., mc=MC(mode="bootstrap"))``; the main model is left alone."""
        x, y = self._labelled(labels)
        self.members = []
        for b in range(size):
            draw = torch.as_tensor(rng_for(seed, "bootstrap", b).integers(len(y), size=len(y)), device=self.device)
            member = self._new_model(seed_for(seed, "bootstrap-init", b))
            train(member, x[draw], y[draw], F.cross_entropy, self.config, seed_for(seed, "bootstrap-fit", b))
            self.members.append(member)

    # ------------------------------------------------------------------------------------------ inference
    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        check_mc(mc, len(self.members))  # here, not inside the generator, so a bad request fails at the call
        rows = self.x[torch.as_tensor(self.items.positions(ids), device=self.device)]
        return self._predict(rows, set(want), mc)

    def _predict(self, rows: torch.Tensor, want: set[str], mc: MC | None) -> Iterator[dict[str, np.ndarray]]:
        for logits, h in committee_chunks(self.model, self.members, rows, mc, self.config.chunk_size):
            out = {}
            if PROBS in want:
                out[PROBS] = torch.softmax(logits, dim=-1).cpu().numpy()
            if EMBEDDINGS in want:
                out[EMBEDDINGS] = h.cpu().numpy()
            yield out

    def evaluate(self) -> Mapping[str, float]:
        """Accuracy and macro-F1 on the held-out rows."""
        predicted = np.concatenate([out[PROBS].argmax(axis=1) for out in self._predict(self.test_x, {PROBS}, None)])
        truth = self.table.test_y
        return {"accuracy": float(accuracy_score(truth, predicted)),
                "macro_f1": float(f1_score(truth, predicted, average="macro", labels=list(range(len(self.classes))),
                                           zero_division=0))}

    def data_fingerprint(self) -> str:
        return fingerprint(self.table)

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> int:
        """The class index from the dataset: what the simulated oracle answers."""
        return int(self.table.y[self._position(item_id)])

    def check_label(self, item_id: ItemId, value: Any) -> int:
        """The canonical label is a class index; a class name (``"class_1"``, ``"benign"``) is accepted too, as a
        person or a CSV file may give one. Anything else is a ``ValueError`` naming what is accepted."""
        if item_id not in self.items:
            raise ValueError(f"unknown item {item_id!r} (not in the {self.table.name} pool)")
        return self._class_index(value)

    def _class_index(self, value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            if 0 <= int(value) < len(self.classes):
                return int(value)
        elif isinstance(value, str) and value.strip() in self.classes:
            return self.classes.index(value.strip())
        raise ValueError(f"invalid label {value!r} for {self.table.name}: "
                         f"give a class index 0..{len(self.classes) - 1} "
                         f"or a class name ({', '.join(self.classes)})")

    def label_schema(self) -> dict[str, Any]:
        """People choose among the class names (the terminal oracle, Label Studio)."""
        return {"type": "choices", "choices": list(self.classes)}

    def suggest(self, ids: Sequence[ItemId]) -> list[int]:
        """The current model's most probable class per row, offered to a person as the default answer."""
        return [int(c) for out in self.predict(ids, {PROBS}) for c in out[PROBS].argmax(axis=1)]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> int:
        """A uniformly random other class: how the simulated oracle's ``noise`` makes a wrong answer."""
        true = self._class_index(value)
        other = int(rng.integers(len(self.classes) - 1))
        return other + (other >= true)

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        """The row's features as loaded (not standardised), by name, for a person to judge."""
        raw = self.table.raw[self._position(item_id)]
        features = {name: round(float(v), 4) for name, v in zip(self.table.feature_names, raw)}
        shown = ", ".join(f"{k}={v:g}" for k, v in features.items())
        return {"text": f"{self.table.name} row {item_id}: {shown}. Which class ({', '.join(self.classes)})?",
                "features": features, "classes": list(self.classes)}

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The weights of the model and of any bootstrap members (copies), plus what they must match."""
        copy = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        return {"model": copy(self.model), "members": [copy(m) for m in self.members],
                "dataset": self.table.name, "classes": list(self.classes), "n_features": int(self.x.shape[1])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["dataset"], list(state["classes"]), state["n_features"]) != (
                self.table.name, self.classes, self.x.shape[1]):
            raise UserError(f"checkpoint is for dataset {state['dataset']!r}, not {self.table.name!r}")

        def build(weights: Mapping[str, torch.Tensor]) -> MLP:
            model = self._new_model(0)
            model.load_state_dict(weights)
            return model

        self.model = build(state["model"])
        self.members = [build(w) for w in state["members"]]
