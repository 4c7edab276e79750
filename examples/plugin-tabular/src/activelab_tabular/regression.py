"""``tabular_regression``: a number per table row (diabetes progression, Friedman #1).

Same shape as :mod:`.classification` (read that first); what differs, and why:

- The output is ``PREDICTIONS`` (``"predictions"``), the core's well-known name for a regressor's values (this
  module calls it ``PREDICTION``, the name it had when it was the plugin's own). Scorers that need it say so in
  their ``needs`` (this plugin's ``committee_variance``; the core's ``emcm``, ``committee_variance`` and ``gsx``);
  the recipe validator matches the two before anything runs, so asking for ``entropy`` on a regression task is a
  clear error.
- ``BOOTSTRAP``: ``fit_bootstrap(labels, size, seed)`` trains a committee that ``predict`` then serves under
  ``MC(mode="bootstrap")``, exactly as the core's ``qbc`` expects of a classifier. ``MC_DROPOUT`` is offered too.
- ``EMBEDDINGS`` (the input of the MLP's linear head) lets the core's task-independent ``kcenter`` (core-set)
  scorer work on tables unchanged, and gives the core's ``emcm`` its closed-form last-layer gradient.
- ``FEATURES``: the standardised input row itself, the same every round (no sample axis under ``mc``): the input
  space in which the core's ``gsx`` (greedy sampling) measures distances.
- ``lower_is_better``: rmse and mae are errors; reports use this to say when a strategy "reaches" a target.
- A label is any finite number; the canonical form is a float.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    PREDICTIONS,
    Context,
    Env,
    ItemId,
    rng_for,
    seed_for,
)
from activelab.text import finite_number
from activelab.torchkit import ItemIndex

from .data import REGRESSION, fingerprint, load_table
from .model import MLP, ModelConfig, check_mc, committee_chunks, new_model, train

#: ``predict`` output: ``(B,)`` predicted values, ``(T, B)`` under an MC committee. In the targets' own units.
PREDICTION = PREDICTIONS


class RegressionConfig(ModelConfig):
    """``task.params`` of ``tabular_regression`` (the network's fields come from :class:`ModelConfig`)."""

    dataset: Literal[tuple(REGRESSION)] = Field(  # type: ignore[valid-type]
        "diabetes", description="scikit-learn table: diabetes (bundled) or friedman1 (generated)")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of the rows held out for evaluate()")
    split_seed: int = Field(0, description="seed of the pool/test split (not the run seed: every run of a "
                                           "comparison evaluates on the same rows)")


class TabularRegression:
    """Predict a table's numeric target with a small MLP retrained from scratch each round (squared error)."""

    Config = RegressionConfig
    outputs: Collection[str] = frozenset({PREDICTION, EMBEDDINGS, FEATURES, MC_DROPOUT, BOOTSTRAP})
    primary_metric = "rmse"
    metrics = ("rmse", "mae", "r2", "n_train", "train_rmse")
    lower_is_better = frozenset({"rmse", "mae", "train_rmse"})
    query_type = "pool"

    def __init__(self, config: RegressionConfig, env: Env):
        self.config = config
        self.env = env
        self.device = torch.device(env.device)
        self.table = load_table(config.dataset, config.test_fraction, config.split_seed)
        self.items = ItemIndex(self.table.ids)   # id -> row, and no lookup at all for Candidates
        self.x = torch.as_tensor(self.table.x, device=self.device)
        self.test_x = torch.as_tensor(self.table.test_x, device=self.device)
        self.model = self._new_model(seed_for(env.seed, "tabular-init"))   # untrained until the first fit
        self.members: list[MLP] = []

    def _new_model(self, seed: int) -> MLP:
        return new_model(self.x.shape[1], 1, self.config, seed, self.device)

    def _position(self, item_id: ItemId) -> int:
        return self.items.position(item_id)

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and targets of the labelled rows, in sorted id order."""
        ids = sorted(labels)
        rows = [self._position(i) for i in ids]
        y = [self.check_label(i, labels[i]) for i in ids]
        return self.x[rows], torch.as_tensor(y, dtype=torch.float32, device=self.device)

    def _fit_one(self, x: torch.Tensor, y: torch.Tensor, init_seed: int, fit_seed: int) -> tuple[MLP, float]:
        """A fresh network whose output starts at the mean of ``y`` with its spread (so it learns standardised
        targets), trained with squared error. Returns it and its training RMSE."""
        model = self._new_model(init_seed)
        if len(y):
            model.target_mean.fill_(float(y.mean()))
            model.target_std.fill_(float(y.std(unbiased=False)) or 1.0)   # one label: spread 0, use 1
        mse = train(model, x, y, lambda out, target: F.mse_loss(out.squeeze(-1), target), self.config, fit_seed)
        return model, math.sqrt(mse) if len(y) else float("nan")

    # ------------------------------------------------------------------------------------------ training
    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.table.ids)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        x, y = self._labelled(labels)
        self.model, rmse = self._fit_one(x, y, seed_for(ctx.seed, ctx.round, "tabular-init"),
                                         seed_for(ctx.seed, ctx.round, "tabular-fit"))
        self.members = []
        return {"n_train": len(y), "train_rmse": rmse} if len(y) else {"n_train": 0}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` members, member b from its own initialisation on a bootstrap resample of the labels
        drawn with ``rng_for(seed, "bootstrap", b)``; ``predict(..., mc=MC(mode="bootstrap"))`` uses them.
        Where the members disagree, the labels so far say little: that is what ``committee_variance`` asks about."""
        x, y = self._labelled(labels)
        self.members = []
        for b in range(size):
            draw = torch.as_tensor(rng_for(seed, "bootstrap", b).integers(len(y), size=len(y)), device=self.device)
            member, _ = self._fit_one(x[draw], y[draw], seed_for(seed, "bootstrap-init", b),
                                      seed_for(seed, "bootstrap-fit", b))
            self.members.append(member)

    # ------------------------------------------------------------------------------------------ inference
    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        check_mc(mc, len(self.members))
        rows = self.x[torch.as_tensor(self.items.positions(ids), device=self.device)]
        return self._predict(rows, set(want), mc)

    def _predict(self, rows: torch.Tensor, want: set[str], mc: MC | None) -> Iterator[dict[str, np.ndarray]]:
        size = self.config.chunk_size
        for n, (values, h) in enumerate(committee_chunks(self.model, self.members, rows, mc, size)):
            out = {}
            if PREDICTION in want:
                out[PREDICTION] = values.squeeze(-1).cpu().numpy()
            if EMBEDDINGS in want:
                out[EMBEDDINGS] = h.cpu().numpy()
            if FEATURES in want:                 # the inputs: label-free, no sample axis under mc
                out[FEATURES] = rows[n * size:(n + 1) * size].cpu().numpy()
            yield out

    def evaluate(self) -> Mapping[str, float]:
        """Root mean squared error, mean absolute error and R^2 on the held-out rows."""
        predicted = np.concatenate([out[PREDICTION] for out in self._predict(self.test_x, {PREDICTION}, None)])
        error = predicted.astype(np.float64) - self.table.test_y
        truth = self.table.test_y
        return {"rmse": float(np.sqrt(np.mean(error ** 2))),
                "mae": float(np.mean(np.abs(error))),
                "r2": float(1.0 - np.sum(error ** 2) / np.sum((truth - truth.mean()) ** 2))}

    def data_fingerprint(self) -> str:
        return fingerprint(self.table)

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> float:
        return float(self.table.y[self._position(item_id)])

    def check_label(self, item_id: ItemId, value: Any) -> float:
        """Any finite number (a numeric string too: what a person types, what a CSV cell holds) -> float."""
        if item_id not in self.items:
            raise ValueError(f"unknown item {item_id!r} (not in the {self.table.name} pool)")
        number = finite_number(value)
        if number is None:
            raise ValueError(f"invalid label {value!r} for {self.table.name}: give a finite number")
        return number

    def suggest(self, ids: Sequence[ItemId]) -> list[float]:
        """The current model's prediction per row (rounded to 2 decimals), offered to a person as the default."""
        return [round(float(v), 2) for out in self.predict(ids, {PREDICTION}) for v in out[PREDICTION]]

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        raw = self.table.raw[self._position(item_id)]
        features = {name: round(float(v), 4) for name, v in zip(self.table.feature_names, raw)}
        shown = ", ".join(f"{k}={v:g}" for k, v in features.items())
        return {"text": f"{self.table.name} row {item_id}: {shown}. Target value?", "features": features}

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        copy = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        return {"model": copy(self.model), "members": [copy(m) for m in self.members],
                "dataset": self.table.name, "n_features": int(self.x.shape[1])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["dataset"], state["n_features"]) != (self.table.name, self.x.shape[1]):
            raise UserError(f"checkpoint is for dataset {state['dataset']!r}, not {self.table.name!r}")

        def build(weights: Mapping[str, torch.Tensor]) -> MLP:
            model = self._new_model(0)
            model.load_state_dict(weights)
            return model

        self.model = build(state["model"])
        self.members = [build(w) for w in state["members"]]
